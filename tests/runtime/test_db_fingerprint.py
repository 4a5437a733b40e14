"""Statement labels and logged SQL: stable, bounded, and free of values (pure, no server)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from falachefe_runtime.db.fingerprint import (
    LOGGED_SQL_CHARS,
    fingerprint,
    is_plain_read,
    loggable,
    normalize,
    query_label,
)


@given(st.text().map(lambda text: text.replace("'", "''")))
def test_a_string_literal_never_survives_normalisation(literal: str) -> None:
    assert normalize(f"SELECT id FROM users WHERE name = '{literal}'") == "SELECT id FROM users WHERE name = ?"


@given(st.integers() | st.floats(allow_nan=False, allow_infinity=False))
def test_a_number_literal_never_survives_normalisation(number: float) -> None:
    assert normalize(f"SELECT id FROM users WHERE score > {number}") == "SELECT id FROM users WHERE score > ?"


def test_placeholders_identifiers_and_dollar_quotes() -> None:
    assert (
        normalize("SELECT col1 FROM t2 WHERE a = $1 AND b = $$secret$$") == "SELECT col1 FROM t2 WHERE a = $1 AND b = ?"
    )
    assert normalize("SELECT 1 FROM t WHERE x = $tag$it's$tag$") == "SELECT ? FROM t WHERE x = ?"


def test_statements_that_differ_only_in_literals_share_a_fingerprint() -> None:
    first = fingerprint("SELECT * FROM users WHERE phone_number = '+5511999990000'")
    second = fingerprint("SELECT *\n  FROM users  WHERE phone_number = '+5511888880000'")
    assert first == second
    assert first.startswith("sql_")
    assert fingerprint("SELECT * FROM companies WHERE id = 1") != first


def test_query_names_must_be_labels() -> None:
    assert query_label("SELECT 1", "auth.user_by_phone") == "auth.user_by_phone"
    for bad in ("", "Auth", "select * from users", "x" * 65):
        with pytest.raises(ValueError, match="query name"):
            query_label("SELECT 1", bad)


def test_logged_sql_is_truncated() -> None:
    long = "SELECT " + ", ".join(f"column_{n}" for n in range(100)) + " FROM t"
    assert len(loggable(long)) == LOGGED_SQL_CHARS
    assert loggable(long).endswith("…")


@pytest.mark.parametrize(
    ("sql", "plain_read"),
    [
        ("SELECT 1", True),
        ("  select * from users", True),
        ("(SELECT 1) UNION (SELECT 2)", True),
        ("SHOW statement_timeout", True),
        ("VALUES (1)", True),
        ("INSERT INTO t VALUES (1) RETURNING id", False),
        ("UPDATE t SET x = 1", False),
        ("WITH moved AS (DELETE FROM t RETURNING *) SELECT * FROM moved", False),
        ("selective_function()", False),
    ],
)
def test_plain_reads_are_recognised(sql: str, plain_read: bool) -> None:
    assert is_plain_read(sql) is plain_read
