"""The operator's queue reads: CPU per read and its wait, by batch window (``QueueReader``).

Run from the repository root::

    .venv/bin/python -m bench queue_reads [--queues N] [--interval S] [--rounds K]

It starts its own Redis, puts a few jobs on N bullmq queues and reads them
as the operator's pools do at idle: each queue once per interval, the reads
spread evenly over it (400 queues every 5 s: 200 resources, two pools each,
one read every 12.5 ms). For each batch window (``QueueReader``'s knob; 5 ms
was the operator's setting before 250 ms) one pass of the interval, the
windows taking turns for K rounds, every other round in reverse order:

- CPU per read: this process's CPU time (uvloop, hiredis, as the operator
  runs) over the pass, less the same pass with the reads replaced by
  sleeping alone (the timers that spread them), per read;
- wait per read: from asking to the answer, median and p99 (what a pool's
  step waits for its queue figures).

Also ``250 ms, MULTI/EXEC``: the counting script switched off (eight
commands per queue in one MULTI/EXEC, as the reader did before it); and
``all at once``: every queue read in one gather (one batch whatever the
window), the floor the window approaches. Medians of rounds; ratios against
the 5 ms window measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path

import redis.asyncio as aioredis
import uvloop

from falachefe_devstack.redis import RedisServer
from falachefe_operator.scaling import queue as queue_module
from falachefe_operator.scaling.queue import QueueReader, QueueRef

WINDOWS_MS = (5.0, 50.0, 250.0, 1000.0)
BASELINE_MS = 5.0
PIPELINED = "250 ms, MULTI/EXEC"


class PipelinedReader(QueueReader):
    """The counting script switched off: eight commands per queue in one MULTI/EXEC, as before it."""

    async def _flush(self, url: str, batch: list[queue_module._Pending]) -> None:
        try:
            pipeline = self._client(url).pipeline(transaction=True)
            for pending in batch:
                key = f"{pending.queue.prefix}:{pending.queue.name}"
                pipeline.llen(f"{key}:wait")
                pipeline.llen(f"{key}:paused")
                pipeline.zcard(f"{key}:prioritized")
                pipeline.zcount(f"{key}:delayed", 0, (pending.now_ms + 1) * queue_module.DELAYED_SEQUENCE_FACTOR - 1)
                pipeline.zcard(f"{key}:delayed")
                pipeline.llen(f"{key}:active")
                pipeline.hget(f"{key}:meta", "paused")
                pipeline.get(f"{key}:id")
            replies = await pipeline.execute()
        except BaseException as error:  # a bench on a healthy Redis: fail loudly
            for pending in batch:
                if not pending.result.done():
                    pending.result.set_exception(error)
            raise
        for index, pending in enumerate(batch):
            pending.result.set_result(queue_module._counts(replies[index * 8 : (index + 1) * 8]))


async def spread(refs: list[QueueRef], gap: float, reader: QueueReader | None) -> list[float]:
    """Each queue read (or, without a reader, only its timer) ``gap`` seconds after the last; the waits."""
    waits: list[float] = []

    async def one(index: int, ref: QueueRef) -> None:
        await asyncio.sleep(index * gap)
        if reader is not None:
            asked = time.perf_counter()
            await reader.read(ref)
            waits.append(time.perf_counter() - asked)

    await asyncio.gather(*(one(index, ref) for index, ref in enumerate(refs)))
    return waits


async def at_once(refs: list[QueueRef], reader: QueueReader) -> list[float]:
    """Every queue read in one gather (one batch whatever the window); the wait, for each."""
    asked = time.perf_counter()
    await asyncio.gather(*(reader.read(ref) for ref in refs))
    return [time.perf_counter() - asked] * len(refs)


async def cpu_of(work: Awaitable[list[float]]) -> tuple[float, list[float]]:
    """This process's CPU seconds while ``work`` ran, and what it returned."""
    started = time.process_time()
    waits = await work
    return time.process_time() - started, waits


async def measure(url: str, queues: int, interval: float, rounds: int) -> None:
    refs = [QueueRef(f"bench-{index}", url) for index in range(queues)]
    admin = aioredis.Redis.from_url(url)
    for index, ref in enumerate(refs):
        await admin.rpush(f"bull:{ref.name}:wait", *range(1 + index % 5))
    await admin.aclose()
    gap = interval / queues
    names = [*(f"{window:g} ms" for window in WINDOWS_MS), PIPELINED, "all at once"]
    cpu: dict[str, list[float]] = {name: [] for name in names}
    waits: dict[str, list[float]] = {name: [] for name in names}
    windows = {f"{window:g} ms": window / 1000 for window in WINDOWS_MS}
    windows[PIPELINED] = 0.25
    for round_index in range(rounds):
        timers_cpu, _ = await cpu_of(spread(refs, gap, None))
        for name in names if round_index % 2 == 0 else names[::-1]:
            kind = PipelinedReader if name == PIPELINED else QueueReader
            reader = kind(batch_window_seconds=windows.get(name, BASELINE_MS / 1000))
            await asyncio.gather(*(reader.read(ref) for ref in refs[:10]))  # connected before the pass
            if name in windows:
                spent, seen = await cpu_of(spread(refs, gap, reader))
                spent -= timers_cpu
            else:
                spent, seen = await cpu_of(at_once(refs, reader))
            cpu[name].append(spent / queues * 1000)
            waits[name].extend(seen)
            await reader.aclose()
    baseline = statistics.median(cpu[f"{BASELINE_MS:g} ms"])
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(
        f"{queues} queues, each read once per {interval:g} s, one every {gap * 1000:.1f} ms; median of {rounds} rounds;"
        f" load average {load} on {os.cpu_count()} CPUs"
    )
    print(f"{'batch window':<20} {'CPU ms/read':>12} {'x 5 ms':>7} {'wait p50 ms':>12} {'wait p99 ms':>12}")
    for name in names:
        spent = statistics.median(cpu[name])
        ordered = sorted(waits[name])
        p50 = ordered[len(ordered) // 2] * 1000
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
        print(f"{name:<20} {spent:>12.3f} {spent / baseline:>6.2f}x {p50:>12.1f} {p99:>12.1f}")
    print("per round, CPU ms/read:", {name: [round(value, 3) for value in values] for name, values in cpu.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queues", type=int, default=400)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between two reads of a queue")
    parser.add_argument("--rounds", type=int, default=5)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-queue-reads-") as workdir:
        server = RedisServer(Path(workdir) / "redis", persist=False).start()
        try:
            uvloop.run(measure(server.url(0), arguments.queues, arguments.interval, arguments.rounds))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
