"""Schema migrations against a real PostgreSQL: idempotent, concurrent-safe, self-repairing."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import uuid
from typing import Any

import asyncpg
import pytest

from falachefe_runtime.db import COPY_COLUMNS, MigrationError, migrate
from falachefe_runtime.db.migrate import ADVISORY_LOCK_KEY
from falachefe_runtime.db.migrations import MIGRATIONS

#: The indexes the seed document (performance-strategy.md) declares, by name.
SEED_INDEX_NAMES = {
    "idx_whatsapp_sessions_lookup",
    "idx_whatsapp_sessions_cleanup",
    "idx_whatsapp_auth_logs_search",
    "idx_crews_company_active",
    "idx_crew_agents_active",
    "idx_crew_tasks_status",
    "idx_crew_memories_access",
    "idx_conversations_company_date",
    "idx_messages_conversation_created",
    "idx_users_company_role",
    "idx_companies_active_domain",
}

#: The seed's tables, and the ones the workers add.
TABLES = {
    "companies",
    "users",
    "whatsapp_sessions",
    "whatsapp_auth_logs",
    "crews",
    "crew_agents",
    "crew_tasks",
    "crew_memories",
    "conversations",
    "messages",
    "phone_link_codes",
    "processed_messages",
    "schema_migrations",
}


async def query(dsn: str, sql: str, *args: Any) -> list[Any]:
    connection = await asyncpg.connect(dsn)
    try:
        return list(await connection.fetch(sql, *args))
    finally:
        await connection.close()


async def indexes(dsn: str) -> dict[str, tuple[bool, str]]:
    """Every index in the public schema: name -> (valid, definition)."""
    rows = await query(
        dsn,
        """
        SELECT c.relname AS name, i.indisvalid AS valid, pg_get_indexdef(i.indexrelid) AS definition
        FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE c.relnamespace = 'public'::regnamespace
        """,
    )
    return {row["name"]: (row["valid"], row["definition"]) for row in rows}


async def test_migrate_creates_the_schema_and_a_second_run_is_a_no_op(pg_dsn: str) -> None:
    first = await migrate(pg_dsn)
    assert first.applied == [1, 2, 3, 4]
    tables = {
        row["tablename"] for row in await query(pg_dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    }
    assert tables == TABLES
    before = await indexes(pg_dsn)

    second = await migrate(pg_dsn)
    assert not second.changed, second
    assert await indexes(pg_dsn) == before
    recorded = await query(pg_dsn, "SELECT version, name FROM schema_migrations ORDER BY version")
    assert [(row["version"], row["name"]) for row in recorded] == [
        (1, "core_tables"),
        (2, "seed_indexes"),
        (3, "admin_indexes"),
        (4, "crew_exchange_function"),
    ]


async def test_every_seed_index_exists_valid_and_without_now_in_a_predicate(pg_dsn: str) -> None:
    await migrate(pg_dsn)
    found = await indexes(pg_dsn)
    assert set(found) >= SEED_INDEX_NAMES
    for name in SEED_INDEX_NAMES:
        valid, definition = found[name]
        assert valid, name
        assert "now()" not in definition.lower(), definition
    assert found["idx_whatsapp_sessions_lookup"][1].endswith("WHERE is_active")
    assert found["idx_companies_active_domain"][1].endswith("WHERE (domain IS NOT NULL)")
    assert "(company_id, created_at DESC)" in found["idx_conversations_company_date"][1]


async def test_concurrent_migrations_all_succeed_and_apply_once(pg_dsn: str) -> None:
    reports = await asyncio.gather(*(migrate(pg_dsn) for _ in range(3)))
    applied = sorted(report.applied for report in reports)
    assert applied == [[], [], [1, 2, 3, 4]]
    found = await indexes(pg_dsn)
    assert all(valid for valid, _ in found.values())
    assert set(found) >= SEED_INDEX_NAMES
    assert len(await query(pg_dsn, "SELECT version FROM schema_migrations")) == 4


async def test_an_invalid_index_left_by_a_failed_concurrent_build_is_rebuilt(pg_dsn: str) -> None:
    await migrate(pg_dsn)
    company = (await query(pg_dsn, "INSERT INTO companies (name) VALUES ('acme') RETURNING id"))[0]["id"]
    created = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    for _ in range(2):
        await query(
            pg_dsn,
            "INSERT INTO crews (company_id, name, created_at) VALUES ($1, 'support', $2)",
            company,
            created,
        )
    # What an interrupted rollout leaves: a concurrent build under our index's
    # name that failed (here on duplicates) and stays behind, INVALID.
    await query(pg_dsn, "DROP INDEX idx_crews_company_active")
    with pytest.raises(asyncpg.UniqueViolationError):
        await query(
            pg_dsn,
            "CREATE UNIQUE INDEX CONCURRENTLY idx_crews_company_active ON crews (company_id, is_active, created_at)",
        )
    assert (await indexes(pg_dsn))["idx_crews_company_active"][0] is False

    report = await migrate(pg_dsn)
    assert report.rebuilt_indexes == ["idx_crews_company_active"]
    valid, definition = (await indexes(pg_dsn))["idx_crews_company_active"]
    assert valid
    assert "UNIQUE" not in definition
    assert not (await migrate(pg_dsn)).changed


async def test_a_dropped_index_is_recreated(pg_dsn: str) -> None:
    await migrate(pg_dsn)
    await query(pg_dsn, "DROP INDEX idx_messages_conversation_created")
    assert (await migrate(pg_dsn)).created_indexes == ["idx_messages_conversation_created"]


async def test_an_applied_migration_that_changed_is_refused(pg_dsn: str) -> None:
    await migrate(pg_dsn)
    edited = dataclasses.replace(MIGRATIONS[0], statements=(*MIGRATIONS[0].statements, "SELECT 1"))
    with pytest.raises(MigrationError, match=r"migration 1 \(core_tables\) changed after it was applied"):
        await migrate(pg_dsn, migrations=(edited, *MIGRATIONS[1:]))


async def test_migrate_gives_up_waiting_for_a_stuck_lock_holder(pg_dsn: str) -> None:
    holder = await asyncpg.connect(pg_dsn)
    try:
        assert await holder.fetchval("SELECT pg_try_advisory_lock($1)", ADVISORY_LOCK_KEY)
        with pytest.raises(MigrationError, match="held the lock"):
            await migrate(pg_dsn, lock_wait_s=0.5)
    finally:
        await holder.close()
    assert (await migrate(pg_dsn)).applied == [1, 2, 3, 4]


async def test_bulk_insert_allow_list_matches_the_schema(pg_dsn: str) -> None:
    await migrate(pg_dsn)
    rows = await query(
        pg_dsn, "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public'"
    )
    columns: dict[str, set[str]] = {}
    for row in rows:
        columns.setdefault(row["table_name"], set()).add(row["column_name"])
    for table, allowed in COPY_COLUMNS.items():
        assert allowed <= columns[table], (table, allowed - columns[table])


async def test_constraints_the_workers_rely_on(pg_dsn: str) -> None:
    await migrate(pg_dsn)
    company = (await query(pg_dsn, "INSERT INTO companies (name) VALUES ('acme') RETURNING id"))[0]["id"]
    with pytest.raises(asyncpg.CheckViolationError, match="users_phone_number_e164"):
        await query(pg_dsn, "INSERT INTO users (company_id, phone_number) VALUES ($1, '11999990000')", company)
    user = (
        await query(
            pg_dsn, "INSERT INTO users (company_id, phone_number) VALUES ($1, '+5511999990000') RETURNING id", company
        )
    )[0]["id"]
    with pytest.raises(asyncpg.UniqueViolationError):
        await query(pg_dsn, "INSERT INTO users (company_id, phone_number) VALUES ($1, '+5511999990000')", company)

    session = (
        "INSERT INTO whatsapp_sessions (user_id, company_id, phone_number, expires_at) "
        "VALUES ($1, $2, $3, now() + interval '1 day')"
    )
    await query(pg_dsn, session, user, company, "+5511999990000")
    with pytest.raises(asyncpg.UniqueViolationError, match="uq_whatsapp_sessions_active_user"):
        await query(pg_dsn, session, user, company, "+5511999990000")

    claim = (
        "INSERT INTO processed_messages (company_id, provider_message_id, stage) VALUES ($1, $2, 'auth') "
        "ON CONFLICT DO NOTHING RETURNING provider_message_id"
    )
    message_id = f"wamid.{uuid.uuid4().hex}"
    assert len(await query(pg_dsn, claim, company, message_id)) == 1
    assert len(await query(pg_dsn, claim, company, message_id)) == 0

    conversation = (
        await query(
            pg_dsn, "INSERT INTO conversations (company_id, user_id) VALUES ($1, $2) RETURNING id", company, user
        )
    )[0]["id"]
    message = (
        "INSERT INTO messages (conversation_id, company_id, role, content, provider_message_id) "
        "VALUES ($1, $2, 'user', 'oi', $3)"
    )
    await query(pg_dsn, message, conversation, company, message_id)
    with pytest.raises(asyncpg.UniqueViolationError, match="uq_messages_provider_message"):
        await query(pg_dsn, message, conversation, company, message_id)
    with pytest.raises(asyncpg.CheckViolationError, match="crews_process_kind"):
        await query(pg_dsn, "INSERT INTO crews (company_id, name, process) VALUES ($1, 'c', 'parallel')", company)
