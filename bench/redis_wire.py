"""What ``redis_wire.FastWire`` saves: client CPU per Redis request, redis-py's connections against it.

Run from the repository root::

    PYTHONPATH=scripts .venv/bin/python -m bench.redis_wire [--requests N] [--rounds K]

It starts its own Redis and measures this process's CPU time (uvloop and
hiredis, as in production; clients with the runtime's 5 s socket timeout)
per request, for two shapes the runtime sends:

- ``enqueue``: ``Queues.enqueue`` of a ``process-crew`` job with a
  deterministic id (bullmq's ``addStandardJob`` script, one round trip; the
  producer's path);
- ``pipeline``: two ``EVALSHA`` in one pipeline with the keys and arguments
  of a worker's completion and its hand-off (the shape the auth worker sends
  per job), calling a script that does nothing, so Redis's own time is
  not in the figure.

``plain`` is the same client on redis-py's own connections; ``untimed`` is
that without a socket timeout, redis-py at its cheapest (no timer on writes
or reads, so no protection against a server that stops answering). The
three take turns, every other round in reverse order. It prints the median
CPU per request and FastWire's ratio to each, the median of the rounds'
ratios.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgpack  # type: ignore[import-untyped]
import redis.asyncio as redis
import uvloop

from bench.handoff_batching import crew_data
from falachefe_devstack.redis import RedisServer
from falachefe_runtime import redis_wire
from falachefe_runtime.payloads import PROCESS_CREW
from falachefe_runtime.queues import CREW_QUEUE, Queues, with_socket_timeout

SOCKET_TIMEOUT_S = 5.0
_fast = redis_wire.fast_connection_class


def wire(fast: bool) -> None:
    """Make the clients built from now on use ``FastWire`` (``fast``) or redis-py's own connections."""
    redis_wire.fast_connection_class = _fast if fast else (lambda base: base)


def untimed(client: redis.Redis, way: str) -> None:
    """For ``untimed``: the client's connections get no socket timeout (before its first command)."""
    if way == "untimed":
        client.connection_pool.connection_kwargs["socket_timeout"] = None


async def enqueue(redis_url: str, requests: int, tag: str, way: str) -> float:
    queues = Queues(redis_url, socket_timeout_s=SOCKET_TIMEOUT_S)
    untimed(queues.queue(CREW_QUEUE).client, way)
    data = crew_data()
    try:
        await queues.enqueue(CREW_QUEUE, PROCESS_CREW, data, job_id=f"warm-{tag}")
        started = time.process_time()
        for n in range(requests):
            await queues.enqueue(CREW_QUEUE, PROCESS_CREW, data, job_id=f"bench-{tag}-{n}")
        return 1000 * (time.process_time() - started) / requests
    finally:
        await queues.queue(CREW_QUEUE).obliterate(force=True)
        await queues.close()


async def pipeline(redis_url: str, requests: int, tag: str, way: str) -> float:
    del tag
    client = redis.Redis.from_url(
        with_socket_timeout(redis_url, SOCKET_TIMEOUT_S), decode_responses=True, single_connection_client=True
    )
    redis_wire.use_fast_wire(client)
    untimed(client, way)
    try:
        sha = await client.script_load("return 1")
        finish_keys = [f"bull:process-message:{k}" for k in range(14)]
        finish_args = [
            "1234",
            int(time.time() * 1000),
            "returnvalue",
            '{"outcome":"authorized","sessionId":"' + str(uuid.uuid4()) + '","crewJobId":"c-1","duplicate":false}',
            "completed",
            "1",
            "bull:process-message:",
            msgpack.packb({"token": "pod/abc:1", "keepJobs": {"count": 100}, "lockDuration": 30000}),
        ]
        add_keys = [f"bull:crewai-processing:{k}" for k in range(9)]
        add_args = [
            msgpack.packb(["bull:crewai-processing:", "c-1", PROCESS_CREW, int(time.time() * 1000), None]),
            str(crew_data()),
            msgpack.packb({"attempts": 3, "removeOnComplete": 100}),
            int(time.time() * 1000),
        ]
        started = time.process_time()
        for _ in range(requests):
            pipe = client.pipeline(transaction=False)
            pipe.evalsha(sha, len(add_keys), *add_keys, *add_args)
            pipe.evalsha(sha, len(finish_keys), *finish_keys, *finish_args)
            await pipe.execute(raise_on_error=False)
        return 1000 * (time.process_time() - started) / requests
    finally:
        await client.aclose()


SHAPES: dict[str, Callable[[str, int, str, str], Awaitable[float]]] = {"enqueue": enqueue, "pipeline": pipeline}
#: ``plain``: redis-py's connections with the runtime's socket timeout; ``untimed``: the same without any
#: timeout (redis-py at its cheapest, no write timer and no read timer); ``fast``: FastWire, with the timeout.
WAYS = ("plain", "untimed", "fast")


async def measure(redis_url: str, requests: int, rounds: int) -> None:
    cpu: dict[tuple[str, str], list[float]] = {(s, w): [] for s in SHAPES for w in WAYS}
    for index in range(rounds):
        for shape, run in SHAPES.items():
            for way in WAYS if index % 2 == 0 else reversed(WAYS):
                wire(way == "fast")
                cpu[shape, way].append(await run(redis_url, requests, f"{index}-{way}", way))
    wire(True)
    print(f"{requests} requests per round, median of {rounds} rounds (Redis local; uvloop, hiredis)")
    print(f"{'shape':10} {'plain us':>9} {'untimed us':>11} {'fast us':>8}  fast / plain  fast / untimed")
    for shape in SHAPES:
        plain, bare, fast = (cpu[shape, way] for way in WAYS)

        def ratio(over: list[float], fast: list[float] = fast) -> float:
            return statistics.median(f / o for f, o in zip(fast, over, strict=True))

        medians = (1000 * statistics.median(values) for values in (plain, bare, fast))
        print(f"{shape:10} {next(medians):9.1f} {next(medians):11.1f} {next(medians):8.1f}", end="")
        print(f"  {ratio(plain):11.2f}x {ratio(bare):13.2f}x")
    print("ratios: medians of the rounds' ratios")
    print("per round, us:", {f"{s} {w}": [round(1000 * v, 1) for v in vs] for (s, w), vs in cpu.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=6)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-wire-") as workdir:
        server = RedisServer(Path(workdir) / "redis").start()
        try:
            uvloop.run(measure(server.url(0), arguments.requests, arguments.rounds))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
