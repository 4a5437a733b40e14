"""The admin jobs: session expiry in batches (concurrent runs split the work), cache sweep, hourly summaries."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import redis.asyncio as redis
from worker_harness import add_tenant, eventually, running_pool

from falachefe_runtime.admin.cache_sweep import SCOPE_ABBREVIATIONS, entry_generations
from falachefe_runtime.admin.tasks import HOURLY_MESSAGES, SCHEDULES, AdminTasks, summary_key
from falachefe_runtime.cache import Cache, CacheKind, Scope, ScopeKind
from falachefe_runtime.cache.keys import KeySpace
from falachefe_runtime.config import CacheSettings, DatabaseSettings, RedisSettings
from falachefe_runtime.db import Database
from falachefe_runtime.payloads import AdminTask
from falachefe_runtime.queues import ADMIN_QUEUE, Queues
from falachefe_runtime.worker.routing import JobInfo

PREFIX = "falachefe:cache"
INFO = JobInfo(id="t", name="test", queue=ADMIN_QUEUE, attempt=1, max_attempts=1)


@pytest.fixture
async def databases(app_dsn: str) -> AsyncIterator[list[Database]]:
    """Two independent pools on the same database, as two admin replicas have."""
    settings = DatabaseSettings(dsn=app_dsn, primary={"min_size": 1, "max_size": 3})
    started = [Database(settings), Database(settings)]
    for db in started:
        await db.start()
    yield started
    for db in started:
        await db.close()


async def test_expiry_in_batches_with_two_replicas_at_once_acts_on_each_row_once(
    sql: asyncpg.Connection, databases: list[Database], client: redis.Redis
) -> None:
    tenant = await add_tenant(sql)
    users = [tenant.user_id] + [
        await sql.fetchval(
            "INSERT INTO users (company_id, phone_number) VALUES ($1, $2) RETURNING id",
            tenant.company_id,
            f"+55119000000{n:02d}",
        )
        for n in range(60)
    ]
    # users[0]: live session; 1..20: expired yesterday (closed, kept); 21..60: dead for a week (deleted).
    await sql.execute(
        "INSERT INTO whatsapp_sessions (user_id, company_id, phone_number, expires_at)"
        " VALUES ($1, $2, '+5511987654321', now() + interval '1 day')",
        users[0],
        tenant.company_id,
    )
    for n, user in enumerate(users[1:], start=1):
        await sql.execute(
            "INSERT INTO whatsapp_sessions (user_id, company_id, phone_number, expires_at, last_used_at)"
            " VALUES ($1, $2, '+5511900000000', now() - $3::interval, now() - $3::interval)",
            user,
            tenant.company_id,
            timedelta(days=1 if n <= 20 else 8),
        )
    await sql.execute(
        "INSERT INTO processed_messages (company_id, provider_message_id, stage, processed_at)"
        " SELECT $1::uuid, 'old-' || n, 'auth', now() - interval '8 days' FROM generate_series(1, 7) AS n"
        " UNION ALL SELECT $1::uuid, 'new-' || n, 'auth', now() FROM generate_series(1, 3) AS n",
        tenant.company_id,
    )
    await sql.execute(
        "INSERT INTO phone_link_codes (company_id, phone_number, code_hash, expires_at)"
        " VALUES ($1, '+5511987654321', '\\x00', now() - interval '2 days'),"
        " ($1, '+5511987654321', '\\x01', now() + interval '5 minutes')",
        tenant.company_id,
    )

    replicas = [AdminTasks(db, client, cache_prefix=PREFIX) for db in databases]
    results = await asyncio.gather(*(r.expire_sessions(AdminTask(batch_size=3), INFO) for r in replicas))

    total = {step: sum(result[step] for result in results) for step in results[0]}
    assert total == {
        "sessions_closed": 60,
        "sessions_deleted": 40,
        "link_codes_deleted": 1,
        "message_claims_deleted": 7,
    }
    left = await sql.fetch("SELECT user_id, is_active FROM whatsapp_sessions ORDER BY is_active DESC")
    assert len(left) == 21 and left[0]["user_id"] == users[0] and left[0]["is_active"]
    assert not any(row["is_active"] for row in left[1:])
    assert await sql.fetchval("SELECT count(*) FROM processed_messages") == 3
    assert await sql.fetchval("SELECT count(*) FROM phone_link_codes") == 1
    # A second run finds nothing left to do.
    again = await replicas[0].expire_sessions(AdminTask(batch_size=3), INFO)
    assert set(again.values()) == {0}


def test_sweep_reads_the_cache_key_layout() -> None:
    keys = KeySpace(PREFIX)
    company, user = (ScopeKind.COMPANY, "c-1"), (ScopeKind.USER, "u-9")
    entry = keys.entry(CacheKind.SESSION, "active", (company, user), (4, 7))
    assert entry_generations(entry, PREFIX) == [(company, 4), (user, 7)]
    assert entry_generations(keys.entry(CacheKind.CREW_RESPONSE, "a:b", (), ()), PREFIX) == []
    assert entry_generations(KeySpace.lock(entry), PREFIX) is None
    assert entry_generations(keys.generation(company), PREFIX) is None
    assert entry_generations(keys.generation_counter, PREFIX) is None
    assert set(SCOPE_ABBREVIATIONS.values()) == set(ScopeKind)


async def test_cache_sweep_removes_only_entries_orphaned_by_invalidation(
    redis_url: str, client: redis.Redis, app_dsn: str
) -> None:
    cache = Cache(RedisSettings(url=redis_url), CacheSettings())
    await cache.start()
    stale, kept = uuid.uuid4(), uuid.uuid4()
    try:
        for company in (stale, kept):
            for n in range(30):
                await cache.get_or_load(
                    CacheKind.COMPANY_CONFIG,
                    f"k{n}",
                    lambda: asyncio.sleep(0, {"n": 1}),
                    scope=Scope(company_id=company),
                )
        await cache.get_or_load(CacheKind.CREW_RESPONSE, "unscoped", lambda: asyncio.sleep(0, "x"))
        await cache.invalidate_company(stale)
    finally:
        await cache.close()
    db = Database(DatabaseSettings(dsn=app_dsn, primary={"min_size": 1, "max_size": 2}))
    await db.start()
    try:
        tasks = AdminTasks(db, client, cache_prefix=PREFIX)
        removed = examined = 0
        for _ in range(20):  # a small budget per run: the cursor carries over
            report = await tasks.clean_cache(AdminTask(batch_size=10), INFO)
            removed += report["removed"]
            examined += report["examined"]
            if report["wrapped"]:
                break
    finally:
        await db.close()
    assert removed == 30
    assert examined >= 61
    left = [key async for key in client.scan_iter(match=f"{PREFIX}:company_config:*")]
    assert len(left) == 30 and all(str(kept) in key for key in left)
    assert [key async for key in client.scan_iter(match=f"{PREFIX}:crew_response:*")]


async def test_hourly_message_summary_per_company(
    sql: asyncpg.Connection, databases: list[Database], client: redis.Redis
) -> None:
    first, second = await add_tenant(sql), await add_tenant(sql, phone="+5521988887777")
    for tenant, exchanges in ((first, 3), (second, 1)):
        conversation = await sql.fetchval(
            "INSERT INTO conversations (company_id, user_id) VALUES ($1, $2) RETURNING id",
            tenant.company_id,
            tenant.user_id,
        )
        for n in range(exchanges):
            await sql.execute(
                "INSERT INTO messages (conversation_id, company_id, role, content, provider_message_id)"
                " VALUES ($1, $2, 'user', 'oi', $3), ($1, $2, 'assistant', 'olá', NULL)",
                conversation,
                tenant.company_id,
                f"wamid.{tenant.company_id}.{n}",
            )
    result = await AdminTasks(databases[0], client, cache_prefix=PREFIX).aggregate_metrics(AdminTask(), INFO)
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    key = summary_key(PREFIX, hour)
    assert key in result["summaries"]
    summary = {company: json.loads(value) for company, value in (await client.hgetall(key)).items()}
    assert summary == {
        str(first.company_id): {"inbound": 3, "replies": 3},
        str(second.company_id): {"inbound": 1, "replies": 1},
    }
    assert 0 < await client.ttl(key) <= 7 * 86_400


async def test_the_hourly_summary_reads_recent_messages_through_an_index(sql: asyncpg.Connection) -> None:
    # On a near-empty table the planner prefers a scan; forbid it to see whether an index serves the query.
    await sql.execute("SET enable_seqscan = off")
    plan = "\n".join(row[0] for row in await sql.fetch(f"EXPLAIN {HOURLY_MESSAGES}"))
    assert "idx_messages_created" in plan, plan


async def test_admin_replicas_share_one_schedule_and_run_its_jobs(make_config, queues: Queues) -> None:
    async with running_pool(make_config("admin")), running_pool(make_config("admin")):

        async def all_ran() -> bool:
            return (await queues.counts(ADMIN_QUEUE))["completed"] >= len(SCHEDULES)

        await eventually(all_ran, "the first run of each admin task")
        assert await queues.queue(ADMIN_QUEUE).getJobSchedulersCount() == len(SCHEDULES)
        counts = await queues.counts(ADMIN_QUEUE)
        assert counts["failed"] == 0
        # One next run per task, however many replicas registered it.
        assert counts["delayed"] == len(SCHEDULES)
        done = await queues.queue(ADMIN_QUEUE).getJobs(["completed"], 0, -1, True)
        assert sorted(job.name for job in done) == sorted(SCHEDULES)
