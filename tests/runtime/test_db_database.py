"""The runtime's Database against a real PostgreSQL: routing, timeouts, slow queries, COPY, retries, metrics."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from falachefe_devstack.postgres import PostgresServer
from falachefe_devstack.process import free_port
from falachefe_devstack.waiting import async_wait_for
from falachefe_runtime.config import DatabaseSettings, PoolSettings
from falachefe_runtime.db import Database, migrate
from falachefe_runtime.db.fingerprint import session_state

APP = "falachefe-test"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def admin_execute(dsn: str, sql: str, *args: Any) -> Any:
    connection = await asyncpg.connect(dsn)
    try:
        return await connection.fetch(sql, *args)
    finally:
        await connection.close()


@pytest.fixture
def second_dsn(pg_server: PostgresServer) -> Iterator[str]:
    """Another empty database on the same server, standing in for a read replica."""
    name = f"replica_{uuid.uuid4().hex[:10]}"
    yield pg_server.create_database(name)
    pg_server.drop_database(name)


def settings(dsn: str, **overrides: Any) -> DatabaseSettings:
    small = PoolSettings(min_size=1, max_size=4, statement_timeout_s=30)
    values: dict[str, Any] = {"dsn": dsn, "primary": small, "application_name": APP, **overrides}
    return DatabaseSettings(**values)


@pytest.fixture
async def db(pg_dsn: str) -> AsyncIterator[Database]:
    async with Database(settings(pg_dsn)) as database:
        yield database


async def terminate_backends(dsn: str, application_name: str, *, active_only: bool = False) -> int:
    """pg_terminate_backend every session of ``application_name``; returns how many."""
    state = "AND state = 'active'" if active_only else ""
    rows = await admin_execute(
        dsn,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE application_name = $1 AND pid <> pg_backend_pid() {state}",
        application_name,
    )
    return len(rows)


# -- routing -------------------------------------------------------------------


async def test_reads_marked_readonly_go_to_the_replica_and_writes_to_the_primary(pg_dsn: str, second_dsn: str) -> None:
    for dsn, origin in ((pg_dsn, "primary"), (second_dsn, "replica")):
        await admin_execute(dsn, "CREATE TABLE origin (name text)")
        await admin_execute(dsn, "INSERT INTO origin VALUES ($1)", origin)

    async with Database(settings(pg_dsn, replica_dsn=second_dsn)) as db:
        assert db.has_replica
        assert await db.fetchval("SELECT name FROM origin", readonly=True) == "replica"
        assert await db.fetchval("SELECT name FROM origin") == "primary"
        assert await db.fetchval("SELECT current_setting('application_name')", readonly=True) == f"{APP}-replica"
        assert await db.fetchval("SELECT current_setting('application_name')") == APP

        await db.execute("INSERT INTO origin VALUES ('written')")
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO origin VALUES ('in a transaction')")

    primary_rows = {row["name"] for row in await admin_execute(pg_dsn, "SELECT name FROM origin")}
    replica_rows = {row["name"] for row in await admin_execute(second_dsn, "SELECT name FROM origin")}
    assert primary_rows == {"primary", "written", "in a transaction"}
    assert replica_rows == {"replica"}


async def test_without_a_replica_readonly_reads_use_the_primary(db: Database) -> None:
    assert not db.has_replica
    assert await db.fetchval("SELECT current_setting('application_name')", readonly=True) == APP


async def test_reads_fall_back_to_the_primary_when_the_replica_refuses_connections(
    pg_server: PostgresServer, pg_dsn: str, second_dsn: str
) -> None:
    role = f"reader_{uuid.uuid4().hex[:8]}"
    await admin_execute(pg_dsn, f"CREATE ROLE {role} LOGIN PASSWORD 'reader'")
    replica_as_reader = second_dsn.replace("postgres:falachefe-local@", f"{role}:reader@")
    fallbacks = sample("falachefe_db_replica_fallbacks_total")
    async with Database(settings(pg_dsn, replica_dsn=replica_as_reader, retry_attempts=2)) as db:
        assert await db.fetchval("SELECT current_user", readonly=True) == role
        # The replica goes away: its sessions die and new ones are refused.
        await admin_execute(pg_dsn, f"ALTER ROLE {role} CONNECTION LIMIT 0")
        await terminate_backends(pg_dsn, f"{APP}-replica")
        assert await db.fetchval("SELECT current_user", readonly=True) == "postgres"
    assert sample("falachefe_db_replica_fallbacks_total") == fallbacks + 1
    await admin_execute(pg_dsn, f"DROP ROLE {role}")


# -- timeouts and slow queries -------------------------------------------------


async def test_each_pool_has_its_statement_timeout(pg_dsn: str, second_dsn: str) -> None:
    async with Database(DatabaseSettings(dsn=pg_dsn, replica_dsn=second_dsn)) as db:
        assert await db.fetchval("SHOW statement_timeout") == "30s"
        assert await db.fetchval("SHOW statement_timeout", readonly=True) == "10s"


async def test_statement_timeout_cancels_a_long_statement(pg_dsn: str) -> None:
    quick = PoolSettings(min_size=1, max_size=2, statement_timeout_s=0.3)
    async with Database(settings(pg_dsn, primary=quick)) as db:
        with pytest.raises(asyncpg.QueryCanceledError, match="statement timeout"):
            await db.fetchval("SELECT pg_sleep(5)")
        # The connection is still usable afterwards.
        assert await db.fetchval("SELECT 1") == 1


async def test_slow_query_is_logged_without_parameter_values_and_counted(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cret-phone-+5511999990000"
    async with Database(settings(pg_dsn, slow_query_threshold_s=0.2)) as db:
        slow_before = sample("falachefe_db_slow_queries_total", role="primary", query="test.slow")
        timed_before = sample("falachefe_db_query_duration_seconds_count", role="primary", query="test.slow")
        with caplog.at_level(logging.WARNING, logger="falachefe_runtime.db"):
            await db.fetchval("SELECT 1 FROM pg_sleep(0.01) WHERE $1::text <> ''", secret, name="test.fast")
            value = await db.fetchval(
                "SELECT $1::text || '-' || 'inline literal' FROM pg_sleep(0.3)", secret, name="test.slow"
            )
            await db.fetchval("SELECT 'unnamed inline literal' FROM pg_sleep(0.3)")
        assert value == f"{secret}-inline literal"

    slow = [record for record in caplog.records if getattr(record, "event", None) == "slow_query"]
    assert len(slow) == 2, "exactly the two slow queries are logged, not the fast one"
    named, unnamed = slow
    assert named.query_name == "test.slow"
    assert "pg_sleep" in named.sql
    assert named.param_count == 1
    assert named.duration_s >= 0.3
    assert unnamed.query_name.startswith("sql_")
    for record in slow:
        everything = record.getMessage() + repr(vars(record))
        assert secret not in everything
        assert "inline literal" not in everything, "literals in the SQL text are masked too"
    assert sample("falachefe_db_slow_queries_total", role="primary", query="test.slow") == slow_before + 1
    assert sample("falachefe_db_query_duration_seconds_count", role="primary", query="test.slow") == timed_before + 1


async def test_a_query_name_that_is_not_a_label_is_refused(db: Database) -> None:
    with pytest.raises(ValueError, match="query name"):
        await db.fetchval("SELECT 1", name="Select 1 where id = 42")


# -- bulk inserts --------------------------------------------------------------


async def test_copy_records_bulk_inserts_into_an_allowed_table(pg_dsn: str) -> None:
    await migrate(pg_dsn)
    company = uuid.uuid4()
    rows = [
        (company, f"+5511{n:09d}", "message", n % 3 != 0, None if n % 3 else "unknown number") for n in range(2_000)
    ]
    async with Database(settings(pg_dsn)) as db:
        copied = await db.copy_records(
            "whatsapp_auth_logs", ["company_id", "phone_number", "event", "success", "reason"], rows
        )
        assert copied == 2_000
        stored = await db.fetchrow(
            "SELECT count(*) AS total, count(*) FILTER (WHERE NOT success) AS refused "
            "FROM whatsapp_auth_logs WHERE company_id = $1",
            company,
        )
    assert (stored["total"], stored["refused"]) == (2_000, 667)


async def test_copy_records_refuses_tables_and_columns_outside_the_allow_list(pg_dsn: str) -> None:
    await migrate(pg_dsn)
    async with Database(settings(pg_dsn)) as db:
        with pytest.raises(ValueError, match="'users' does not take bulk inserts"):
            await db.copy_records("users", ["phone_number"], [("+5511999990000",)])
        with pytest.raises(ValueError, match=r"columns \['is_admin'\] are not bulk-insertable"):
            await db.copy_records("whatsapp_auth_logs", ["phone_number", "is_admin"], [("+5511999990000", True)])
        with pytest.raises(ValueError, match="twice"):
            await db.copy_records("messages", ["content", "content"], [("a", "b")])
        assert await db.fetchval("SELECT count(*) FROM whatsapp_auth_logs") == 0


# -- dropped connections -------------------------------------------------------


async def test_next_call_succeeds_after_the_pooled_connections_are_terminated(pg_dsn: str) -> None:
    async with Database(settings(pg_dsn, primary=PoolSettings(min_size=3, max_size=4))) as db:
        assert await db.fetchval("SELECT 1") == 1
        assert await terminate_backends(pg_dsn, APP) >= 3
        assert await db.fetchval("SELECT 2") == 2
        assert await db.execute("CREATE TABLE after_restart (id int)") == "CREATE TABLE"
        assert await terminate_backends(pg_dsn, APP) >= 1
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO after_restart VALUES (1)")
        assert await db.fetchval("SELECT count(*) FROM after_restart") == 1


async def test_a_read_whose_connection_drops_mid_statement_is_retried(pg_dsn: str) -> None:
    retries = sample("falachefe_db_retries_total", role="primary", phase="query")
    async with Database(settings(pg_dsn)) as db:
        read = asyncio.create_task(db.fetchval("SELECT 'answered' FROM pg_sleep(1)", name="test.long_read"))
        await async_wait_for(lambda: terminate_backends(pg_dsn, APP, active_only=True), timeout=20, interval=0.05)
        assert await read == "answered"
    assert sample("falachefe_db_retries_total", role="primary", phase="query") == retries + 1


async def test_a_write_whose_connection_drops_mid_statement_is_not_repeated(pg_dsn: str) -> None:
    await admin_execute(pg_dsn, "CREATE TABLE effects (id serial PRIMARY KEY, note text)")
    retries = sample("falachefe_db_retries_total", role="primary", phase="query")
    async with Database(settings(pg_dsn)) as db:
        write = asyncio.create_task(db.execute("INSERT INTO effects (note) SELECT 'once' FROM pg_sleep(1)"))
        await async_wait_for(lambda: terminate_backends(pg_dsn, APP, active_only=True), timeout=20, interval=0.05)
        with pytest.raises((asyncpg.ConnectionDoesNotExistError, asyncpg.AdminShutdownError)):
            await write
        # The pool recovers for the next statement.
        assert await db.fetchval("SELECT count(*) FROM effects") == 0
    assert sample("falachefe_db_retries_total", role="primary", phase="query") == retries


# -- health, metrics, configuration --------------------------------------------


async def test_ping_reports_whether_the_primary_answers(pg_dsn: str) -> None:
    db = Database(settings(pg_dsn))
    assert not await db.ping()
    await db.start()
    assert await db.ping()
    await db.close()
    assert not await db.ping()


async def test_pool_gauges_and_acquire_wait_are_exported(db: Database) -> None:
    waits = sample("falachefe_db_pool_acquire_wait_seconds_count", role="primary")
    assert sample("falachefe_db_pool_max_size", role="primary") >= 4
    in_use_before = sample("falachefe_db_pool_in_use", role="primary")
    async with db.transaction() as tx:
        assert await tx.fetchval("SELECT 1") == 1
        assert sample("falachefe_db_pool_in_use", role="primary") == in_use_before + 1
        assert sample("falachefe_db_pool_size", role="primary") >= 1
    assert sample("falachefe_db_pool_in_use", role="primary") == in_use_before
    assert sample("falachefe_db_pool_acquire_wait_seconds_count", role="primary") == waits + 1


async def test_transaction_rolls_back_when_the_block_raises(db: Database) -> None:
    await db.execute("CREATE TABLE ledger (amount int)")
    with pytest.raises(RuntimeError, match="abort"):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO ledger VALUES (10)")
            raise RuntimeError("abort")
    async with db.transaction(isolation="serializable") as tx:
        await tx.executemany("INSERT INTO ledger VALUES ($1)", [(1,), (2,)])
    assert await db.fetchval("SELECT coalesce(sum(amount), 0) FROM ledger") == 3


async def test_json_columns_are_python_values(db: Database) -> None:
    await db.execute("CREATE TABLE settings (value jsonb)")
    await db.execute("INSERT INTO settings VALUES ($1)", {"greeting": "olá", "limits": [1, 2]})
    assert await db.fetchval("SELECT value FROM settings") == {"greeting": "olá", "limits": [1, 2]}


async def test_start_retries_an_unreachable_server_then_fails_without_leaking_the_password() -> None:
    password = "never-print-me"
    unreachable = f"postgresql://falachefe:{password}@127.0.0.1:{free_port()}/falachefe"
    retries = sample("falachefe_db_retries_total", role="primary", phase="connect")
    db = Database(DatabaseSettings(dsn=unreachable, retry_attempts=2, connect_timeout_s=1))
    with pytest.raises(OSError) as failure:
        await db.start()
    assert password not in str(failure.value)
    assert password not in repr(db.settings)
    assert sample("falachefe_db_retries_total", role="primary", phase="connect") == retries + 1
    assert not await db.ping()


def test_a_database_needs_a_dsn() -> None:
    with pytest.raises(ValueError, match=r"database\.dsn is required"):
        Database(DatabaseSettings())


# -- no reset query between checkouts --------------------------------------------

SESSION_STATE = [
    "SET statement_timeout = 0",
    "set search_path to public",
    "SET SESSION work_mem = '64MB'",
    "SELECT set_config('statement_timeout', '0', false)",
    "SELECT set_config('statement_timeout', $1, $2)",
    "SELECT pg_advisory_lock(42)",
    "SELECT pg_try_advisory_lock_shared(42)",
    "LISTEN cache",
    "PREPARE lookup AS SELECT 1",
    "DECLARE rows CURSOR WITH HOLD FOR SELECT 1",
    "CREATE TEMP TABLE scratch (id int)",
    "SELECT 1; SET role = 'postgres'",
]
TRANSACTION_SCOPED = [
    "UPDATE users SET name = $1 WHERE id = $2",
    "SET LOCAL statement_timeout = '5s'",
    "SELECT set_config('statement_timeout', '5s', true)",
    "SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0))",
    "DECLARE rows CURSOR FOR SELECT 1",
    "CREATE TEMPORARY TABLE scratch (id int) ON COMMIT DROP",
    "SELECT 'SET statement_timeout = 0', 'LISTEN x'",
]


@pytest.mark.parametrize("sql", SESSION_STATE)
def test_statements_that_outlive_their_transaction_are_recognised(sql: str) -> None:
    assert session_state(sql) is not None


@pytest.mark.parametrize("sql", TRANSACTION_SCOPED)
def test_transaction_scoped_statements_are_not_session_state(sql: str) -> None:
    assert session_state(sql) is None


async def last_statement(dsn: str) -> str:
    """What the pool's one connection ran last, as PostgreSQL's activity view says."""
    rows = await admin_execute(dsn, "SELECT query FROM pg_stat_activity WHERE application_name = $1", APP)
    assert len(rows) == 1, rows
    return str(rows[0]["query"])


async def test_a_released_connection_gets_no_reset_query_and_keeps_nothing_from_its_last_checkout(pg_dsn: str) -> None:
    one = PoolSettings(min_size=1, max_size=1, statement_timeout_s=30)
    async with Database(settings(pg_dsn, primary=one)) as db:
        # The release sent nothing after the statement (asyncpg's default sends its reset query here).
        assert await db.fetchval("SELECT 41 + 1") == 42
        assert await last_statement(pg_dsn) == "SELECT 41 + 1"
        pid = await db.fetchval("SELECT pg_backend_pid()")
        async with db.transaction() as tx:
            await tx.execute("SET LOCAL statement_timeout = '1234ms'")
            await tx.fetchval("SELECT pg_advisory_xact_lock(4242)")
            assert await tx.fetchval("SHOW statement_timeout") == "1234ms"
        assert await last_statement(pg_dsn) == "COMMIT;"
        # The same connection, next checkout: the pool's own setting, no lock left.
        assert await db.fetchval("SELECT pg_backend_pid()") == pid
        assert await db.fetchval("SHOW statement_timeout") == "30s"
        held = await admin_execute(
            pg_dsn, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $1", pid
        )
        assert held[0][0] == 0
        # What would outlive the checkout is refused before it is sent, outside a transaction or in one.
        for sql in ("SET statement_timeout = 0", "SELECT pg_advisory_lock(4242)", "LISTEN cache"):
            with pytest.raises(ValueError, match="outlives its transaction"):
                await db.execute(sql)
            with pytest.raises(ValueError, match="outlives its transaction"):
                async with db.transaction() as tx:
                    await tx.execute(sql)
        assert await db.fetchval("SHOW statement_timeout") == "30s"
        assert await db.fetchval("SELECT pg_backend_pid()") == pid
