"""A starved event loop is not a silent peer: the operator's timeouts charge only the time it could listen."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from falachefe_operator.scaling.deadline import responsive_timeout
from falachefe_operator.scaling.observation import MetricUnavailable, QueueCounts
from falachefe_operator.scaling.queue import QueueReader, QueueRef


def stall(seconds: float) -> None:
    """Block the event loop, as a CPU-starved process or a burst of synchronous work does."""
    time.sleep(seconds)


async def test_a_loop_stall_longer_than_the_timeout_does_not_expire_it() -> None:
    loop = asyncio.get_running_loop()
    # Control: the wall-clock timeout takes the stall for the peer's silence.
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            loop.call_soon(stall, 1.5)
            await asyncio.sleep(0.05)
    async with responsive_timeout(0.5) as charged:
        loop.call_soon(stall, 1.5)
        await asyncio.sleep(0.05)
    assert charged.wall_seconds >= 1.5
    assert charged.charged_seconds <= 0.5 + 1e-6


async def test_a_silent_peer_is_still_found_in_time() -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with responsive_timeout(0.5):
            await asyncio.sleep(30)
    assert 0.45 <= time.monotonic() - started < 1.5


async def test_repeated_stalls_are_charged_a_tick_each() -> None:
    """A loop that keeps stalling still reaches the deadline: each late tick counts twice the tick, no more."""
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with responsive_timeout(1.0, tick=0.1) as charged:
            for _ in range(100):
                loop.call_soon(stall, 0.5)
                await asyncio.sleep(0.01)
    # Each 0.5 s stall is charged 0.2 s: the deadline falls after about five of them.
    assert 2.0 <= time.monotonic() - started < 5.0
    assert charged.stalled_seconds > 1.0


async def test_a_starved_reader_reports_counts_not_an_outage(redis_url: str) -> None:
    admin = aioredis.Redis.from_url(redis_url)
    reader = QueueReader(timeout_seconds=0.5)
    ref = QueueRef("starved-reader", redis_url)
    try:
        await admin.rpush(f"bull:{ref.name}:wait", "1", "2")
        assert isinstance(await reader.read(ref), QueueCounts)  # connected before the stall
        read = asyncio.ensure_future(reader.read(ref))
        await asyncio.sleep(0.02)  # the MULTI/EXEC is on the wire, its reply on its way
        stall(1.5)
        result = await read
        assert isinstance(result, QueueCounts), result
        assert result.waiting == 2
    finally:
        await reader.aclose()
        await admin.aclose()


async def test_a_redis_that_accepts_and_never_answers_is_reported_down() -> None:
    connections: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)  # holds the connection open and says nothing

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader = QueueReader(timeout_seconds=0.5)
    try:
        started = time.monotonic()
        result = await reader.read(QueueRef("silent", f"redis://127.0.0.1:{port}/0"))
        assert isinstance(result, MetricUnavailable), result
        assert result.cause == "Redis did not answer within 0.5s"
        assert time.monotonic() - started < 3
        assert connections  # it did connect: the silence is Redis's, not a refused connection
    finally:
        await reader.aclose()
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_slow_redis_gets_fewer_larger_round_trips(redis_url: str) -> None:
    """While every connection waits for a paused Redis, later reads join one batch instead of queueing."""
    admin = aioredis.Redis.from_url(redis_url)
    reader = QueueReader(batch_window_seconds=0.01)
    refs = [QueueRef(f"slow-{index}", redis_url) for index in range(20)]
    try:
        assert isinstance(await reader.read(refs[0]), QueueCounts)
        before = (await admin.info("commandstats")).get("cmdstat_exec", {}).get("calls", 0)
        await admin.execute_command("CLIENT", "PAUSE", "1000", "ALL")

        async def read_later(index: int, ref: QueueRef) -> QueueCounts | MetricUnavailable:
            await asyncio.sleep(0.03 * index)  # each read in a window of its own
            return await reader.read(ref)

        results = await asyncio.gather(*(read_later(index, ref) for index, ref in enumerate(refs)))
        after = (await admin.info("commandstats")).get("cmdstat_exec", {}).get("calls", 0)
        assert all(isinstance(result, QueueCounts) for result in results), results
        # Four round trips wait out the pause (one per connection); the other 16 reads share the next one or two.
        assert after - before <= 6, after - before
    finally:
        await reader.aclose()
        await admin.aclose()
