"""Where the crew worker's time around a kickoff goes: its phases, and its round trips to PostgreSQL and Redis.

A diagnostic, not a comparison (``bench.crew_overhead`` gives the figures
against CrewAI run bare). Run from the repository root::

    .venv/bin/python -m bench crew_phases [--jobs N]

The same set-up as ``crew_overhead`` (its own PostgreSQL, Redis and LLM
stand-in; the real worker, ``serve``, production logging to a file, one
job at a time, every message a new text so every job runs the crew). The
phases are timed by wrapping the crew worker's methods with a timer (read
only: the wrapped method runs unchanged); round trips are counted in the
client libraries, over the whole process while the N jobs run:

- PostgreSQL: statements sent by asyncpg, extended protocol (a query with
  parameters) and simple protocol (``BEGIN``, ``COMMIT``, and the reset
  asyncpg's pool runs on every connection it takes back);
- Redis: commands or pipelines sent by redis-py (the worker's bullmq
  calls, the cache, the hand-off). The run waits for the jobs by reading
  the worker's own counter, not Redis, so none of them is the bench's.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import asyncpg
import uvloop
from prometheus_client import REGISTRY
from redis.asyncio.connection import AbstractConnection

from bench.crew_overhead import config, crew_jobs, crew_stack, seed
from falachefe_runtime.cache.cache import Cache
from falachefe_runtime.companies import Companies
from falachefe_runtime.crew.kickoff import CrewKickoff
from falachefe_runtime.crew.service import CrewService
from falachefe_runtime.crew.store import CrewStore
from falachefe_runtime.queues import CREW_QUEUE, Queues
from falachefe_runtime.worker.app import serve

#: (class, method, label): the phases of a crew job, in the order they run.
PHASES: tuple[tuple[type, str, str], ...] = (
    (CrewService, "handle", "the whole handler"),
    (Companies, "active", "company (cache)"),
    (CrewStore, "stored_reply", "stored reply? (PostgreSQL)"),
    (CrewService, "_active_crew", "crew definition (cache)"),
    (Cache, "_l2_get", "response cache: read (Redis)"),
    (Cache, "_lock_and_reread", "response cache: lock + re-read (Redis)"),
    (CrewKickoff, "answer", "kickoff (thread pool)"),
    (Cache, "_store_and_unlock", "response cache: store + unlock (Redis)"),
    (CrewStore, "store_exchange", "store the exchange (PostgreSQL)"),
    (CrewService, "_send", "hand-off to whatsapp-outbound (Redis)"),
)


class Tally:
    def __init__(self) -> None:
        self.on = False
        self.times: dict[str, list[float]] = defaultdict(list)
        self.trips: Counter[str] = Counter()

    def time(self, cls: type, method: str, label: str) -> None:
        original = getattr(cls, method, None)
        if original is None:  # an older tree without this step
            return

        @functools.wraps(original)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                if self.on:
                    self.times[label].append((time.perf_counter() - started) * 1000)

        setattr(cls, method, timed)

    def count(self, cls: type, method: str, label: str, when: Callable[..., bool] = lambda *a, **k: True) -> None:
        original = getattr(cls, method)

        @functools.wraps(original)
        async def counted(*args: Any, **kwargs: Any) -> Any:
            if self.on and when(*args, **kwargs):
                self.trips[label] += 1
            return await original(*args, **kwargs)

        setattr(cls, method, counted)


def instrument() -> Tally:
    tally = Tally()
    for cls, method, label in PHASES:
        tally.time(cls, method, label)
    # asyncpg: a query with parameters goes through _execute; one without (BEGIN, COMMIT, the pool's
    # reset) through execute() straight to the simple protocol.
    tally.count(asyncpg.Connection, "_execute", "postgresql: statements with parameters")
    tally.count(
        asyncpg.Connection,
        "execute",
        "postgresql: simple queries (BEGIN, COMMIT, pool reset)",
        when=lambda connection, query, *args, **kwargs: not args,
    )
    tally.count(AbstractConnection, "send_packed_command", "redis: commands or pipelines sent")
    return tally


def responses() -> float:
    return sum(
        REGISTRY.get_sample_value("falachefe_crew_responses_total", {"source": source}) or 0.0
        for source in ("kickoff", "cache")
    )


async def run(jobs: int) -> None:
    tally = instrument()
    async with crew_stack("bench-crew-phases") as (dsn, redis_url, llm):
        company, user, session = await seed(dsn)
        queues = Queues(redis_url)
        queue = queues.queue(CREW_QUEUE)
        stop = asyncio.Event()
        worker = asyncio.create_task(serve(config(dsn, redis_url, llm), stop=stop))
        try:
            for tag, count in (("warm", 5), ("run", jobs)):
                target = responses() + count
                await queue.pause()
                await queue.addBulk(crew_jobs(company, user, session, count, tag))
                tally.on = tag == "run"
                await queue.resume()
                while responses() < target:  # noqa: ASYNC110 - the worker's own counter, no Redis
                    await asyncio.sleep(0.01)
                # The last job's completion in bullmq follows its handler.
                await asyncio.sleep(0.2)
                tally.on = False
            done = await queue.getJobs(["completed"], 0, -1, True)
            run = [job for job in done if ".run." in str(job.data["crewData"]["providerMessageId"])]
            span_ms = (max(int(j.finishedOn) for j in run) - min(int(j.processedOn) for j in run)) / jobs
        finally:
            stop.set()
            await asyncio.wait_for(worker, timeout=60)
            await queues.close()
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"{jobs} crew jobs, one at a time; load average {load} on {os.cpu_count()} CPUs")
    print(f"{'phase':<42} {'median ms':>10} {'mean ms':>8}")
    for _, _, label in PHASES:
        values = tally.times.get(label)
        if values:
            print(f"{label:<42} {statistics.median(values):>10.2f} {statistics.mean(values):>8.2f}")
    handler = statistics.mean(tally.times["the whole handler"])
    kickoff = statistics.mean(tally.times["kickoff (thread pool)"])
    print(
        f"per job (means): the handler around its kickoff {handler - kickoff:.2f} ms; "
        f"bullmq between handlers (complete, fetch the next, the job's log line) {span_ms - handler:.2f} ms"
    )
    print("round trips per job (whole process, while the jobs ran):")
    for label, value in sorted(tally.trips.items()):
        print(f"  {label:<56} {value / jobs:6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100)
    arguments = parser.parse_args()
    uvloop.run(run(arguments.jobs))


if __name__ == "__main__":
    main()
