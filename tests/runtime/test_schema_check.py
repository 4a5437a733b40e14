"""Workers never serve on a schema older than their code; ``migrate`` reports its outcome for the operator.

Real PostgreSQL, the real ``falachefe-runtime`` program.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import asyncpg
import pytest
from worker_harness import RUNTIME_CLI, WorkerProcess, config_values, worker_env

from falachefe_runtime.db import migrate
from falachefe_runtime.db.migrate import SCHEMA_VERSION
from falachefe_runtime.db.migrations import MIGRATIONS

pytestmark = pytest.mark.slow


async def test_a_worker_refuses_a_database_that_lacks_one_of_its_migrations(
    pg_dsn: str, redis_url: str, tmp_path: Path
) -> None:
    # Every migration but the newest: what a database looks like before the new image's Job ran.
    await migrate(pg_dsn, migrations=MIGRATIONS[:-1])
    worker = WorkerProcess("auth", config_values(pg_dsn, redis_url, "http://127.0.0.1:9"), tmp_path / "auth.log")
    try:
        code = await asyncio.to_thread(worker.wait, 60)
        log = worker.log()
    finally:
        worker.stop()
    newest = MIGRATIONS[-1]
    assert code == 3, log
    assert f"the database lacks migrations {newest.version} ({newest.name})" in log
    assert f"schema version {SCHEMA_VERSION}" in log


def test_migrate_writes_its_outcome_as_the_termination_message(pg_dsn: str, redis_url: str, tmp_path: Path) -> None:
    env = worker_env(config_values(pg_dsn, redis_url, "http://127.0.0.1:9"), "auth")
    message = tmp_path / "termination-log"
    argv = [str(RUNTIME_CLI), "migrate", "--termination-log", str(message)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(message.read_text())
    assert report["schema_version"] == SCHEMA_VERSION
    assert report["applied"] == [migration.version for migration in MIGRATIONS]


async def test_a_failed_migrate_says_why_in_the_termination_message(
    pg_dsn: str, redis_url: str, tmp_path: Path
) -> None:
    # Someone edited an applied migration's record: migrate must refuse, and say so.
    await migrate(pg_dsn)
    connection = await asyncpg.connect(pg_dsn)
    try:
        await connection.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")
    finally:
        await connection.close()
    env = worker_env(config_values(pg_dsn, redis_url, "http://127.0.0.1:9"), "auth")
    message = tmp_path / "termination-log"
    argv = [str(RUNTIME_CLI), "migrate", "--termination-log", str(message)]
    done = await asyncio.to_thread(
        subprocess.run, argv, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode != 0
    report = json.loads(message.read_text())
    assert report["schema_version"] == SCHEMA_VERSION
    assert report["error"].startswith("MigrationError: migration 1 (")
    assert "changed after it was applied" in report["error"]
