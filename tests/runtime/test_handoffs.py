"""Jobs a handler hands off are added with its job's completion, in the same round trip, and never lost.

On real Redis through ``QueueWorker`` and bullmq's run loop. The hand-off
added with the completion must be the job ``Queues.enqueue`` adds (same
stored fields), and every path that cannot go in the completion's pipeline
(a priority, a script Redis lost, a refusal) still ends with the hand-off in
its queue or the job run again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import redis.asyncio as redis
from bullmq import Queue
from pydantic import BaseModel
from worker_harness import eventually

from falachefe_runtime.config import QueueSettings
from falachefe_runtime.queues import Queues
from falachefe_runtime.worker.routing import JobInfo, JobResult, Route
from falachefe_runtime.worker.runner import QueueWorker

SOURCE = "handoff-source"
TARGET = "handoff-target"


class Payload(BaseModel):
    n: int


def handing_off(queues: Queues, runs: list[int], **prepare: Any) -> Route[Payload]:
    async def handle(payload: Payload, info: JobInfo) -> JobResult:
        runs.append(payload.n)
        handed = info.hand_off(
            queues.prepare(TARGET, "next", {"from": payload.n}, job_id=f"next-{payload.n}", **prepare)
        )
        return {"handed": handed}

    return Route(Payload, handle)


async def running(redis_url: str, route: Route[Payload], **options: Any) -> QueueWorker:
    worker = QueueWorker(
        SOURCE, {"task": route}, redis_url=redis_url, concurrency=2, settings=QueueSettings(), **options
    )
    await worker.start()
    return worker


async def completed(source: Queue, job_id: str) -> Any:
    async def done() -> Any:
        job = await source.getJob(job_id)
        return job if job is not None and await job.getState() == "completed" else None

    return await eventually(done, f"job {job_id} completed")


def stored(fields: dict[str, str]) -> dict[str, str]:
    """A job's hash without what differs from one add to the next (its time)."""
    return {key: value for key, value in fields.items() if key not in {"timestamp"}}


@pytest.mark.parametrize("batch", [True, False], ids=["with-completion", "on-its-own"])
async def test_a_hand_off_is_the_job_enqueue_adds(
    redis_url: str, queues: Queues, client: redis.Redis, batch: bool
) -> None:
    runs: list[int] = []
    worker = await running(redis_url, handing_off(queues, runs), batch_handoffs=batch)
    try:
        ids = [await queues.enqueue(SOURCE, "task", {"n": n}, job_id=f"task-{n}") for n in range(5)]
        for job_id in ids:
            job = await completed(queues.queue(SOURCE), job_id)
            assert job.returnvalue == {"handed": f"next-{job_id.removeprefix('task-')}"}
    finally:
        await worker.stop(grace_s=5)
    assert sorted(runs) == list(range(5))
    assert (await queues.counts(TARGET))["wait"] == 5
    # The same job enqueued directly, for comparison.
    handed = await client.hgetall(f"bull:{TARGET}:next-1")
    await client.delete(f"bull:{TARGET}:next-1")
    await queues.enqueue(TARGET, "next", {"from": 1}, job_id="next-1")
    direct = await client.hgetall(f"bull:{TARGET}:next-1")
    assert stored(handed) == stored(direct)
    assert handed["data"] == '{"from":1}' and handed["name"] == "next"


async def test_a_handler_that_raises_hands_nothing_off(redis_url: str, queues: Queues) -> None:
    async def handle(payload: Payload, info: JobInfo) -> JobResult:
        info.hand_off(queues.prepare(TARGET, "next", {"from": payload.n}, job_id=f"next-{payload.n}"))
        raise RuntimeError("after handing off")

    worker = await running(redis_url, Route(Payload, handle))
    try:
        job_id = await queues.enqueue(SOURCE, "task", {"n": 1}, job_id="task-raises")

        async def failed() -> bool:
            job = await queues.queue(SOURCE).getJob(job_id)
            return job is not None and job.attemptsMade >= 1 and await job.getState() in {"failed", "delayed"}

        await eventually(failed, "the job failed its first attempt")
    finally:
        await worker.stop(grace_s=5)
    assert await queues.queue(TARGET).getJob("next-1") is None


async def test_a_hand_off_with_a_priority_is_added_before_completing(redis_url: str, queues: Queues) -> None:
    runs: list[int] = []
    worker = await running(redis_url, handing_off(queues, runs, priority=5))
    try:
        await completed(queues.queue(SOURCE), await queues.enqueue(SOURCE, "task", {"n": 7}, job_id="task-7"))
    finally:
        await worker.stop(grace_s=5)
    assert (await queues.counts(TARGET))["prioritized"] == 1


async def test_a_hand_off_needs_an_id_of_its_own(queues: Queues) -> None:
    info = JobInfo(id="1", name="task", queue=SOURCE, attempt=1, max_attempts=1)
    with pytest.raises(ValueError, match="id of its own"):
        info.hand_off(queues.prepare(TARGET, "next", {"from": 1}))


async def test_scripts_redis_lost_are_loaded_and_the_hand_off_still_added(
    redis_url: str, queues: Queues, client: redis.Redis
) -> None:
    gate = asyncio.Event()
    released = asyncio.Event()

    async def handle(payload: Payload, info: JobInfo) -> JobResult:
        gate.set()
        await released.wait()
        return {"handed": info.hand_off(queues.prepare(TARGET, "next", {"from": payload.n}, job_id="next-flush"))}

    worker = await running(redis_url, Route(Payload, handle))
    try:
        job_id = await queues.enqueue(SOURCE, "task", {"n": 3}, job_id="task-flush")
        await asyncio.wait_for(gate.wait(), 30)
        await client.script_flush()  # as a restarted Redis would have lost them
        released.set()
        await completed(queues.queue(SOURCE), job_id)
    finally:
        await worker.stop(grace_s=5)
    assert await queues.queue(TARGET).getJob("next-flush") is not None


async def test_a_refused_hand_off_runs_its_job_again_and_is_logged_when_attempts_run_out(
    redis_url: str, queues: Queues, client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # The target queue's meta key of the wrong type: bullmq's addStandardJob is refused (WRONGTYPE),
    # in the pipeline and on its own, while the completion of the source job is not.
    await client.set(f"bull:{TARGET}:meta", "not a hash")
    runs: list[int] = []
    worker = await running(redis_url, handing_off(queues, runs))
    caplog.set_level(logging.WARNING, logger="falachefe_runtime.worker.fetch_next")
    try:
        job_id = (await queues.queue(SOURCE).add("task", {"n": 9}, {"jobId": "task-refused", "attempts": 3})).id

        async def ran_out() -> bool:
            return any("no attempts left" in record.getMessage() for record in caplog.records)

        await eventually(ran_out, "the last attempt's refusal logged")
    finally:
        await worker.stop(grace_s=5)
    assert runs == [9, 9, 9]  # ran again after each refusal, while attempts were left
    job = await queues.queue(SOURCE).getJob(job_id)
    assert job is not None and await job.getState() == "completed"
    refusals = [
        record
        for record in caplog.records
        if record.levelno == logging.ERROR and record.name == "falachefe_runtime.worker.fetch_next"
    ]
    assert [getattr(record, "handoff_id", None) for record in refusals] == ["next-9"] * 3


async def test_only_plain_hand_offs_for_the_same_redis_go_with_the_completion(redis_url: str, queues: Queues) -> None:
    elsewhere = Queues(redis_url.rsplit("/", 1)[0] + "/0")  # the same server, another database
    worker = await running(redis_url, handing_off(queues, []))
    try:
        intake = worker._worker
        assert intake is not None
        assert intake.with_completion("plain", [queues.prepare(TARGET, "next", {}, job_id="n-plain")])
        assert not intake.with_completion("prio", [queues.prepare(TARGET, "next", {}, job_id="n-p", priority=5)])
        assert not intake.with_completion("later", [queues.prepare(TARGET, "next", {}, job_id="n-d", delay_ms=50)])
        assert not intake.with_completion("other", [elsewhere.prepare(TARGET, "next", {}, job_id="n-other")])
        mixed = [queues.prepare(TARGET, "next", {}, job_id="n-a"), elsewhere.prepare(TARGET, "next", {}, job_id="n-b")]
        assert not intake.with_completion("mixed", mixed)
    finally:
        await worker.stop(grace_s=5)
        await elsewhere.close()
