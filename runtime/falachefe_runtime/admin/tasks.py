"""The admin jobs, each safe to run on many replicas at once.

The seed ran these with ``setInterval`` in every process; here each is a
BullMQ job scheduler with a fixed id (``SCHEDULES``): every admin replica
upserts the same schedulers at start-up, BullMQ keeps one of each, and each
iteration is one job that one worker takes. On top of that every task is
harmless when two runs overlap (a manual run, a retry):

- ``expire-sessions`` works in batches with ``FOR UPDATE SKIP LOCKED``, so
  concurrent runs split the rows instead of waiting on each other;
- ``clean-cache`` only unlinks unreachable keys (see ``cache_sweep``);
- ``aggregate-metrics`` overwrites the same per-hour summary.
"""

from __future__ import annotations

import json
from datetime import datetime

import redis.asyncio as redis
from redis.typing import EncodableT, FieldT

from falachefe_runtime.admin.cache_sweep import CacheSweeper
from falachefe_runtime.db.database import Database
from falachefe_runtime.observability import metrics
from falachefe_runtime.payloads import AGGREGATE_METRICS, CLEAN_CACHE, EXPIRE_SESSIONS, AdminTask
from falachefe_runtime.worker.routing import JobInfo, JobResult

#: Milliseconds between runs: the seed's intervals (hourly, 5 min, 5 min).
SCHEDULES: dict[str, int] = {
    EXPIRE_SESSIONS: 3_600_000,
    CLEAN_CACHE: 300_000,
    AGGREGATE_METRICS: 300_000,
}

#: A run stops after this many batches and leaves the rest to the next run.
MAX_BATCHES = 100

#: Per-hour summaries are kept this long in Redis.
SUMMARY_TTL_S = 7 * 86_400

# Deletions and updates by batch; $1 is the batch size. Every statement is a
# constant, and each one's rows are picked with SKIP LOCKED so that two runs
# never block on, or act twice on, the same row.
_EXPIRY_STEPS: dict[str, str] = {
    # Expired sessions stop counting as the user's active one.
    "sessions_closed": """
        UPDATE whatsapp_sessions SET is_active = false WHERE id IN (
            SELECT id FROM whatsapp_sessions WHERE is_active AND expires_at < now()
            LIMIT $1 FOR UPDATE SKIP LOCKED)
    """,
    # The seed's clean-up: expired and unused for a week.
    "sessions_deleted": """
        DELETE FROM whatsapp_sessions WHERE id IN (
            SELECT id FROM whatsapp_sessions
            WHERE expires_at < now() AND last_used_at < now() - interval '7 days'
            LIMIT $1 FOR UPDATE SKIP LOCKED)
    """,
    "link_codes_deleted": """
        DELETE FROM phone_link_codes WHERE id IN (
            SELECT id FROM phone_link_codes
            WHERE expires_at < now() - interval '1 day'
            LIMIT $1 FOR UPDATE SKIP LOCKED)
    """,
    # Idempotency claims outlive any redelivery by far after a week.
    "message_claims_deleted": """
        DELETE FROM processed_messages WHERE (company_id, provider_message_id, stage) IN (
            SELECT company_id, provider_message_id, stage FROM processed_messages
            WHERE processed_at < now() - interval '7 days'
            LIMIT $1 FOR UPDATE SKIP LOCKED)
    """,
}

#: Served by ``idx_messages_created`` (migration 3): ``messages`` only grows.
HOURLY_MESSAGES = """
    SELECT company_id, date_trunc('hour', created_at) AS hour,
           count(*) FILTER (WHERE role = 'user') AS inbound,
           count(*) FILTER (WHERE role = 'assistant') AS replies
    FROM messages
    WHERE created_at >= date_trunc('hour', now()) - interval '1 hour'
    GROUP BY company_id, hour
"""


def summary_key(prefix: str, hour: datetime) -> str:
    return f"{prefix}:metrics:messages:{hour:%Y-%m-%dT%H}"


class AdminTasks:
    def __init__(self, db: Database, client: redis.Redis, *, cache_prefix: str) -> None:
        self._db = db
        self._client = client
        self._cache_prefix = cache_prefix
        self._sweeper = CacheSweeper(client, cache_prefix)

    async def expire_sessions(self, task: AdminTask, info: JobInfo) -> JobResult:
        counts = {step: await self._in_batches(step, sql, task.batch_size) for step, sql in _EXPIRY_STEPS.items()}
        for step, count in counts.items():
            metrics.ADMIN_TASK_ITEMS.labels(step).inc(count)
        info.note(**counts)
        return dict(counts)

    async def _in_batches(self, step: str, sql: str, batch_size: int) -> int:
        total = 0
        for _ in range(MAX_BATCHES):
            status = await self._db.execute(sql, batch_size, name=f"admin.{step}", idempotent=True)
            affected = int(status.rsplit(" ", 1)[-1])
            total += affected
            if affected < batch_size:
                break
        return total

    async def clean_cache(self, task: AdminTask, info: JobInfo) -> JobResult:
        report = await self._sweeper.sweep(task.batch_size)
        metrics.ADMIN_TASK_ITEMS.labels("cache_entries_removed").inc(report.removed)
        info.note(examined=report.examined, removed=report.removed)
        return {"examined": report.examined, "removed": report.removed, "wrapped": report.wrapped}

    async def aggregate_metrics(self, task: AdminTask, info: JobInfo) -> JobResult:
        """Per company and hour: inbound messages and replies, for the current and the previous hour."""
        rows = await self._db.fetch(HOURLY_MESSAGES, name="admin.hourly_messages", readonly=True)
        by_hour: dict[str, dict[FieldT, EncodableT]] = {}
        for row in rows:
            key = summary_key(self._cache_prefix, row["hour"])
            by_hour.setdefault(key, {})[str(row["company_id"])] = json.dumps(
                {"inbound": row["inbound"], "replies": row["replies"]}
            )
        async with self._client.pipeline(transaction=True) as pipe:
            for key, fields in by_hour.items():
                pipe.delete(key)
                pipe.hset(key, mapping=fields)
                pipe.expire(key, SUMMARY_TTL_S)
            await pipe.execute()
        metrics.ADMIN_TASK_ITEMS.labels("company_hours_aggregated").inc(len(rows))
        return {"summaries": sorted(by_hour), "companyHours": len(rows)}
