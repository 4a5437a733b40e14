"""``FastWire`` sends the bytes redis-py would, keeps the read timeout, and survives a dropped connection.

Against real Redis, and, for the timeouts, a TCP server the test runs that
accepts connections and never answers (or never reads).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as redis
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.connection import Connection
from redis.exceptions import DataError
from redis.exceptions import TimeoutError as RedisTimeoutError

from falachefe_runtime.config import QueueSettings
from falachefe_runtime.queues import Queues
from falachefe_runtime.redis_wire import FastWire, fast_connection_class, use_fast_wire
from falachefe_runtime.worker.runner import QueueWorker

FastConnection = fast_connection_class(Connection)

_arguments = st.one_of(
    st.text(),
    st.binary(),
    st.integers(min_value=-(2**63), max_value=2**64),
    st.floats(allow_nan=True, allow_infinity=True),
)


def _both(*args: Any, **kwargs: Any) -> tuple[bytes, bytes]:
    """The bytes redis-py's packer and ``FastWire``'s give for one command."""
    plain = Connection(**kwargs).pack_command(*args)
    fast = FastConnection(**kwargs).pack_command(*args)
    return b"".join(plain), b"".join(fast)


@given(st.sampled_from(["SET", b"EVALSHA", "CONFIG GET", b"CLIENT SETNAME"]), st.lists(_arguments, max_size=30))
def test_packs_the_same_bytes_as_redis_py(command: str | bytes, arguments: list[Any]) -> None:
    plain, fast = _both(command, *arguments)
    assert fast == plain


def test_a_large_value_is_packed_the_same() -> None:
    plain, fast = _both("SET", "key", b"x" * 100_000, "tail" * 5000)
    assert fast == plain


def test_values_hiredis_does_not_pack_go_to_redis_py() -> None:
    # A memoryview redis-py sends as is; a bool it refuses, with its own error.
    plain, fast = _both("SET", "key", memoryview(b"value"))
    assert fast == plain
    with pytest.raises(DataError):
        FastConnection().pack_command("SET", "key", True)
    with pytest.raises(DataError):
        FastConnection().pack_command("SET", "key", None)


def test_an_encoding_other_than_utf8_is_redis_pys() -> None:
    plain, fast = _both("SET", "clé", "café", encoding="latin-1")
    assert fast == plain
    assert "café".encode("latin-1") in fast


def test_one_class_per_base_and_no_double_wrapping() -> None:
    assert fast_connection_class(Connection) is FastConnection
    assert fast_connection_class(FastConnection) is FastConnection
    assert issubclass(FastConnection, FastWire) and issubclass(FastConnection, Connection)


@pytest.fixture
async def fast_client(redis_url: str) -> AsyncIterator[redis.Redis]:
    """A client on ``FastWire`` connections with the runtime's socket timeout (replies as bytes)."""
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    use_fast_wire(client)
    yield client
    await client.aclose()


async def test_commands_and_pipelines_round_trip(fast_client: redis.Redis) -> None:
    assert await fast_client.set("greeting", "olá") is True
    assert await fast_client.get("greeting") == "olá".encode()
    big = b"y" * 500_000  # above the transport's high-water mark: redis-py's own send
    await fast_client.set("big", big)
    assert await fast_client.get("big") == big
    async with fast_client.pipeline(transaction=True) as pipe:
        pipe.incr("n").incr("n").get("n")
        assert await pipe.execute() == [1, 2, b"2"]
    assert fast_client.connection_pool.connection_class is FastConnection


async def test_a_dropped_connection_is_retried(redis_url: str) -> None:
    """The producer's bullmq client (retries on connection errors) reconnects after its connection is killed."""
    queues = Queues(redis_url)
    admin = redis.Redis.from_url(redis_url)
    try:
        await queues.enqueue("wire-drop", "process-message", {"n": 1})
        producer = queues.queue("wire-drop").client
        assert issubclass(producer.connection_pool.connection_class, FastWire)
        assert await admin.client_kill_filter(_id=await producer.client_id()) == 1
        await queues.enqueue("wire-drop", "process-message", {"n": 2})
        assert (await queues.counts("wire-drop", ("waiting",)))["waiting"] == 2
    finally:
        await admin.aclose()
        await queues.close()


@pytest.fixture
def silent_server() -> Iterator[int]:
    """The port of a TCP server that neither answers nor reads (the kernel completes the handshakes)."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=8)
    yield listener.getsockname()[1]
    listener.close()


async def test_a_server_that_does_not_answer_times_out_the_read(silent_server: int) -> None:
    port = silent_server
    connection = FastConnection(host="127.0.0.1", port=port, socket_timeout=0.5, driver_info=None, protocol=2)
    await connection.connect()
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await connection.send_command("PING")  # fits the buffer: sent without a timer
        with pytest.raises(RedisTimeoutError):
            await connection.read_response()
        assert 0.4 < loop.time() - started < 3
    finally:
        await connection.disconnect()


async def test_a_peer_that_stops_reading_times_out_the_write(silent_server: int) -> None:
    port = silent_server
    connection = FastConnection(host="127.0.0.1", port=port, socket_timeout=0.5, driver_info=None, protocol=2)
    await connection.connect()
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(RedisTimeoutError):
            # Small commands, sent without a timer while they fit, until the kernel's buffers are full
            # and the transport's own reaches its high-water mark: then redis-py's send, with its timeout.
            for _ in range(5000):
                await connection.send_command("SET", "key", b"z" * 10_000)
        assert loop.time() - started < 10
    finally:
        await connection.disconnect()


async def test_the_workers_and_producers_clients_use_it(redis_url: str) -> None:
    queues = Queues(redis_url)
    worker = QueueWorker("wire-test", {}, redis_url=redis_url, concurrency=1, settings=QueueSettings())
    await worker.start()
    try:
        job_id = await queues.enqueue("wire-test-out", "process-message", {"n": 1})
        assert job_id
        clients = [
            worker._worker.client,
            worker._worker.bclient,
            worker._control.client,
            queues.queue("wire-test-out").client,
        ]  # type: ignore[union-attr]
        for each in clients:
            assert issubclass(each.connection_pool.connection_class, FastWire)
    finally:
        await worker.stop(grace_s=5)
        await queues.close()
