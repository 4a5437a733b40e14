"""What batching the hand-offs to ``crewai-processing`` could save: CPU per job, one add at a time vs five at once.

Run from the repository root::

    PYTHONPATH=scripts .venv/bin/python -m bench.handoff_batching [--jobs N] [--rounds K]

It starts its own Redis and adds ``process-crew`` jobs (the auth worker's
hand-off: the seed's options, a deterministic job id) in groups of five,
the auth worker's concurrency: ``single`` as the worker does today, five
concurrent ``Queues.enqueue`` calls (five round trips); ``bulk`` as a
batching hand-off at its best would, the five in one pipeline
(``Queue.addBulk``, one round trip). The two take turns for K rounds;
it prints the benchmark process's CPU time per job (uvloop, hiredis, as in
production) and the ratio, median of rounds. This is the ceiling of what
batching saves: in a worker, hand-offs coalesce only when several jobs reach
theirs at the same moment.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import uvloop

from falachefe_devstack.redis import RedisServer
from falachefe_runtime.payloads import PROCESS_CREW, CrewRequest, ProcessCrew
from falachefe_runtime.queues import CREW_QUEUE, Queues, job_options

GROUP = 5


def crew_data() -> dict[str, object]:
    """A hand-off's payload, as the auth worker builds it."""
    request = CrewRequest(
        company_id=uuid.uuid4(),
        user_id=uuid.uuid4(),
        session_id=uuid.uuid4(),
        phone_number="+5511900000001",
        text="Qual o horário de hoje?",
        provider_message_id="wamid.bench",
        received_at=datetime.now(UTC),
    )
    return ProcessCrew(crew_data=request).model_dump(mode="json", by_alias=True)


async def one_way(queues: Queues, mode: str, jobs: int, tag: str) -> float:
    """CPU milliseconds per job to hand off ``jobs`` jobs, ``GROUP`` at a time."""
    queue = queues.queue(CREW_QUEUE)
    await queue.obliterate(force=True)
    started = time.process_time()
    for start in range(0, jobs, GROUP):
        ids = [f"bench-{tag}-{start + i}" for i in range(GROUP)]
        if mode == "single":
            await asyncio.gather(*(queues.enqueue(CREW_QUEUE, PROCESS_CREW, crew_data(), job_id=j) for j in ids))
        else:
            batch = [
                {"name": PROCESS_CREW, "data": crew_data(), "opts": job_options(CREW_QUEUE, job_id=j)} for j in ids
            ]
            await queue.addBulk(batch)
    return 1000 * (time.process_time() - started) / jobs


async def measure(redis_url: str, jobs: int, rounds: int) -> None:
    queues = Queues(redis_url)
    cpu: dict[str, list[float]] = {"single": [], "bulk": []}
    try:
        for index in range(rounds):
            for mode in ("single", "bulk") if index % 2 == 0 else ("bulk", "single"):
                cpu[mode].append(await one_way(queues, mode, jobs, f"{index}-{mode}"))
    finally:
        await queues.close()
    single, bulk = statistics.median(cpu["single"]), statistics.median(cpu["bulk"])
    print(f"{jobs} hand-offs per round, groups of {GROUP}, median of {rounds} rounds (Redis local)")
    print(f"CPU ms per hand-off: one at a time {single:.3f}, {GROUP} in one pipeline {bulk:.3f}")
    print(f"ratio, pipeline / one at a time: {bulk / single:.2f}x")
    print("per round:", {mode: [round(v, 3) for v in values] for mode, values in cpu.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=6)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-handoff-") as workdir:
        server = RedisServer(Path(workdir) / "redis").start()
        try:
            uvloop.run(measure(server.url(0), arguments.jobs, arguments.rounds))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
