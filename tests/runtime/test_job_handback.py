"""Jobs a worker gives up on: back to the queue at once, and the run given up on never commits.

A ``QueueWorker`` on real Redis with a small route whose handler the test
drives: it starts, waits for the test, then commits its result inside
``JobInfo.commit`` (as the crew worker stores and sends its reply). The
"result" is a row in a Redis list, so each test counts exactly how many
runs committed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as redis
from bullmq import Queue
from pydantic import BaseModel
from worker_harness import eventually

from falachefe_runtime.config import LOCK_HOLDER_SEPARATOR, QueueSettings
from falachefe_runtime.worker.routing import JobInfo, JobResult, Route
from falachefe_runtime.worker.runner import QueueWorker

QUEUE = "handback-test"
COMMITS = "handback-test:commits"


class Task(BaseModel):
    n: int
    #: "wait": until the test releases it; "stubborn": the same, and it ignores being cancelled;
    #: "slow-commit": waits for the test inside its commit.
    mode: str = "wait"


class Handler:
    """The route's handler: records each run, waits as its job says, then commits one row per run."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.started: list[int] = []
        self.release = asyncio.Event()

    async def __call__(self, task: Task, info: JobInfo) -> JobResult:
        self.started.append(task.n)
        if task.mode in {"wait", "stubborn"} and info.attempt == 1:
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                if task.mode != "stubborn":
                    raise
                # A run that keeps going (like a CrewAI thread): it still reaches its commit.
                await self.release.wait()
        async with info.commit():
            if task.mode == "slow-commit":
                await self.release.wait()
            await self.client.rpush(COMMITS, f"{task.n}:{info.attempt}")
        return {"n": task.n}


@pytest.fixture
async def queue(redis_url: str) -> AsyncIterator[Queue]:
    producer = Queue(QUEUE, {"connection": redis_url})
    yield producer
    await producer.close()


@contextlib.asynccontextmanager
async def worker(redis_url: str, handler: Handler, **options: Any) -> AsyncIterator[QueueWorker]:
    consumer = QueueWorker(
        QUEUE,
        {"task": Route(Task, handler)},
        redis_url=redis_url,
        concurrency=4,
        settings=QueueSettings(lock_duration_s=30, stalled_interval_s=30),
        **options,
    )
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop(5)


async def add(queue: Queue, n: int, mode: str = "wait", attempts: int = 1) -> str:
    job = await queue.add("task", {"n": n, "mode": mode}, {"attempts": attempts})
    return str(job.id)


async def started(handler: Handler, count: int) -> None:
    async def enough() -> bool:
        return len(handler.started) >= count

    await eventually(enough, f"{count} runs started")


async def test_jobs_running_when_the_grace_period_ends_go_back_to_the_queue_at_once_and_their_runs_never_commit(
    redis_url: str, client: redis.Redis, queue: Queue
) -> None:
    first = Handler(client)
    job_ids = [await add(queue, 0), await add(queue, 1, mode="stubborn")]
    async with worker(redis_url, first) as consumer:
        await started(first, 2)
        assert await consumer.stop(0.5) is False
        # Back in the queue before the worker has even returned: no lock left to expire, no attempt spent.
        for job_id in job_ids:
            assert await queue.getJobState(job_id) in {"waiting", "delayed"}
            assert await client.exists(f"bull:{QUEUE}:{job_id}:lock") == 0
            assert (await queue.getJob(job_id)).attemptsMade == 0
        # The stubborn run goes on after its job was given back; it reaches its commit, which refuses it.
        first.release.set()
        await asyncio.sleep(0.5)
        assert await client.lrange(COMMITS, 0, -1) == []

    second = Handler(client)
    second.release.set()
    async with worker(redis_url, second):

        async def completed() -> bool:
            return [await queue.getJobState(job_id) for job_id in job_ids] == ["completed", "completed"]

        await eventually(completed, "both jobs completed by the next worker")
    assert sorted(await client.lrange(COMMITS, 0, -1)) == ["0:1", "1:1"]


async def test_a_run_whose_lock_another_worker_took_over_cannot_commit(
    redis_url: str, client: redis.Redis, queue: Queue
) -> None:
    handler = Handler(client)
    job_id = await add(queue, 7)
    async with worker(redis_url, handler):
        await started(handler, 1)
        # What the stalled check and the next worker leave behind after this worker's lock lapsed.
        await client.set(f"bull:{QUEUE}:{job_id}:lock", "another-worker:1")
        handler.release.set()
        await asyncio.sleep(0.5)
        assert await client.lrange(COMMITS, 0, -1) == []
        # The job is the other worker's to finish: this one neither completed nor failed it.
        assert await queue.getJobState(job_id) == "active"
        await client.delete(f"bull:{QUEUE}:{job_id}:lock")


async def test_a_job_over_its_timeout_fails_and_its_retry_is_the_only_run_that_commits(
    redis_url: str, client: redis.Redis, queue: Queue
) -> None:
    handler = Handler(client)  # never released: the first attempt waits until the timeout ends it
    job_id = await add(queue, 3, attempts=2)
    async with worker(redis_url, handler, job_timeout_s=0.5):

        async def completed() -> bool:
            return await queue.getJobState(job_id) == "completed"

        await eventually(completed, "the retry completed")
    job = await queue.getJob(job_id)
    assert job.attemptsMade == 2
    assert "job_timeout_s (0.5s)" in str(job.stacktrace)
    assert await client.lrange(COMMITS, 0, -1) == ["3:2"]


async def test_a_run_committing_when_the_grace_period_ends_is_let_finish(
    redis_url: str, client: redis.Redis, queue: Queue
) -> None:
    handler = Handler(client)
    job_id = await add(queue, 5, mode="slow-commit")
    async with worker(redis_url, handler) as consumer:
        await started(handler, 1)
        stopping = asyncio.create_task(consumer.stop(0.3))
        await asyncio.sleep(1.0)  # past the grace period, inside the give-back time
        handler.release.set()
        await stopping
    assert await queue.getJobState(job_id) == "completed"
    assert await client.lrange(COMMITS, 0, -1) == ["5:1"]


async def test_lock_tokens_name_the_pod_holding_the_job(redis_url: str, client: redis.Redis, queue: Queue) -> None:
    handler = Handler(client)
    job_id = await add(queue, 1)
    async with worker(redis_url, handler, holder="app-crew-5d9f-x2x7z"):
        await started(handler, 1)
        token = await client.get(f"bull:{QUEUE}:{job_id}:lock")
        assert token is not None and token.startswith("app-crew-5d9f-x2x7z" + LOCK_HOLDER_SEPARATOR), token
        handler.release.set()
