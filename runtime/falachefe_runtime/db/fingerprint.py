"""Stable, value-free names for SQL statements, for metric labels and logs.

A metric label must have bounded cardinality and a log line must never carry
a parameter value. Our statements are parameterised (``$1``), but a caller
could still inline a literal, so the text is normalised (literals become
``?``) before it is hashed or logged.
"""

from __future__ import annotations

import functools
import hashlib
import re

#: A caller-chosen query name: short, lower-case, dotted (``auth.user_by_phone``).
QUERY_NAME = re.compile(r"^[a-z][a-z0-9_.:-]{0,63}$")

#: How much of a statement's normalised text a log line carries.
LOGGED_SQL_CHARS = 200

_DOLLAR_QUOTED = re.compile(r"\$(\w*)\$.*?\$\1\$", re.DOTALL)
_STRING = re.compile(r"[EeBbXxUu]?'(?:[^']|'')*'")
_NUMBER = re.compile(r"(?<![\w$])-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
_WHITESPACE = re.compile(r"\s+")


def normalize(sql: str) -> str:
    """The statement with literals replaced by ``?`` and whitespace collapsed."""
    text = _DOLLAR_QUOTED.sub("?", sql)
    text = _STRING.sub("?", text)
    text = _NUMBER.sub("?", text)
    return _WHITESPACE.sub(" ", text).strip()


def fingerprint(sql: str) -> str:
    """A short label for a statement: equal for statements that differ only in literals."""
    digest = hashlib.sha1(normalize(sql).encode(), usedforsecurity=False).hexdigest()
    return f"sql_{digest[:10]}"


@functools.lru_cache(maxsize=4096)
def query_label(sql: str, name: str | None) -> str:
    """The metric label for a statement: the caller's name, else its fingerprint.

    Memoised: a process runs a bounded set of statements, each many times.
    """
    if name is None:
        return fingerprint(sql)
    if not QUERY_NAME.match(name):
        raise ValueError(
            f"query name {name!r} is not a valid label: use 1-64 lower-case letters, digits and '_.:-', "
            "starting with a letter (a fixed name per statement, never built from input)"
        )
    return name


#: Statements that only read: running one twice has no effect.
_PLAIN_READ = re.compile(r"^\s*(?:\(\s*)*(?:select|show|values|table)\b", re.IGNORECASE)


def is_plain_read(sql: str) -> bool:
    """Whether ``sql`` is a bare ``SELECT``/``SHOW``/``VALUES``/``TABLE`` (a ``WITH`` may hide a write)."""
    return bool(_PLAIN_READ.match(sql))


def loggable(sql: str) -> str:
    """The statement as a log line may show it: normalised and truncated."""
    text = normalize(sql)
    if len(text) > LOGGED_SQL_CHARS:
        return text[: LOGGED_SQL_CHARS - 1] + "…"
    return text


#: Statements that leave state in the session, past their transaction: the pool hands its connections
#: from job to job without a reset query (``database.NoResetConnection``), so the next job would
#: inherit it. Their transaction-scoped forms (``SET LOCAL``, ``set_config(..., true)``,
#: ``pg_advisory_xact_lock``, a cursor without ``WITH HOLD``, a temporary table ``ON COMMIT DROP``) end
#: with the transaction and are allowed. Matched on the normalised text (no literal can fake one).
_SESSION_STATE = (
    (re.compile(r"(?:^|;)\s*set\s+(?!local\b)", re.IGNORECASE), "SET without LOCAL"),
    (re.compile(r"\bset_config\s*\((?![^()]*,\s*true\s*\))", re.IGNORECASE), "set_config(..., is_local) not true"),
    (re.compile(r"\bpg_(?:try_)?advisory_lock(?:_shared)?\s*\(", re.IGNORECASE), "a session-level advisory lock"),
    (re.compile(r"(?:^|;)\s*listen\b", re.IGNORECASE), "LISTEN"),
    (re.compile(r"(?:^|;)\s*prepare\b", re.IGNORECASE), "PREPARE"),
    (re.compile(r"(?:^|;)\s*declare\b[^;]*\bwith\s+hold\b", re.IGNORECASE), "a cursor WITH HOLD"),
    (
        re.compile(r"\bcreate\s+(?:(?:global|local)\s+)?temp(?:orary)?\s+table\b(?![^;]*\bon\s+commit\s+drop\b)", re.I),
        "a temporary table without ON COMMIT DROP",
    ),
)


@functools.lru_cache(maxsize=4096)
def session_state(sql: str) -> str | None:
    """What session state ``sql`` would leave behind its transaction, or ``None`` (memoised)."""
    text = normalize(sql)
    for pattern, what in _SESSION_STATE:
        if pattern.search(text):
            return what
    return None
