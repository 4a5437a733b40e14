"""Queue counts read from a real Redis, with jobs put there by the real bullmq (Python and Node)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import redis.asyncio as aioredis
from bullmq import Queue, Worker

from falachefe_devstack.process import free_port
from falachefe_devstack.waiting import async_wait_for
from falachefe_operator.scaling.observation import MetricUnavailable, QueueCounts
from falachefe_operator.scaling.queue import QueueReader, QueueRef

NODE_DIR = Path(__file__).resolve().parents[1] / "node"


async def counts(reader: QueueReader, ref: QueueRef, now_ms: int | None = None) -> QueueCounts:
    result = await reader.read(ref, now_ms)
    assert isinstance(result, QueueCounts), result
    return result


async def test_counts_by_state_match_bullmq(redis_url: str) -> None:
    ref = QueueRef("whatsapp-processing", redis_url)
    queue = Queue(ref.name, {"connection": redis_url})
    reader = QueueReader()
    release = asyncio.Event()
    worker: Worker | None = None
    try:
        for index in range(3):
            await queue.add("plain", {"n": index})
        for index in range(2):
            await queue.add("urgent", {"n": index}, {"priority": 1 + index})
        for index in range(4):
            await queue.add("later", {"n": index}, {"delay": 3_600_000})
        for index in range(2):
            await queue.add("soon", {"n": index}, {"delay": 300})

        now = await counts(reader, ref)
        assert (now.waiting, now.prioritized, now.delayed_due, now.delayed_pending, now.active) == (3, 2, 0, 6, 0)
        assert now.added_total == 11
        assert now.backlog == 5
        assert now.in_system == 11
        assert not now.paused

        # Delayed jobs count as backlog once due, even before a worker promotes them.
        due = await async_wait_for(
            lambda: _due(reader, ref), timeout=10, interval=0.05, what="the short-delayed jobs to be due"
        )
        assert (due.delayed_due, due.delayed_pending, due.backlog) == (2, 4, 7)
        in_an_hour = await counts(reader, ref, now_ms=int(time.time() * 1000) + 3_700_000)
        assert in_an_hour.delayed_due == 6

        # bullmq agrees with us on the states it knows.
        theirs = await queue.getJobCounts("wait", "prioritized", "delayed", "active")
        assert theirs == {"wait": 3, "prioritized": 2, "delayed": 6, "active": 0}

        # A worker takes two jobs and holds them: they are active, still backlog.
        async def hold(job, token):
            await release.wait()

        worker = Worker(ref.name, hold, {"connection": redis_url, "concurrency": 2})
        busy = await async_wait_for(lambda: _active(reader, ref, 2), timeout=20, what="two active jobs")
        assert busy.backlog == 7
        assert busy.delayed_pending == 4

        await queue.pause()
        assert (await counts(reader, ref)).paused
        await queue.resume()
        assert not (await counts(reader, ref)).paused
    finally:
        release.set()
        if worker is not None:
            await worker.close()
        await queue.close()
        await reader.aclose()


async def test_node_bullmq_producer_and_a_custom_prefix(redis_url: str) -> None:
    """The original app's producer (Node bullmq 6) under another prefix: same keys, same counts."""
    jobs = [{"queue": "crewai-processing", "name": "crew", "data": {"n": n}} for n in range(5)]
    jobs += [{"queue": "crewai-processing", "name": "vip", "data": {"n": 9, "priority": 1}}]
    jobs += [{"queue": "crewai-processing", "name": "later", "data": {"n": 10, "delay": 600_000}}]
    request = json.dumps({"redis": redis_url, "prefix": "falachefe", "jobs": jobs})
    answer = await asyncio.to_thread(
        subprocess.run,
        ["node", str(NODE_DIR / "bullmq.mjs"), "add"],
        input=request,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert len(json.loads(answer.stdout)["ids"]) == 7
    reader = QueueReader()
    try:
        node = await counts(reader, QueueRef("crewai-processing", redis_url, prefix="falachefe"))
        assert (node.waiting, node.prioritized, node.delayed_due, node.delayed_pending) == (5, 1, 0, 1)
        assert node.added_total == 7
        # Nothing under the default prefix.
        assert (await counts(reader, QueueRef("crewai-processing", redis_url))).in_system == 0
    finally:
        await reader.aclose()


async def test_redis_down_is_reported_without_the_password() -> None:
    port = free_port()  # nothing listens there
    reader = QueueReader(timeout_seconds=1.0)
    try:
        started = time.monotonic()
        result = await reader.read(QueueRef("admin-tasks", f"redis://:s3cret@127.0.0.1:{port}/4"))
        assert isinstance(result, MetricUnavailable)
        assert result.source == "queue"
        assert f"redis 127.0.0.1:{port}/4 queue bull:admin-tasks:" in result.message
        assert "s3cret" not in result.message
        assert "s3cret" not in repr(QueueRef("admin-tasks", f"redis://:s3cret@127.0.0.1:{port}/4"))
        assert time.monotonic() - started < 10  # reported, not waited on
        assert result.public_cause == "cannot connect to Redis"
    finally:
        await reader.aclose()


async def test_the_cause_for_events_quotes_nothing_of_the_url() -> None:
    """A password holding an unescaped / or # breaks the URL's parsing, and redis-py quotes the pieces."""
    reader = QueueReader(timeout_seconds=1.0)
    try:
        for url in (
            f"redis://:pa55/w0rd@127.0.0.1:{free_port()}/0",  # "pa55" parses as a port, "w0rd@..." as the db
            f"redis://:1234/hunter2@127.0.0.1:{free_port()}/0",  # 1234 is a valid port: "hunter2@..." is the db
            f"redis://:p#ss@127.0.0.1:{free_port()}/0",
        ):
            result = await reader.read(QueueRef("admin-tasks", url))
            assert isinstance(result, MetricUnavailable), url
            assert result.cause in {"the Redis URL is malformed", "cannot connect to Redis"}, (url, result.cause)
            for fragment in ("pa55", "w0rd", "1234", "hunter2", "p#ss", "127.0.0.1"):
                assert fragment not in result.public_cause
    finally:
        await reader.aclose()


async def _due(reader: QueueReader, ref: QueueRef) -> QueueCounts | None:
    current = await counts(reader, ref)
    return current if current.delayed_due == 2 else None


async def _active(reader: QueueReader, ref: QueueRef, expected: int) -> QueueCounts | None:
    current = await counts(reader, ref)
    return current if current.active == expected else None


async def test_pools_read_together_share_one_round_trip_and_few_connections(redis_url: str) -> None:
    """Fifty queues of one Redis read at once: one script call (Redis counts the commands it runs inside too)."""
    refs = [QueueRef(f"batched-{index}", redis_url) for index in range(50)]
    admin = aioredis.Redis.from_url(redis_url)
    reader = QueueReader()

    async def calls() -> dict[str, int]:
        stats = await admin.info("commandstats")
        return {name: stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "eval", "multi", "exec")}

    try:
        for index, ref in enumerate(refs):
            if index:
                await admin.rpush(f"bull:{ref.name}:wait", *range(index))
        await reader.read(QueueRef("warm-up", redis_url))  # the script is loaded on first use
        before = await calls()
        clients_before = (await admin.info("clients"))["connected_clients"]
        results = await asyncio.gather(*(reader.read(ref) for ref in refs))
        after = await calls()
        clients_after = (await admin.info("clients"))["connected_clients"]
        assert [r.waiting if isinstance(r, QueueCounts) else r for r in results] == list(range(50))
        assert {name: after[name] - before[name] for name in after} == {"evalsha": 1, "eval": 0, "multi": 0, "exec": 0}
        assert clients_after - clients_before == 0  # the warm-up's connection, reused
    finally:
        await reader.aclose()
        await admin.aclose()


async def test_a_redis_that_lost_the_script_is_read_all_the_same(redis_url: str) -> None:
    """SCRIPT FLUSH (as a restart without persistence does): the next read loads it again."""
    admin = aioredis.Redis.from_url(redis_url)
    reader = QueueReader()
    ref = QueueRef("flushed", redis_url)
    try:
        await admin.rpush("bull:flushed:wait", 1, 2)
        assert isinstance(await reader.read(ref), QueueCounts)
        await admin.script_flush()
        counts = await reader.read(ref)
        assert isinstance(counts, QueueCounts) and counts.waiting == 2
    finally:
        await reader.aclose()
        await admin.aclose()


async def test_closing_answers_the_reads_still_in_their_batch_window(redis_url: str) -> None:
    reader = QueueReader(batch_window_seconds=60.0)
    read = asyncio.ensure_future(reader.read(QueueRef("closing", redis_url)))
    await asyncio.sleep(0.05)
    assert not read.done()  # waiting for its window
    started = time.monotonic()
    await reader.aclose()
    assert isinstance(await read, QueueCounts)
    assert time.monotonic() - started < 5
