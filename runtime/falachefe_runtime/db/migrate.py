"""Apply the schema's migrations: safe to run twice, and from many pods at once.

- One runner at a time: a session-level advisory lock, taken by polling
  ``pg_try_advisory_lock``. A session *blocked* in ``pg_advisory_lock`` holds
  a snapshot, and ``CREATE INDEX CONCURRENTLY`` in the lock holder waits for
  every older snapshot in the database: the two would deadlock.
- What is applied is recorded in ``schema_migrations`` with a checksum; an
  applied migration whose SQL changed is an error, not a silent skip.
- Transactional migrations run in one transaction with their record.
- Concurrent indexes are built outside any transaction. A failed build leaves
  an INVALID index that ``IF NOT EXISTS`` would skip, so every run checks
  every declared index and rebuilds the missing and the invalid ones; the
  migration is recorded only once all its indexes are valid.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from pydantic import SecretStr

from .migrations import MIGRATIONS, ConcurrentIndex, Migration

log = logging.getLogger("falachefe_runtime.db.migrate")

#: pg advisory lock key: a fixed 64-bit number that means "falachefe migrations".
ADVISORY_LOCK_KEY = 0x46A1AC4EFE_0001

_LOCK_POLL_S = 0.25


class MigrationError(RuntimeError):
    """The schema cannot be brought up to date; the message says what to do."""


#: The schema version this image's code is written against: its newest migration.
SCHEMA_VERSION = MIGRATIONS[-1].version


async def missing_migrations(db: Any, migrations: Sequence[Migration] = MIGRATIONS) -> list[Migration]:
    """The migrations this image has that the database lacks (none: its schema is ready for this code).

    A database ahead of the image (a newer image migrated it, this one is
    older and still rolling out) is fine: migrations only add.
    """
    if await db.fetchval("SELECT to_regclass('schema_migrations') IS NULL", name="schema_migrations_exists"):
        return list(migrations)
    rows = await db.fetch("SELECT version FROM schema_migrations", name="schema_versions")
    applied = {row["version"] for row in rows}
    return [migration for migration in migrations if migration.version not in applied]


def describe_missing(missing: Sequence[Migration]) -> str:
    """Why a worker refuses to start on this schema, and what applies the missing migrations."""
    names = ", ".join(f"{migration.version} ({migration.name})" for migration in missing)
    return (
        f"the database lacks migrations {names} that this image (schema version {SCHEMA_VERSION}) needs; "
        "the operator's migration Job applies them (or run `falachefe-runtime migrate`)"
    )


@dataclass
class MigrationReport:
    """What one ``migrate()`` call did (empty lists: the schema was already up to date)."""

    applied: list[int] = field(default_factory=list)
    rebuilt_indexes: list[str] = field(default_factory=list)
    created_indexes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.applied or self.rebuilt_indexes or self.created_indexes)


async def migrate(
    dsn: str | SecretStr,
    *,
    lock_wait_s: float = 300.0,
    migrations: Sequence[Migration] = MIGRATIONS,
    application_name: str = "falachefe-migrate",
) -> MigrationReport:
    """Bring the database at ``dsn`` up to the latest schema; see the module docstring."""
    secret = dsn.get_secret_value() if isinstance(dsn, SecretStr) else dsn
    _check_order(migrations)
    connection = await asyncpg.connect(
        secret,
        server_settings={
            "application_name": application_name,
            # Index builds on big tables take as long as they take.
            "statement_timeout": "0",
        },
    )
    try:
        await _lock(connection, lock_wait_s)
        try:
            return await _apply(connection, migrations)
        finally:
            await connection.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_KEY)
    finally:
        await connection.close()


def _check_order(migrations: Sequence[Migration]) -> None:
    versions = [migration.version for migration in migrations]
    if versions != sorted(set(versions)):
        raise MigrationError(f"migration versions must be unique and increasing, got {versions}")


async def _lock(connection: Any, lock_wait_s: float) -> None:
    deadline = time.monotonic() + lock_wait_s
    waited = False
    while not await connection.fetchval("SELECT pg_try_advisory_lock($1)", ADVISORY_LOCK_KEY):
        if not waited:
            log.info("another migration is running; waiting for it", extra={"event": "migrate_wait"})
            waited = True
        if time.monotonic() >= deadline:
            raise MigrationError(
                f"another migration held the lock for more than {lock_wait_s:.0f}s; "
                "check pg_stat_activity for a stuck 'falachefe-migrate' session"
            )
        await asyncio.sleep(_LOCK_POLL_S)


async def _apply(connection: Any, migrations: Sequence[Migration]) -> MigrationReport:
    report = MigrationReport()
    await connection.execute(
        """
        CREATE TABLE IF NOT EXISTS schema_migrations (
            version integer PRIMARY KEY,
            name text NOT NULL,
            checksum text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    applied = {row["version"]: row for row in await connection.fetch("SELECT version, checksum FROM schema_migrations")}
    known = {migration.version for migration in migrations}
    newer = sorted(set(applied) - known)
    if newer:
        # An older image during a rolling upgrade: the newer schema is a
        # superset it can live with, so this is not an error.
        log.warning("database has migrations this runtime does not know: %s", newer, extra={"event": "migrate_newer"})
    for migration in migrations:
        row = applied.get(migration.version)
        if row is not None:
            if row["checksum"] != migration.checksum:
                raise MigrationError(
                    f"migration {migration.version} ({migration.name}) changed after it was applied; "
                    "add a new migration instead of editing an applied one"
                )
            continue
        if migration.statements:
            async with connection.transaction():
                for statement in migration.statements:
                    await connection.execute(statement)
                await _record(connection, migration)
        else:
            await _ensure_indexes(connection, migration.concurrent_indexes, report)
            await _record(connection, migration)
        report.applied.append(migration.version)
        log.info("applied migration %d (%s)", migration.version, migration.name, extra={"event": "migrate_applied"})
    # Indexes of migrations applied earlier may have been dropped or left
    # INVALID since (a failed REINDEX, a manual fix): put them back.
    for migration in migrations:
        if migration.concurrent_indexes and migration.version not in report.applied:
            await _ensure_indexes(connection, migration.concurrent_indexes, report)
    return report


async def _record(connection: Any, migration: Migration) -> None:
    await connection.execute(
        "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
        migration.version,
        migration.name,
        migration.checksum,
    )


async def _ensure_indexes(connection: Any, indexes: Sequence[ConcurrentIndex], report: MigrationReport) -> None:
    for index in indexes:
        valid = await connection.fetchval(
            """
            SELECT i.indisvalid
            FROM pg_index i
            JOIN pg_class c ON c.oid = i.indexrelid
            WHERE c.relname = $1 AND c.relnamespace = current_schema()::regnamespace
            """,
            index.name,
        )
        if valid:
            continue
        if valid is False:
            log.warning(
                "index %s is INVALID (an interrupted concurrent build); rebuilding it",
                index.name,
                extra={"event": "migrate_rebuild_index", "index": index.name},
            )
            # Our own constant, validated as a plain identifier.
            await connection.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {index.name}")
        try:
            await connection.execute(index.create_sql())
        except asyncpg.PostgresError as error:
            raise MigrationError(
                f"building index {index.name} on {index.table} failed ({type(error).__name__}: {error}); "
                "it is left INVALID and the next migrate run rebuilds it"
            ) from error
        (report.rebuilt_indexes if valid is False else report.created_indexes).append(index.name)
