"""Completing a job takes the next one in the same Redis round trip: bullmq's ``moveToFinished`` contract, pinned.

``FetchNextWorker`` follows the code of one bullmq version and the answer
of its ``moveToFinished`` script with "fetch next" set. These tests fail when
either changes: the installed version, or what the script does and answers
(on real Redis, with jobs enqueued by the real Node bullmq, as the original
app enqueues them). Most drive the worker the way bullmq's run loop does:
``getNextJob`` for the first job, then ``processJob``, whose result is the
next job; the last runs a ``QueueWorker`` and its loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import bullmq
import pytest
import redis.asyncio as redis
from bullmq import Queue
from bullmq.job import Job
from pydantic import BaseModel
from worker_harness import eventually, node_bullmq

from falachefe_runtime.config import LOCK_HOLDER_SEPARATOR, QueueSettings
from falachefe_runtime.worker.fetch_next import WRITTEN_AGAINST
from falachefe_runtime.worker.intake import JobIntake
from falachefe_runtime.worker.routing import JobInfo, JobResult, Route
from falachefe_runtime.worker.runner import QueueWorker

QUEUE = "fetch-next-test"
POD = "app-auth-7c4d-q9k2p"
KEEP_FAILED = QueueSettings().keep_failed


class Processor:
    """Records each job and token it is given; returns a result naming the job."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    async def __call__(self, job: Job, token: str) -> dict[str, Any]:
        self.seen.append((str(job.id), token))
        return {"done": job.data["n"]}


@pytest.fixture
async def queue(redis_url: str) -> AsyncIterator[Queue]:
    producer = Queue(QUEUE, {"connection": redis_url})
    yield producer
    await producer.close()


@contextlib.asynccontextmanager
async def intake(redis_url: str, processor: Processor, *, fetch_next: bool = True) -> AsyncIterator[JobIntake]:
    """A worker that is not running: the test drives it as bullmq's run loop would."""
    options = {"connection": redis_url, "concurrency": 1, "lockDuration": 30_000, "autorun": False}
    worker = JobIntake(QUEUE, processor, options, keep_failed=KEEP_FAILED, holder=POD, fetch_next=fetch_next)
    try:
        yield worker
    finally:
        await worker.close()


def produce(redis_url: str, *jobs: dict[str, Any]) -> list[str]:
    """Enqueue with the Node bullmq (``priority`` and ``delay`` are taken from the data, as the seed does)."""
    request = {"redis": redis_url, "jobs": [{"queue": QUEUE, "name": "task", "data": data} for data in jobs]}
    return [str(job_id) for job_id in node_bullmq("add", request)["ids"]]


async def script_calls(client: redis.Redis) -> int:
    """Lua scripts Redis has run: each a round trip (bullmq moves jobs only with scripts).

    An EVALSHA answered NOSCRIPT (the first use of a script on this server;
    redis-py then loads it and calls again) is rejected, not run.
    """
    stats = await client.info("commandstats")
    calls = 0
    for command in ("evalsha", "eval"):
        stat = stats.get(f"cmdstat_{command}", {})
        calls += int(stat.get("calls", 0)) - int(stat.get("rejected_calls", 0)) - int(stat.get("failed_calls", 0))
    return calls


def test_the_installed_bullmq_is_the_version_fetch_next_was_written_against() -> None:
    # If this fails, re-read bullmq's Worker.processJob and moveToFinished script against
    # falachefe_runtime/worker/fetch_next.py, then move WRITTEN_AGAINST.
    assert bullmq.__version__ == WRITTEN_AGAINST


async def test_completing_a_job_stores_its_result_and_takes_the_next_one_locked_with_the_same_token(
    redis_url: str, client: redis.Redis, queue: Queue
) -> None:
    due = int(time.time() * 1000) + 60_000
    first, urgent, later = produce(redis_url, {"n": 1}, {"n": 2, "priority": 1}, {"n": 3, "delay": 60_000})
    processor = Processor()
    async with intake(redis_url, processor) as worker:
        assert worker.fetch_next
        token = f"{worker.id}:1"
        job = await worker.getNextJob(token)
        assert job is not None and str(job.id) == first

        before = await script_calls(client)
        taken = await worker.processJob(job, token)
        # One script, one round trip: the completion took the next job (from the prioritized set).
        assert await script_calls(client) - before == 1
        completed = await queue.getJob(first)
        assert await completed.getState() == "completed"
        assert completed.returnvalue == {"done": 1}
        assert await client.exists(f"bull:{QUEUE}:{first}:lock") == 0

        assert isinstance(taken, Job)
        assert str(taken.id) == urgent and taken.token == token
        assert taken.data == {"n": 2, "priority": 1}
        assert await queue.getJobState(urgent) == "active"
        # Locked with the token of the job that completed: the one naming this pod.
        lock = await client.get(f"bull:{QUEUE}:{urgent}:lock")
        assert lock == token and lock.startswith(POD + LOCK_HOLDER_SEPARATOR)
        assert 0 < await client.pttl(f"bull:{QUEUE}:{urgent}:lock") <= 30_000
        # Decoded by the intake like a fetched job: the runtime's failed-job retention applies.
        assert taken.opts["removeOnFail"] == KEEP_FAILED

        # Nothing left to take but a delayed job: no job, and the worker waits until that one is due.
        assert await worker.processJob(taken, token) is None
        assert (await queue.getJob(urgent)).returnvalue == {"done": 2}
        assert worker.drained
        assert abs(worker.blockUntil - due) < 5_000
        assert await queue.getJobState(later) == "delayed"
    assert processor.seen == [(first, token), (urgent, token)]


async def test_a_completion_with_nothing_left_answers_no_job(redis_url: str, queue: Queue) -> None:
    (only,) = produce(redis_url, {"n": 1})
    async with intake(redis_url, Processor()) as worker:
        token = f"{worker.id}:1"
        job = await worker.getNextJob(token)
        # The script answers 0 here (moveToActive never does): no job, nothing delayed.
        assert await worker.processJob(job, token) is None
        assert worker.drained and worker.blockUntil == 0
    assert await queue.getJobState(only) == "completed"


async def test_with_fetch_next_off_a_completion_takes_no_job(redis_url: str, client: redis.Redis, queue: Queue) -> None:
    first, second = produce(redis_url, {"n": 1}, {"n": 2})
    async with intake(redis_url, Processor(), fetch_next=False) as worker:
        token = f"{worker.id}:1"
        job = await worker.getNextJob(token)
        before = await script_calls(client)
        assert await worker.processJob(job, token) is None
        assert await script_calls(client) - before == 1
    assert await queue.getJobState(first) == "completed"
    assert await queue.getJobState(second) == "waiting"


async def test_a_job_taken_as_the_worker_pauses_goes_back_to_the_queue_without_spending_an_attempt(
    redis_url: str, client: redis.Redis, queue: Queue
) -> None:
    first, second = produce(redis_url, {"n": 1}, {"n": 2})
    async with intake(redis_url, Processor()) as worker:
        token = f"{worker.id}:1"
        job = await worker.getNextJob(token)
        # Redis holds the completion (a script that writes) until the worker has paused.
        await client.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
        try:
            completing = asyncio.create_task(worker.processJob(job, token))
            await asyncio.sleep(0.3)
            assert not completing.done()
            await worker.pause(do_not_wait_active=True)
        finally:
            await client.execute_command("CLIENT", "UNPAUSE")
        assert await completing is None
    assert await queue.getJobState(first) == "completed"
    # The job the completion took is back, due at once, with no lock and no attempt spent.
    assert await queue.getJobState(second) in {"waiting", "delayed"}
    assert await client.exists(f"bull:{QUEUE}:{second}:lock") == 0
    assert (await queue.getJob(second)).attemptsMade == 0


class Payload(BaseModel):
    n: int


def payload_worker(
    redis_url: str, handle: Callable[[Payload, JobInfo], Awaitable[JobResult]], **options: Any
) -> QueueWorker:
    """``QueueWorker`` on ``QUEUE`` running ``handle`` for its ``task`` jobs, with the default queue settings."""
    return QueueWorker(
        QUEUE, {"task": Route(Payload, handle)}, redis_url=redis_url, settings=QueueSettings(), **options
    )


async def test_a_running_worker_takes_each_next_job_with_the_completion_of_the_last(
    redis_url: str, client: redis.Redis, queue: Queue
) -> None:
    """Through ``QueueWorker`` and bullmq's own run loop: one slot, one token, every job held in this pod's name."""
    ids = produce(redis_url, *({"n": n} for n in range(4)))
    locks: dict[str, str | None] = {}

    async def handle(payload: Payload, info: JobInfo) -> JobResult:
        locks[info.id] = await client.get(f"bull:{QUEUE}:{info.id}:lock")
        return {"done": payload.n}

    consumer = payload_worker(redis_url, handle, concurrency=1, holder=POD)
    await consumer.start()
    try:

        async def all_completed() -> bool:
            return [await queue.getJobState(job_id) for job_id in ids] == ["completed"] * len(ids)

        await eventually(all_completed, "every job completed")
    finally:
        await consumer.stop(5)
    assert [(await queue.getJob(job_id)).returnvalue for job_id in ids] == [{"done": n} for n in range(4)]
    assert list(locks) == ids
    # The first job came from a fetch; each of the others with the completion before it, under the same token.
    tokens = set(locks.values())
    assert len(tokens) == 1, locks
    token = tokens.pop()
    assert token is not None and token.startswith(POD + LOCK_HOLDER_SEPARATOR)


# -- one slot waits for all (``one_waiter``) ---------------------------------------------


async def command_calls(client: redis.Redis, command: str) -> int:
    """How many times Redis has run ``command`` (rejected and failed calls not counted)."""
    stat = (await client.info("commandstats")).get(f"cmdstat_{command}", {})
    return int(stat.get("calls", 0)) - int(stat.get("rejected_calls", 0)) - int(stat.get("failed_calls", 0))


async def test_a_take_says_how_many_jobs_are_left_and_clears_the_marker_once_none_are(
    redis_url: str, client: redis.Redis, queue: Queue
) -> None:
    first, second = produce(redis_url, {"n": 1}, {"n": 2, "priority": 1})
    marker = f"bull:{QUEUE}:marker"
    async with intake(redis_url, Processor(), fetch_next=False) as worker:
        assert worker.one_waiter
        job = await worker.getNextJob(f"{worker.id}:1")
        assert job is not None and str(job.id) == first
        # One left (in the prioritized set): bullmq's script set the marker again for it, and it stays.
        assert worker.left == 1 and not worker.drained
        assert await client.zscore(marker, "0") is not None

        job = await worker.getNextJob(f"{worker.id}:2")
        assert job is not None and str(job.id) == second
        # None left: the marker bullmq's script set again on taking it is gone, and the worker knows it is drained.
        assert worker.left == 0 and worker.drained and worker.blockUntil == 0
        assert await client.zscore(marker, "0") is None
    assert await queue.getJobState(first) == await queue.getJobState(second) == "active"


async def test_bullmq_sets_the_marker_again_on_every_take_even_with_nothing_left(
    redis_url: str, client: redis.Redis
) -> None:
    """What ``one_waiter`` corrects: with bullmq's own fetch the next slot to wait wakes at once, for nothing."""
    (only,) = produce(redis_url, {"n": 1})
    async with intake(redis_url, Processor(), fetch_next=False) as worker:
        worker.one_waiter = False
        job = await worker.getNextJob(f"{worker.id}:1")
        assert job is not None and str(job.id) == only
        assert await client.zscore(f"bull:{QUEUE}:marker", "0") is not None
        assert not worker.drained


async def test_with_nothing_left_but_a_delayed_job_the_worker_waits_until_it_is_due(
    redis_url: str, queue: Queue
) -> None:
    due = int(time.time() * 1000) + 60_000
    first, later = produce(redis_url, {"n": 1}, {"n": 2, "delay": 60_000})
    async with intake(redis_url, Processor(), fetch_next=False) as worker:
        job = await worker.getNextJob(f"{worker.id}:1")
        assert job is not None and str(job.id) == first
        assert worker.left == 0 and worker.drained
        assert abs(worker.blockUntil - due) < 5_000
    assert await queue.getJobState(later) == "delayed"


async def test_a_job_added_once_the_queue_is_drained_wakes_the_waiting_slot_at_once(
    redis_url: str, client: redis.Redis, queue: Queue
) -> None:
    first, *_ = produce(redis_url, {"n": 1})
    async with intake(redis_url, Processor(), fetch_next=False) as worker:
        assert await worker.getNextJob(f"{worker.id}:1") is not None
        assert worker.drained and await client.zscore(f"bull:{QUEUE}:marker", "0") is None
        waiting = asyncio.create_task(worker.getNextJob(f"{worker.id}:2"))
        await asyncio.sleep(0.3)
        assert not waiting.done() and worker.waiting is not None
        # A second free slot while one waits: it makes no call and takes nothing.
        scripts, blocks = await script_calls(client), await command_calls(client, "bzpopmin")
        assert await worker.getNextJob(f"{worker.id}:3") is None
        assert (await script_calls(client), await command_calls(client, "bzpopmin")) == (scripts, blocks)

        started = time.monotonic()
        (second,) = produce(redis_url, {"n": 2})
        job = await asyncio.wait_for(waiting, 5)
        # Woken by the producer's marker, well before the 5 s the worker would block for without it.
        assert job is not None and str(job.id) == second
        assert time.monotonic() - started < 3
    assert await queue.getJobState(first) == "active"


@pytest.mark.parametrize("one_waiter", [True, False], ids=["one waiter", "every free slot fetches"])
async def test_jobs_arriving_one_at_a_time_cost_one_wait_and_three_scripts_each(
    redis_url: str, client: redis.Redis, queue: Queue, one_waiter: bool
) -> None:
    """Concurrency 5 through ``QueueWorker``: per job one BZPOPMIN, and moveToActive, SETTLE, moveToFinished.

    With bullmq's fetch (``one_waiter`` off) the four other free slots each call moveToActive after every
    wake-up: the same jobs cost more than twice the scripts.
    """
    done: list[int] = []

    async def handle(payload: Payload, info: JobInfo) -> JobResult:
        done.append(payload.n)
        return {"done": payload.n}

    consumer = payload_worker(redis_url, handle, concurrency=5, one_waiter=one_waiter)
    await consumer.start()
    jobs = 6
    try:
        produce(redis_url, {"n": 0})  # the first: the slots find the queue drained after it
        await eventually(lambda: asyncio.sleep(0, len(done) == 1), "the first job done")
        await asyncio.sleep(0.3)
        scripts, blocks = await script_calls(client), await command_calls(client, "bzpopmin")
        for n in range(1, jobs + 1):
            produce(redis_url, {"n": n})
            await eventually(lambda n=n: asyncio.sleep(0, len(done) == n + 1), f"job {n} done")
            await asyncio.sleep(0.2)  # the worker settles: its slots idle, one waiting
        scripts = await script_calls(client) - scripts - jobs  # the producer's one script per add
        blocks = await command_calls(client, "bzpopmin") - blocks

        # A burst at an idle worker: every job is taken and done (slots beyond what is left wait, then fetch).
        ids = produce(redis_url, *({"n": n} for n in range(jobs + 1, jobs + 13)))

        async def burst_done() -> bool:
            return [await queue.getJobState(job_id) for job_id in ids] == ["completed"] * len(ids)

        await eventually(burst_done, "the burst done")
    finally:
        await consumer.stop(5)
    assert sorted(done) == list(range(jobs + 13))
    if one_waiter:
        assert scripts <= 3 * jobs, scripts
        assert blocks <= jobs + 1, blocks
    else:
        assert scripts >= 2 * 3 * jobs, scripts


async def test_a_pair_of_jobs_at_an_idle_worker_is_taken_by_two_fetches_the_other_slots_waiting(
    redis_url: str, client: redis.Redis, queue: Queue
) -> None:
    """Two jobs appear at once (a resumed queue): the woken slot takes one and learns one is left; one slot
    fetches it while the three others wait for that fetch, instead of all four asking Redis."""
    done: list[int] = []

    async def handle(payload: Payload, info: JobInfo) -> JobResult:
        await asyncio.sleep(0.2)  # both jobs are taken before either completes (a completion could take one)
        done.append(payload.n)
        return {"done": payload.n}

    consumer = payload_worker(redis_url, handle, concurrency=5)
    await consumer.start()
    try:
        await asyncio.sleep(0.5)  # the worker finds the queue empty; one slot waits on the marker
        await queue.pause()
        produce(redis_url, {"n": 1}, {"n": 2})
        scripts, blocks = await script_calls(client), await command_calls(client, "bzpopmin")
        await queue.resume()  # one script, here; both jobs become waiting at once, one marker
        await eventually(lambda: asyncio.sleep(0, len(done) == 2), "both jobs done")
        await asyncio.sleep(0.3)
        scripts = await script_calls(client) - scripts - 1
        blocks = await command_calls(client, "bzpopmin") - blocks
    finally:
        await consumer.stop(5)
    assert sorted(done) == [1, 2]
    # Two takes (moveToActive and SETTLE each) and two completions; one wake-up (the resume's marker).
    assert scripts == 6, scripts
    assert blocks == 1, blocks


async def test_a_take_loads_the_scripts_again_when_redis_has_lost_them(
    redis_url: str, client: redis.Redis, queue: Queue
) -> None:
    """A restarted (or flushed) Redis answers NOSCRIPT: the take loads both scripts and asks once more."""
    first, second = produce(redis_url, {"n": 1}, {"n": 2})
    async with intake(redis_url, Processor(), fetch_next=False) as worker:
        assert await worker.getNextJob(f"{worker.id}:1") is not None
        await client.script_flush()
        job = await worker.getNextJob(f"{worker.id}:2")
        assert job is not None and str(job.id) == second
        assert worker.left == 0 and worker.drained
    # Each job taken once: the first attempt (NOSCRIPT) took nothing.
    assert await queue.getJobState(first) == await queue.getJobState(second) == "active"
    assert await client.llen(f"bull:{QUEUE}:active") == 2
