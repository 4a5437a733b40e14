"""Thousands of WhatsApp messages through two real auth workers while a fault strikes mid-run.

The original app's side (the real Node bullmq producer, the seed's options:
three attempts, ``removeOnFail: 50``) enqueues 2,000 messages and a few
malformed jobs; two ``falachefe-runtime worker --pool auth`` processes take
them. Once a quarter is answered, in turn: one worker is SIGKILLed, the
queue's Redis (AOF, as production must run it) is SIGKILLed and started
again five seconds later, PostgreSQL is down for two minutes. Then every
message must have been answered exactly once (one claim, one auth log row,
one crew job each), and the failed set must hold the malformed jobs and
nothing else, each failed on its first attempt for its field.

The operator is not on a message's path (workers take jobs whether it runs
or not); its SIGKILL mid-reconcile is tests/operator/test_operator_lifecycle.py's.

A message's effects are those of the auth worker: the claim of its provider
message id and the auth log row (one transaction, in PostgreSQL), and the
crew job it hands on (its id derived from the message id). The crew stage
is not run here: its kickoffs would cost minutes of CPU per fault on the
shared cores; its exactly-once under SIGKILL is
tests/runtime/test_worker_process.py's.

Each test prints its recovery figures (time from the fault's end to the first
message answered after it, and to the backlog drained); the README's table of
outage recovery quotes them. Locks are shortened (``lock_duration_s`` 10,
``stalled_interval_s`` 5) so a dead worker's jobs come back in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as redis
from worker_harness import Tenant, WorkerProcess, add_tenant, config_values, eventually, inbound, node_bullmq

from falachefe_devstack.postgres import PostgresServer
from falachefe_devstack.redis import DATABASES, RedisServer
from falachefe_runtime.auth.service import crew_job_id
from falachefe_runtime.db import migrate
from falachefe_runtime.queues import BACKLOG_STATES, CREW_QUEUE, WHATSAPP_QUEUE

pytestmark = pytest.mark.slow

#: Valid messages per run.
MESSAGES = 2_000
#: How long PostgreSQL stays down (the issue's requirement), and Redis between its stop and start.
DATABASE_DOWN_S = 120.0
REDIS_DOWN_S = 5.0
#: Nobody serves this address: the auth pool never calls the LLM.
NO_LLM = "http://127.0.0.1:9/v1"

_redis_numbers = itertools.count(1)


def message(base: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """``base`` (a ``process-message`` payload) with some of ``messageData``'s fields replaced."""
    return {"messageData": {**base["messageData"], **fields}}


@dataclass
class Run:
    """One run's servers, data and the jobs it enqueued."""

    dsn: str
    redis_url: str
    tenant: Tenant
    #: provider message id of each valid message.
    provider_ids: list[str]
    #: job id of each malformed job -> the start of the reason it must fail with.
    malformed: dict[str, str]


@dataclass
class Recovery:
    """Seconds from the fault's end: to the first message answered after it, and to the backlog drained."""

    first_answer_s: float
    drained_s: float


@pytest.fixture
async def run(fault_pg: PostgresServer, fault_redis: RedisServer) -> AsyncIterator[Run]:
    """A migrated database with one tenant, an empty Redis database, and the run's jobs enqueued from Node."""
    name = f"faults_{uuid.uuid4().hex[:8]}"
    dsn = await asyncio.to_thread(fault_pg.create_database, name)
    await migrate(dsn)
    sql = await asyncpg.connect(dsn)
    tenant = await add_tenant(sql)
    await sql.close()
    redis_url = fault_redis.url(next(_redis_numbers) % DATABASES or 1)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    await client.flushdb()

    provider_ids = [f"wamid.fault-{n}" for n in range(MESSAGES)]
    jobs = [inbound(tenant, text=f"Mensagem {n}", provider_message_id=pid) for n, pid in enumerate(provider_ids)]
    base = jobs[0]
    # Malformed jobs the Node producer can write, spread through the run; then two it cannot.
    bad: list[tuple[dict[str, Any], str]] = [
        (
            message(base, providerMessageId="wamid.\x00nul"),
            "data.messageData.providerMessageId: Value error, contains NUL",
        ),
        (message(base, text="Olá\x00"), "data.messageData.text: Value error, contains NUL"),
        (message(base, companyId=12345), "data.messageData.companyId: UUID input should be a string"),
        (message(base, text="x" * 5_000), "data.messageData.text: String should have at most 4096 characters"),
    ]
    spoiled_raw = ['{"messageData": {"text": "Oi"', "Oi, tudo bem?"]
    stride = MESSAGES // (len(bad) + len(spoiled_raw) + 1)
    mixed: list[tuple[dict[str, Any], str | None]] = []
    for n, job in enumerate(jobs):
        mixed.append((job, None))
        slot = n // stride
        if n % stride == stride - 1 and slot < len(bad):
            mixed.append(bad[slot])
        elif n % stride == stride - 1 and slot < len(bad) + len(spoiled_raw):
            mixed.append((message(base, providerMessageId=f"wamid.spoiled-{slot}"), "data: not valid JSON"))
    request = {"queue": WHATSAPP_QUEUE, "name": "process-message"}
    ids = await asyncio.to_thread(
        node_bullmq, "add", {"redis": redis_url, "jobs": [{**request, "data": data} for data, _ in mixed]}, 180
    )
    malformed = {job_id: reason for job_id, (_, reason) in zip(ids["ids"], mixed, strict=True) if reason is not None}
    # Node cannot write a job whose data is not JSON: those are spoiled in Redis, as a buggy producer would.
    spoiled = [job_id for job_id, reason in malformed.items() if reason == "data: not valid JSON"]
    for job_id, raw in zip(spoiled, spoiled_raw, strict=True):
        assert await client.hset(f"bull:{WHATSAPP_QUEUE}:{job_id}", "data", raw) == 0
    await client.aclose()
    yield Run(dsn=dsn, redis_url=redis_url, tenant=tenant, provider_ids=provider_ids, malformed=malformed)
    await asyncio.to_thread(fault_pg.drop_database, name)


@pytest.fixture
def workers(run: Run, tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    """Two auth worker processes on the run's database and queue."""
    values = config_values(run.dsn, run.redis_url, NO_LLM, queues={"lock_duration_s": 10, "stalled_interval_s": 5})
    started = [WorkerProcess("auth", values, tmp_path / f"auth-{n}.log") for n in range(2)]
    yield started
    for worker in started:
        worker.stop()


class Progress:
    """What the run has done so far, read through connections that outlive the servers' outages."""

    def __init__(self, run: Run) -> None:
        self._run = run
        self._sql: asyncpg.Connection | None = None
        self._redis = redis.Redis.from_url(run.redis_url, decode_responses=True, socket_timeout=2)

    async def answered(self) -> int | None:
        """Messages answered (distinct provider ids in the auth log), or None while the database is down."""
        try:
            if self._sql is None or self._sql.is_closed():
                self._sql = await asyncpg.connect(self._run.dsn, timeout=2)
            count = await self._sql.fetchval(
                "SELECT count(DISTINCT provider_message_id) FROM whatsapp_auth_logs WHERE company_id = $1",
                self._run.tenant.company_id,
            )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            self._sql = None
            return None
        return int(count)

    async def backlog(self) -> int | None:
        """Jobs of the queue not yet finished (waiting, delayed, active...), or None while Redis is down."""
        key = f"bull:{WHATSAPP_QUEUE}"
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for state in BACKLOG_STATES:
                    if state in ("wait", "paused", "active"):
                        pipe.llen(f"{key}:{state}")
                    else:
                        pipe.zcard(f"{key}:{state}")
                return sum(await pipe.execute())
        except (OSError, redis.RedisError):
            return None

    async def active_jobs(self) -> set[str]:
        return set(await self._redis.lrange(f"bull:{WHATSAPP_QUEUE}:active", 0, -1))

    async def close(self) -> None:
        if self._sql is not None:
            await self._sql.close()
        await self._redis.aclose()


@contextlib.asynccontextmanager
async def progress_of(run: Run) -> AsyncIterator[Progress]:
    progress = Progress(run)
    try:
        yield progress
    finally:
        await progress.close()


async def a_quarter_answered(progress: Progress) -> float:
    """Wait until a quarter of the messages are answered; the rate since the first one was, in messages/s."""
    first: list[float] = []

    async def enough() -> bool:
        answered = (await progress.answered()) or 0
        if answered and not first:
            first.append(time.monotonic())
        return answered >= MESSAGES // 4

    await eventually(enough, f"{MESSAGES // 4} messages answered before the fault", timeout=180)
    return MESSAGES // 4 / max(time.monotonic() - first[0], 0.001)


async def recovery_after(progress: Progress, fault_end: float, timeout: float = 300) -> Recovery:
    """Watch the run from the fault's end until every message is answered and the queue is empty."""
    baseline: int | None = None
    first_answer: float | None = None
    deadline = fault_end + timeout
    while time.monotonic() < deadline:
        answered = await progress.answered()
        now = time.monotonic()
        if answered is not None:
            if baseline is None:
                baseline = answered
            elif first_answer is None and answered > baseline:
                first_answer = now - fault_end
            if answered >= MESSAGES and await progress.backlog() == 0:
                return Recovery(first_answer_s=first_answer or now - fault_end, drained_s=now - fault_end)
        await asyncio.sleep(0.05)
    raise AssertionError(f"not drained {timeout:.0f}s after the fault: {await progress.answered()} answered")


async def assert_every_effect_exactly_once(run: Run) -> None:
    sql = await asyncpg.connect(run.dsn)
    try:
        logged = {
            row["provider_message_id"]: row["n"]
            for row in await sql.fetch(
                "SELECT provider_message_id, count(*) AS n, bool_and(success) AS ok FROM whatsapp_auth_logs"
                " WHERE company_id = $1 GROUP BY provider_message_id",
                run.tenant.company_id,
            )
        }
        claims = await sql.fetchval(
            "SELECT count(*) FROM processed_messages WHERE company_id = $1", run.tenant.company_id
        )
        refused = await sql.fetchval("SELECT count(*) FROM whatsapp_auth_logs WHERE NOT success")
    finally:
        await sql.close()
    expected = set(run.provider_ids)
    duplicated = sorted(pid for pid, n in logged.items() if n > 1)
    missing = sorted(expected - set(logged))
    unexpected = sorted(set(logged) - expected)
    assert (len(duplicated), len(missing), len(unexpected)) == (0, 0, 0), (duplicated[:5], missing[:5], unexpected)
    assert claims == MESSAGES and refused == 0

    client = redis.Redis.from_url(run.redis_url, decode_responses=True)
    try:
        # Handed on once each: every message's crew job exists, and no other.
        crew_ids = [crew_job_id(run.tenant.company_id, pid) for pid in run.provider_ids]
        async with client.pipeline(transaction=False) as pipe:
            for job_id in crew_ids:
                pipe.exists(f"bull:{CREW_QUEUE}:{job_id}")
            present = await pipe.execute()
        assert sum(present) == MESSAGES
        assert await client.llen(f"bull:{CREW_QUEUE}:wait") == MESSAGES

        # Nothing in the failed set but the malformed jobs, each failed at once for its field.
        failed = set(await client.zrange(f"bull:{WHATSAPP_QUEUE}:failed", 0, -1))
        assert failed == set(run.malformed), (failed - set(run.malformed), set(run.malformed) - failed)
        for job_id, reason in run.malformed.items():
            stored = await client.hgetall(f"bull:{WHATSAPP_QUEUE}:{job_id}")
            assert stored["failedReason"].startswith(f"invalid_payload: {reason}"), (job_id, stored["failedReason"])
            assert stored["atm"] == "1", (job_id, stored.get("atm"))
    finally:
        await client.aclose()


async def through_fault(
    name: str, run: Run, workers: list[WorkerProcess], fault: Callable[[Progress], Awaitable[None]]
) -> None:
    """Run the messages through the workers, strike with ``fault`` once a quarter is answered, time the recovery."""
    async with progress_of(run) as progress:
        started = time.monotonic()
        rate = await a_quarter_answered(progress)
        before = await progress.answered()
        fault_start = time.monotonic()
        await fault(progress)
        fault_end = time.monotonic()
        recovery = await recovery_after(progress, fault_end)
    print(
        f"\n{name}: fault at {before}/{MESSAGES} answered ({rate:.0f} messages/s before it),"
        f" {fault_end - fault_start:.1f}s long; first message answered {recovery.first_answer_s:.2f}s after"
        f" its end, backlog drained {recovery.drained_s:.1f}s after; run {time.monotonic() - started:.0f}s in all"
    )
    await assert_every_effect_exactly_once(run)


async def test_a_worker_sigkilled_mid_run_loses_and_duplicates_nothing(run: Run, workers: list[WorkerProcess]) -> None:
    victim, survivor = workers
    killed_at: list[float] = []
    #: Active right after the kill: the dead worker's jobs, and the ones the survivor is running.
    active: set[str] = set()

    async def sigkill(progress: Progress) -> None:
        victim.popen.kill()
        killed_at.append(time.time())
        assert victim.wait(10) < 0
        active.update(await progress.active_jobs())

    await through_fault("worker SIGKILLed", run, workers, sigkill)
    # The dead worker's jobs came back through the survivor's stalled-job check, and no other job did.
    put_back = [line for line in survivor.log().splitlines() if "stalled job put back in the queue" in line]
    stalled = {match.group(1) for line in put_back if (match := re.search(r"job_id=(\d+)", line))}
    assert stalled, "the killed worker held no job: the fault struck nothing"
    assert stalled <= active, stalled - active
    first_put_back = datetime.fromisoformat(put_back[0].split()[0]).timestamp()
    print(f"the killed worker's {len(stalled)} jobs were put back {first_put_back - killed_at[0]:.1f}s after the kill")


async def test_the_queues_redis_restarted_mid_run_loses_and_duplicates_nothing(
    run: Run, workers: list[WorkerProcess], fault_redis: RedisServer
) -> None:
    async def restart_redis(progress: Progress) -> None:
        # Killed, not stopped: a crash (or a lost node) is what AOF's everysec fsync must survive.
        assert fault_redis.process is not None
        await asyncio.to_thread(fault_redis.process.kill)
        await asyncio.sleep(REDIS_DOWN_S)
        # Started from this thread, not asyncio.to_thread: the devstack's servers die with the thread
        # that started them (PR_SET_PDEATHSIG), and the loop's executor threads end with the test.
        fault_redis.start()

    await through_fault("Redis (AOF) SIGKILLed and restarted", run, workers, restart_redis)
    for worker in workers:
        assert worker.popen.poll() is None, worker.log()


async def test_postgresql_down_for_two_minutes_mid_run_loses_and_duplicates_nothing(
    run: Run, workers: list[WorkerProcess], fault_pg: PostgresServer
) -> None:
    async def database_outage(progress: Progress) -> None:
        await asyncio.to_thread(fault_pg.halt)
        await asyncio.sleep(DATABASE_DOWN_S)
        fault_pg.resume()  # from this thread, as Redis above: its executor threads end with the test

    await through_fault("PostgreSQL down 2 min", run, workers, database_outage)
    for worker in workers:
        assert worker.popen.poll() is None, worker.log()
        assert "dependency outage" in worker.log()
