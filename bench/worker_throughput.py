"""Auth worker throughput (cached and uncached) against a Node bullmq no-op worker, on the same Redis.

Run from the repository root::

    PYTHONPATH=scripts .venv/bin/python -m bench.worker_throughput [--jobs N] [--concurrency C] [--rounds K]
        [--latency-seconds S | --no-latency]

It starts its own Redis and PostgreSQL (falachefe_devstack), applies the
schema and registers one company with 100 users. Each variant is a separate
worker process with the same concurrency, consuming its own queue:

- ``node no-op``: the Node bullmq 6.x worker of ``tests/node`` doing nothing
  (the baseline: the queue's own cost in the original app's runtime);
- ``bullmq no-op``: a bare Python bullmq ``Worker`` doing nothing (the
  library's own cost, on the same uvloop and hiredis);
- ``python no-op``: our ``QueueWorker`` (around Python bullmq) doing nothing;
- ``auth cached``: the real auth handler (``process-message``) with the
  two-layer cache warmed (company, user and session from L1);
- ``auth uncached``: the same handler with the cache swapped for a
  pass-through (every lookup is a PostgreSQL query);
- ``python no-op 2rt`` and ``auth cached 2rt``: the same two with
  ``fetch_next`` off, the ablation of one round trip per job: completing a
  job and taking the next in two Redis calls, as bullmq's own worker does;
- ``python no-op all-fetch`` and ``auth cached all-fetch``: the same two with
  ``one_waiter`` off, every free slot fetching as bullmq's loop does (it
  matters on trickle arrivals: see the latency phase);
- ``auth cached quiet``, ``auth cached reset`` and ``auth cached
  full-redact``: measurement-only ablations (``ABLATIONS``): the job's log
  line not written; asyncpg's reset query sent on each pool release again
  (the runtime's pool sends none: ``db.database.NoResetConnection``); the
  log formatter running the full redaction on every string field (the
  runtime skips text holding no ``://`` and no password keyword).

The auth variants do the real work of an authorized message: lookups, one
transaction (claim the message id, log the attempt) and the hand-off to
``crewai-processing``; the benchmark checks every job says "authorized".

For each variant the queue is paused, filled with N jobs, the worker
started, and the queue resumed; throughput is N over the time until the
queue is drained. Latency is each job's ``finishedOn - processedOn``
(BullMQ's own millisecond timestamps, the same for both languages). Redis
round trips per job are counted in each Python worker process, as redis-py
sends requests (a pipeline is one), with the commands in them by name
(bullmq's scripts by SHA1); the Node worker's are not counted. Jobs
are kept after completion (``removeOnComplete: false``) so every one can be
read back. A warm-up batch of one message per user runs before the measured
one. Variants take turns for K rounds; the median round is reported, and
ratios are against the Node no-op worker of the same run.

Then latency below saturation (``--no-latency`` skips it): each of
``--latency-variants`` (default node no-op, bullmq no-op, python no-op, auth
cached) gets a fresh worker process, warmed the same way, and a producer
adding jobs open loop at 50% and 80% (``--latency-loads``) of that variant's
median saturation jobs/s above, for ``--latency-seconds`` each: every 5 ms
(``--latency-tick-ms``) the jobs due by then go in one ``addBulk``, never
waiting for completions. Per job it reports ``finishedOn - timestamp`` (added
to finished: queue wait + processing, what a user sees; ``timestamp`` is
stamped by the producer as it builds the job) and ``finishedOn - processedOn``,
p50 and p99, with how late the producer ran against its schedule and the
load average, since both say how far the machine can be trusted.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as redis
import uvloop
from bullmq import Job, Worker, redis_connection
from pydantic import BaseModel, ConfigDict
from redis.asyncio.connection import AbstractConnection

from bench.db_pool import bench_database, seed_users
from falachefe_devstack.postgres import PostgresServer
from falachefe_devstack.process import cpu_seconds as process_cpu_seconds
from falachefe_devstack.redis import RedisServer
from falachefe_runtime import redact, redis_wire
from falachefe_runtime.auth.rate_limit import FixedWindowLimiter
from falachefe_runtime.auth.service import AuthService
from falachefe_runtime.auth.store import AuthStore
from falachefe_runtime.cache import Cache
from falachefe_runtime.cache.keys import CacheKind, Scope
from falachefe_runtime.companies import Companies
from falachefe_runtime.config import (
    AuthSettings,
    CacheSettings,
    DatabaseSettings,
    PoolSettings,
    QueueSettings,
    RedisSettings,
)
from falachefe_runtime.db import Database
from falachefe_runtime.db.database import NoResetConnection
from falachefe_runtime.interfaces import ReadThroughCache
from falachefe_runtime.observability import logging as observability_logging
from falachefe_runtime.observability.logging import configure_logging
from falachefe_runtime.payloads import PROCESS_MESSAGE, ProcessMessage
from falachefe_runtime.queues import CREW_QUEUE, SEED_JOB_OPTIONS, WHATSAPP_QUEUE, Queues
from falachefe_runtime.redis_wire import FastWire
from falachefe_runtime.worker.routing import JobInfo, JobResult, Route, Routes
from falachefe_runtime.worker.runner import QueueWorker

REPO = Path(__file__).resolve().parents[1]
NODE_SCRIPT = REPO / "tests" / "node" / "bullmq.mjs"
USERS = 100
#: Set to a directory, each Python worker process dumps a CPU-time profile (cProfile) there.
PROFILE_ENV = "FALACHEFE_BENCH_PROFILE"
#: Set to a directory, each auth worker writes there when each of its user lookups reached PostgreSQL
#: (``lookups-<variant>.json``, monotonic seconds): how often lookups from concurrent jobs come close
#: enough together to be coalesced (``--coalescing-window-ms``).
LOOKUPS_ENV = "FALACHEFE_BENCH_LOOKUPS"
VARIANTS = (
    "node no-op",
    "bullmq no-op",
    "python no-op",
    "auth cached",
    "auth uncached",
    "python no-op 2rt",
    "auth cached 2rt",
    "python no-op all-fetch",
    "auth cached all-fetch",
    "auth cached quiet",
    "auth cached reset",
    "auth cached full-redact",
    "python no-op plain-wire",
    "auth cached plain-wire",
    "auth cached separate-handoff",
)
#: Measurement-only ablations of ``auth cached`` (not options of the runtime): ``quiet`` logs at WARNING
#: (the job's INFO line is not written); ``reset`` has asyncpg's pool send its reset query on each
#: release again (``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;``, a PostgreSQL
#: round trip per release, which the runtime's pool does not send); ``full-redact`` has the log
#: formatter run the full redaction on every string field, without ``redact_text``'s shortcut;
#: ``plain-wire`` (also of ``python no-op``) sends Redis commands with redis-py's own connections,
#: without ``redis_wire.FastWire`` (commands packed in Python, every write under ``asyncio.wait_for``).
#: ``separate-handoff`` adds the hand-off to ``crewai-processing`` in a round trip of its own before
#: completing the job, not in the completion's (``QueueWorker(batch_handoffs=False)``).
ABLATIONS = (" quiet", " reset", " full-redact", " plain-wire", " separate-handoff")
#: The variants that are another with ``fetch_next`` off.
TWO_TRIPS = " 2rt"
#: ... and with ``one_waiter`` off: every free slot fetches, as in bullmq's loop.
ALL_FETCH = " all-fetch"
#: Requests redis-py has sent from this process (``--serve``): one a round trip, a pipeline one.
_sent = [0]
#: The commands inside them, by name (a bullmq script by its name, any other script as ``EVALSHA``).
_commands: Counter[str] = Counter()


def _script_names() -> dict[bytes, str]:
    """bullmq's Lua scripts by SHA1, as redis-py sends them (``EVALSHA <sha>``)."""
    names = {}
    for name, filename in redis_connection.SCRIPT_DEFINITIONS.items():
        text = redis_connection.loadScript(filename)
        names[hashlib.sha1(text.encode()).hexdigest().encode()] = name
    return names


def count_round_trips() -> None:
    """Count every request this process sends to Redis (the worker's, the handler's, bullmq's), and its commands."""
    scripts = _script_names()
    # FastWire overrides both methods and falls back to redis-py's: each call is counted once,
    # by the class that defines the method the connection's own class uses.
    for cls in (AbstractConnection, FastWire):
        send = cls.send_packed_command
        pack = cls.pack_command

        async def counted(
            self: AbstractConnection, command: Any, check_health: bool = True, _send: Any = send, _cls: type = cls
        ) -> None:
            if _cls is FastWire or not isinstance(self, FastWire):
                _sent[0] += 1
            await _send(self, command, check_health)

        def tallied(self: AbstractConnection, *args: Any, _pack: Any = pack, _cls: type = cls) -> list[bytes]:
            if _cls is FastWire or not isinstance(self, FastWire):
                name = args[0].encode() if isinstance(args[0], str) else bytes(args[0])
                name = name.split()[0].upper()
                if name == b"EVALSHA" and len(args) > 1:
                    sha = args[1].encode() if isinstance(args[1], str) else bytes(args[1])
                    _commands[scripts.get(sha, "EVALSHA")] += 1
                else:
                    _commands[name.decode()] += 1
            return _pack(self, *args)  # type: ignore[no-any-return]

        cls.send_packed_command = counted  # type: ignore[method-assign]
        cls.pack_command = tallied  # type: ignore[method-assign]


# -- the Python worker process (``--serve``) -------------------------------------------


class AnyPayload(BaseModel):
    model_config = ConfigDict(extra="allow")


class TimedStore(AuthStore):
    """``AuthStore`` noting when each user lookup is sent to PostgreSQL (for ``LOOKUPS_ENV``)."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.lookups: list[float] = []

    async def user_by_phone(self, company_id: uuid.UUID, phone_number: str) -> Any:
        self.lookups.append(time.monotonic())
        return await super().user_by_phone(company_id, phone_number)


def batches(times: list[float], window_s: float, most: int) -> list[int]:
    """The batch sizes of a loader that, from a lookup it is not yet sending, waits ``window_s`` for others.

    Greedy, in time order: a batch takes the lookups begun within ``window_s`` of its first, at most ``most``.
    """
    ordered = sorted(times)
    sizes = []
    index = 0
    while index < len(ordered):
        end = index + 1
        while end < len(ordered) and end - index < most and ordered[end] <= ordered[index] + window_s:
            end += 1
        sizes.append(end - index)
        index = end
    return sizes


class PassThroughCache:
    """The cache switched off: every lookup goes to the loader (PostgreSQL)."""

    async def get_or_load(
        self,
        kind: CacheKind,
        key: str,
        loader: Callable[[], Awaitable[Any]],
        *,
        scope: Scope,
        parse: Callable[[Any], Any] | None = None,
    ) -> Any:
        value = json.loads(json.dumps(await loader()))  # what a miss returns: decoded JSON
        return value if parse is None else parse(value)

    async def set(self, kind: CacheKind, key: str, value: Any, *, scope: Scope) -> bool:
        return False


async def _serve_until_sigterm(profiler: cProfile.Profile | None, profile: str | None, variant: str) -> None:
    """Say ready, then run (profiled when asked) until the driver's SIGTERM; SIGUSR1 asks for the round trips."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(
        signal.SIGUSR1, lambda: print(json.dumps({"round_trips": _sent[0], "commands": _commands}), flush=True)
    )
    print(json.dumps({"ready": True}), flush=True)
    if profiler is not None:
        profiler.enable()
    await stop.wait()
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(f"{profile}/{variant.replace(' ', '-')}.pstats")


async def serve(variant: str, redis_url: str, dsn: str, queue: str, concurrency: int) -> None:
    count_round_trips()
    name, fetch_next, one_waiter = variant, not variant.endswith(TWO_TRIPS), not variant.endswith(ALL_FETCH)
    ablation = next((a for a in ABLATIONS if variant.endswith(a)), "")
    variant = variant.removesuffix(TWO_TRIPS).removesuffix(ALL_FETCH).removesuffix(ablation)
    profile = os.environ.get(PROFILE_ENV)
    profiler = cProfile.Profile(time.process_time) if profile else None
    closers: list[Callable[[], Awaitable[Any]]] = []
    # Production's logging: one JSON line per job on stderr (the driver sends it to /dev/null).
    configure_logging("WARNING" if ablation == " quiet" else "INFO", "json")
    if ablation == " reset":
        NoResetConnection.get_reset_query = asyncpg.Connection.get_reset_query  # type: ignore[method-assign]
    if ablation == " full-redact":
        observability_logging.redact_text = lambda text: redact._redact(text, ())
    if ablation == " plain-wire":
        redis_wire.fast_connection_class = lambda base: base
    if variant == "bullmq no-op":

        async def bare(job: Job, token: str) -> None:
            return None

        bull = Worker(queue, bare, {"concurrency": concurrency, "connection": redis_url, "autorun": False})
        running = asyncio.create_task(bull.run())
        await _serve_until_sigterm(profiler, profile, name)
        await bull.close()
        await asyncio.wait({running}, timeout=5)
        return
    if variant == "python no-op":

        async def nothing(payload: AnyPayload, info: JobInfo) -> JobResult:
            return None

        routes: Routes = {PROCESS_MESSAGE: Route(AnyPayload, nothing)}
    else:
        db = Database(DatabaseSettings(dsn=dsn, primary=PoolSettings(min_size=concurrency, max_size=concurrency)))
        await db.start()
        closers.append(db.close)
        cache: ReadThroughCache
        if variant == "auth cached":
            real_cache = Cache(RedisSettings(url=redis_url), CacheSettings())
            await real_cache.start()
            closers.append(real_cache.close)
            cache = real_cache
        else:
            cache = PassThroughCache()
        client = redis.Redis.from_url(redis_url)
        closers.append(client.aclose)
        queues = Queues(redis_url)
        closers.append(queues.close)
        store = TimedStore(db)
        if lookups_dir := os.environ.get(LOOKUPS_ENV):

            async def dump_lookups() -> None:
                path = Path(lookups_dir, f"lookups-{name.replace(' ', '-')}.json")
                path.write_text(json.dumps({"variant": name, "lookups": store.lookups}))  # noqa: ASYNC240 - once, at exit

            closers.append(dump_lookups)
        auth = AuthService(
            store=store,
            companies=Companies(db, cache),
            cache=cache,
            queues=queues,
            limiter=FixedWindowLimiter(client, limit=3, window_s=900),
            settings=AuthSettings(otp_secret="bench-secret"),
            rate_limit_prefix="bench:auth",
        )
        routes = {PROCESS_MESSAGE: Route(ProcessMessage, auth.handle_message)}
    worker = QueueWorker(
        queue,
        routes,
        redis_url=redis_url,
        concurrency=concurrency,
        settings=QueueSettings(),
        fetch_next=fetch_next,
        one_waiter=one_waiter,
        batch_handoffs=ablation != " separate-handoff",
    )
    await worker.start()
    await _serve_until_sigterm(profiler, profile, name)
    await worker.stop(grace_s=30)
    for close in reversed(closers):
        await close()


# -- the driver ------------------------------------------------------------------------


def percentile(values: list[int] | list[float], fraction: float) -> float:
    """Nearest rank: the value below which ``fraction`` of ``values`` lie."""
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))])


@dataclass
class Round:
    variant: str
    seconds: float
    jobs: int
    latencies_ms: list[int]
    #: CPU time (user + system) the worker process spent on the measured jobs.
    cpu_seconds: float
    #: ... and PostgreSQL's server processes.
    db_cpu_seconds: float
    #: Requests the worker process sent to Redis over the measured drain (None: not counted, the Node worker).
    requests: Requests | None

    @property
    def round_trips(self) -> int | None:
        return None if self.requests is None else self.requests.round_trips

    @property
    def cpu_ms_per_job(self) -> float:
        return 1000 * self.cpu_seconds / self.jobs

    @property
    def db_cpu_ms_per_job(self) -> float:
        return 1000 * self.db_cpu_seconds / self.jobs

    @property
    def round_trips_per_job(self) -> float | None:
        return None if self.round_trips is None else self.round_trips / self.jobs

    @property
    def per_second(self) -> float:
        return self.jobs / self.seconds

    def percentile_ms(self, fraction: float) -> float:
        return percentile(self.latencies_ms, fraction)


@dataclass
class Requests:
    """What a worker process sent to Redis: requests (round trips) and the commands in them, by name."""

    round_trips: int
    commands: Counter[str]

    def __sub__(self, before: Requests) -> Requests:
        return Requests(self.round_trips - before.round_trips, self.commands - before.commands)


def since(after: Requests | None, before: Requests | None) -> Requests | None:
    return None if after is None or before is None else after - before


def commands_per_job(requests: Requests | None, jobs: int) -> str:
    """``requests``' commands per job, most frequent first (bullmq scripts by name)."""
    if requests is None:
        return "-"
    return ", ".join(f"{name} {count / jobs:.2f}" for name, count in requests.commands.most_common())


class WorkerProcess:
    def __init__(self, variant: str, redis_url: str, dsn: str, queue: str, concurrency: int, count: int) -> None:
        self.variant = variant
        if variant == "node no-op":
            request = {"redis": redis_url, "queue": queue, "concurrency": concurrency, "count": count}
            argv = ["node", str(NODE_SCRIPT), "work"]
        else:
            request = None
            argv = [sys.executable, "-m", "bench.worker_throughput", "--serve", variant, "--redis", redis_url]
            argv += ["--dsn", dsn, "--queue", queue, "--concurrency", str(concurrency)]
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # The Python workers' logs (a JSON line per job), written as in production, then dropped.
            stderr=None if request is not None else subprocess.DEVNULL,
            text=True,
            cwd=REPO,
            env=_env(),
        )
        assert self.popen.stdin is not None and self.popen.stdout is not None
        if request is not None:
            self.popen.stdin.write(json.dumps(request))
        self.popen.stdin.close()
        ready = self.popen.stdout.readline()
        if '"ready": true' not in ready.replace('"ready":true', '"ready": true'):
            raise RuntimeError(f"{variant} worker did not start: {ready!r}")

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.popen.pid)

    def requests(self) -> Requests | None:
        """The Redis requests the (Python) worker has sent so far, and their commands."""
        if self.variant == "node no-op":
            return None
        assert self.popen.stdout is not None
        self.popen.send_signal(signal.SIGUSR1)
        answer = json.loads(self.popen.stdout.readline())
        return Requests(int(answer["round_trips"]), Counter(answer["commands"]))

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        self.popen.wait(60)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{REPO / 'scripts'}:{os.environ.get('PYTHONPATH', '')}"}


def messages(company: uuid.UUID, count: int, tag: str, first: int = 0) -> list[dict[str, Any]]:
    options = {**SEED_JOB_OPTIONS[WHATSAPP_QUEUE], "removeOnComplete": False}
    return [
        {
            "name": PROCESS_MESSAGE,
            "data": {
                "messageData": {
                    "phoneNumber": f"+55119{n % USERS:08d}",
                    "companyId": str(company),
                    "text": "Qual o horário de hoje?",
                    "providerMessageId": f"bench.{tag}.{n}",
                    "timestamp": int(time.time() * 1000),
                }
            },
            "opts": options,
        }
        for n in range(first, first + count)
    ]


async def drain(queues: Queues, queue: str, jobs: list[dict[str, Any]]) -> float:
    """Pause, fill, resume; the seconds until the queue has nothing left to do."""
    bull = queues.queue(queue)
    await bull.pause()
    for start in range(0, len(jobs), 500):
        await bull.addBulk(jobs[start : start + 500])
    started = time.perf_counter()
    await bull.resume()
    while await queues.backlog(queue) > 0:  # noqa: ASYNC110 - the queue is in Redis, polled at 5 ms
        await asyncio.sleep(0.005)
    return time.perf_counter() - started


async def measure(
    variant: str, redis_url: str, pg: PostgresServer, company: uuid.UUID, jobs: int, concurrency: int, index: int
) -> Round:
    dsn = pg.dsn("bench")
    assert pg.process is not None and pg.process.popen is not None
    postmaster = pg.process.popen.pid
    queue = f"bench-{index}-{variant.replace(' ', '-')}"
    queues = Queues(redis_url)
    worker = WorkerProcess(variant, redis_url, dsn, queue, concurrency, count=USERS + jobs)
    try:
        await drain(queues, queue, messages(company, USERS, f"{index}.warm"))
        await queues.queue(queue).clean(0, 0, "completed")
        trips_before = worker.requests()
        cpu_before = worker.cpu_seconds()
        db_before = process_cpu_seconds(postmaster, with_children=True)
        seconds = await drain(queues, queue, messages(company, jobs, f"{index}.run"))
        cpu_seconds = worker.cpu_seconds() - cpu_before
        db_cpu_seconds = process_cpu_seconds(postmaster, with_children=True) - db_before
        round_trips = since(worker.requests(), trips_before)
        done = await queues.queue(queue).getJobs(["completed"], 0, -1, True)
        failed = await queues.counts(queue)
        if len(done) != jobs or failed["failed"]:
            raise RuntimeError(f"{variant}: {len(done)} of {jobs} jobs completed, {failed['failed']} failed")
        if variant.startswith("auth") and {job.returnvalue["outcome"] for job in done} != {"authorized"}:
            raise RuntimeError(f"{variant}: not every message was authorized")
        latencies = [int(job.finishedOn) - int(job.processedOn) for job in done]
        await queues.queue(queue).obliterate(force=True)
        await queues.queue(CREW_QUEUE).obliterate(force=True)
        return Round(variant, seconds, jobs, latencies, cpu_seconds, db_cpu_seconds, round_trips)
    finally:
        worker.stop()
        await queues.close()


# -- latency below saturation (open loop) ------------------------------------------------


#: The variants whose latency below saturation is measured by default.
LATENCY_VARIANTS = ("node no-op", "bullmq no-op", "python no-op", "auth cached")
#: Fractions of each variant's saturation jobs/s at which latency is measured by default.
LATENCY_LOADS = (0.5, 0.8)


@dataclass
class Load:
    """One open-loop run of a variant: jobs added at a fixed rate, whatever the worker does."""

    variant: str
    fraction: float
    #: The rate asked for: ``fraction`` of the variant's saturation jobs/s in this run.
    target_per_second: float
    jobs: int
    #: Seconds from the first job added to the last.
    add_seconds: float
    #: Seconds from the last job added until the queue had nothing left to do.
    tail_seconds: float
    #: How late the producer added each batch against its schedule (ms, per batch).
    lag_ms: list[float]
    #: Per job: ``finishedOn - timestamp`` (added to finished: queue wait + processing).
    end_to_end_ms: list[int]
    #: Per job: ``finishedOn - processedOn`` (taken to finished; with fetch next, from the previous completion).
    processing_ms: list[int]
    #: The 1-minute load average when the run ended.
    load_average: float
    #: The worker process's CPU (user + system) from the first add until the queue was empty.
    cpu_seconds: float
    #: Its Redis requests over the same span (None: not counted, the Node worker).
    requests: Requests | None

    @property
    def round_trips(self) -> int | None:
        return None if self.requests is None else self.requests.round_trips

    @property
    def cpu_ms_per_job(self) -> float:
        return 1000 * self.cpu_seconds / self.jobs

    @property
    def added_per_second(self) -> float:
        return self.jobs / self.add_seconds if self.add_seconds else float("nan")


async def produce(
    queues: Queues, queue: str, company: uuid.UUID, rate: float, jobs: int, tag: str, tick_s: float
) -> tuple[float, list[float]]:
    """Add ``jobs`` jobs at ``rate`` per second, open loop: job k is due ``k / rate`` s after the start.

    Every ``tick_s`` (or at the next job's due time, if later) the jobs due by then go in one
    ``addBulk``; completions are never waited for. Returns the seconds from the first add to the
    last and how late (ms) each batch was against its first job's due time.
    """
    bull = queues.queue(queue)
    start = time.perf_counter()
    sent = 0
    lag_ms: list[float] = []
    wake = start
    while sent < jobs:
        now = time.perf_counter()
        due = min(jobs, int((now - start) * rate) + 1)
        if due > sent:
            lag_ms.append(1000 * (now - (start + sent / rate)))
            await bull.addBulk(messages(company, due - sent, tag, first=sent))
            sent = due
        if sent < jobs:
            wake = max(wake + tick_s, start + sent / rate)
            await asyncio.sleep(max(0.0, wake - time.perf_counter()))
    return time.perf_counter() - start, lag_ms


async def measure_latency(
    variant: str,
    saturation: float,
    fractions: tuple[float, ...],
    seconds: float,
    tick_s: float,
    redis_url: str,
    pg: PostgresServer,
    company: uuid.UUID,
    concurrency: int,
) -> list[Load]:
    """One worker process, warmed as in ``measure``, fed at each fraction of ``saturation`` jobs/s."""
    counts = [max(1, round(fraction * saturation * seconds)) for fraction in fractions]
    queue = f"bench-latency-{variant.replace(' ', '-')}"
    queues = Queues(redis_url)
    worker = WorkerProcess(variant, redis_url, pg.dsn("bench"), queue, concurrency, count=USERS + sum(counts))
    loads: list[Load] = []
    try:
        await drain(queues, queue, messages(company, USERS, "latency.warm"))
        await queues.queue(queue).clean(0, 0, "completed")
        for fraction, jobs in zip(fractions, counts, strict=True):
            rate = fraction * saturation
            trips_before = worker.requests()
            cpu_before = worker.cpu_seconds()
            add_seconds, lag_ms = await produce(queues, queue, company, rate, jobs, f"latency.{fraction}", tick_s)
            added = time.perf_counter()
            while await queues.backlog(queue) > 0:  # noqa: ASYNC110 - the queue is in Redis, polled at 5 ms
                await asyncio.sleep(0.005)
            tail_seconds = time.perf_counter() - added
            cpu_seconds = worker.cpu_seconds() - cpu_before
            trips = since(worker.requests(), trips_before)
            done = await queues.queue(queue).getJobs(["completed"], 0, -1, True)
            failed = await queues.counts(queue)
            if len(done) != jobs or failed["failed"]:
                raise RuntimeError(
                    f"{variant} at {fraction:.0%}: {len(done)} of {jobs} completed, {failed['failed']} failed"
                )
            if variant.startswith("auth") and {job.returnvalue["outcome"] for job in done} != {"authorized"}:
                raise RuntimeError(f"{variant} at {fraction:.0%}: not every message was authorized")
            loads.append(
                Load(
                    variant,
                    fraction,
                    rate,
                    jobs,
                    add_seconds,
                    tail_seconds,
                    lag_ms,
                    [int(job.finishedOn) - int(job.timestamp) for job in done],
                    [int(job.finishedOn) - int(job.processedOn) for job in done],
                    os.getloadavg()[0],
                    cpu_seconds,
                    trips,
                )
            )
            await queues.queue(queue).clean(0, 0, "completed")
            await queues.queue(CREW_QUEUE).obliterate(force=True)
        await queues.queue(queue).obliterate(force=True)
        return loads
    finally:
        worker.stop()
        await queues.close()


def report_latency(loads: list[Load], seconds: float, tick_s: float) -> None:
    print(
        f"latency below saturation: open loop, jobs added every {1000 * tick_s:.0f} ms (addBulk of those due) "
        f"for {seconds:g} s at a fraction of each variant's median saturation jobs/s above; one run each"
    )
    print(
        f"{'worker':<18} {'load':>5} {'target/s':>9} {'added/s':>8} "
        f"{'e2e p50':>8} {'e2e p99':>8} {'proc p50':>9} {'proc p99':>9} "
        f"{'add lag p99':>12} {'tail s':>7} {'CPU ms/job':>11} {'Redis RT/job':>13} {'loadavg':>8}"
    )
    for load in loads:
        trips = "-" if load.round_trips is None else f"{load.round_trips / load.jobs:.2f}"
        print(
            f"{load.variant:<18} {load.fraction:>5.0%} {load.target_per_second:>9.0f} {load.added_per_second:>8.0f} "
            f"{percentile(load.end_to_end_ms, 0.5):>8.0f} {percentile(load.end_to_end_ms, 0.99):>8.0f} "
            f"{percentile(load.processing_ms, 0.5):>9.0f} {percentile(load.processing_ms, 0.99):>9.0f} "
            f"{percentile(load.lag_ms, 0.99):>12.1f} {load.tail_seconds:>7.2f} {load.cpu_ms_per_job:>11.2f} "
            f"{trips:>13} {load.load_average:>8.2f}"
        )
    print(
        "e2e: finishedOn - timestamp (added to finished, ms); proc: finishedOn - processedOn (ms); "
        "add lag: how late the producer added a batch against its schedule; "
        "tail: seconds from the last add until the queue was empty; CPU and Redis RT: the worker process's "
        "over the run, per job"
    )
    by_run = {(load.variant, load.fraction): load for load in loads}
    for (variant, fraction), on in by_run.items():
        off = by_run.get((variant + ALL_FETCH, fraction))
        if off is None or not on.round_trips or not off.round_trips:
            continue
        print(
            f"one waiter on / off, {variant} at {fraction:.0%}: "
            f"Redis RT/job {on.round_trips / on.jobs:.2f} / {off.round_trips / off.jobs:.2f} "
            f"= {(on.round_trips / on.jobs) / (off.round_trips / off.jobs):.2f}x; "
            f"worker CPU/job {on.cpu_ms_per_job:.2f} / {off.cpu_ms_per_job:.2f} ms "
            f"= {on.cpu_ms_per_job / off.cpu_ms_per_job:.2f}x"
        )
    print("Redis commands per job, by command (bullmq's scripts by name; a pipeline is one round trip):")
    for load in loads:
        if load.requests is not None:
            print(f"  {load.variant} at {load.fraction:.0%}: {commands_per_job(load.requests, load.jobs)}")
    for load in loads:
        if load.variant == "auth cached" and load.fraction == 0.5:
            p99 = percentile(load.end_to_end_ms, 0.99)
            verdict = "met" if p99 < 20 else "NOT met"
            print(f"goal (issue 14), auth cached e2e p99 under 20 ms at 50% of saturation: {verdict} ({p99:.0f} ms)")


async def run(
    jobs: int,
    concurrency: int,
    rounds: int,
    variants: tuple[str, ...] = VARIANTS,
    latency_variants: tuple[str, ...] = LATENCY_VARIANTS,
    latency_loads: tuple[float, ...] = LATENCY_LOADS,
    latency_seconds: float = 10.0,
    latency_tick_s: float = 0.005,
    coalescing_window_s: float = 0.002,
) -> None:
    """The rounds at saturation; then, unless ``latency_variants`` is empty, latency below it."""
    started_load = os.getloadavg()
    loads: list[Load] = []
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as workdir:
        lookups_dir = Path(workdir) / "lookups"
        lookups_dir.mkdir()
        os.environ[LOOKUPS_ENV] = str(lookups_dir)  # the workers' environment (``_env``)
        pg = PostgresServer(Path(workdir) / "pg").start()
        cache = RedisServer(Path(workdir) / "redis").start()
        try:
            company = await seed_users(await bench_database(pg), users=USERS)
            redis_url = cache.url(0)
            results: dict[str, list[Round]] = {variant: [] for variant in variants}
            for index in range(rounds):
                # Every other round in reverse order: no variant always runs first (or last) in a round.
                for variant in variants if index % 2 == 0 else variants[::-1]:
                    results[variant].append(await measure(variant, redis_url, pg, company, jobs, concurrency, index))
            for variant in (v for v in latency_variants if v in results):
                saturation = _median_round(results[variant]).per_second
                loads += await measure_latency(
                    variant,
                    saturation,
                    latency_loads,
                    latency_seconds,
                    latency_tick_s,
                    redis_url,
                    pg,
                    company,
                    concurrency,
                )
        finally:
            cache.stop()
            pg.stop()
        coalescing = lookup_coincidences(lookups_dir, coalescing_window_s, concurrency)
    report(results, jobs, concurrency, rounds)
    for line in coalescing:
        print(line)
    if loads:
        report_latency(loads, latency_seconds, latency_tick_s)
    ended_load = os.getloadavg()
    print(
        "load average (1, 5, 15 min) at start:",
        " ".join(f"{x:.2f}" for x in started_load),
        "at end:",
        " ".join(f"{x:.2f}" for x in ended_load),
        f"({os.cpu_count()} CPUs)",
    )


def lookup_coincidences(lookups_dir: Path, window_s: float, most: int) -> list[str]:
    """How close together the auth workers' user lookups reached PostgreSQL (each variant's last process)."""
    lines = []
    for path in sorted(lookups_dir.glob("lookups-*.json")):
        noted = json.loads(path.read_text())
        variant, times = noted["variant"], noted["lookups"]
        if len(times) < 2:
            continue
        sizes = batches(times, window_s, most)
        shares = {k: sum(k for size in sizes if size == k) / len(times) for k in range(1, most + 1)}
        lines.append(
            f"user lookups sent to PostgreSQL by {variant} (its last process, warm-up included): {len(times)}; "
            f"a loader waiting {1000 * window_s:g} ms for others would send {len(sizes)} queries "
            f"({len(sizes) / len(times):.2f} per lookup); lookups by the size of their batch: "
            + ", ".join(f"{k}: {share:.0%}" for k, share in shares.items())
        )
    return lines


def _median_round(rounds: list[Round]) -> Round:
    """The round of median jobs/s (the one reported)."""
    return sorted(rounds, key=lambda r: r.per_second)[len(rounds) // 2]


def report(results: dict[str, list[Round]], jobs: int, concurrency: int, rounds: int) -> None:
    median = {v: _median_round(rs) for v, rs in results.items()}
    baseline = median.get("node no-op") or next(iter(median.values()))
    cpu_of = {v: statistics.median(r.cpu_ms_per_job for r in rs) for v, rs in results.items()}
    db_of = {v: statistics.median(r.db_cpu_ms_per_job for r in rs) for v, rs in results.items()}
    trips_of = {
        v: statistics.median(r.round_trips_per_job or 0.0 for r in rs)
        for v, rs in results.items()
        if rs[0].round_trips is not None
    }
    print(f"{jobs} jobs per variant, concurrency {concurrency}, median of {rounds} rounds (Redis and PostgreSQL local)")
    print(
        f"{'worker':<18} {'jobs/s':>9} {'p50 ms':>8} {'p99 ms':>8} {f'x {baseline.variant}':>13} "
        f"{'CPU ms/job':>11} {'Redis RT/job':>13}"
    )
    for variant, result in median.items():
        trips = f"{trips_of[variant]:>13.2f}" if variant in trips_of else f"{'-':>13}"
        print(
            f"{variant:<18} {result.per_second:>9.0f} {result.percentile_ms(0.5):>8.0f} "
            f"{result.percentile_ms(0.99):>8.0f} {result.per_second / baseline.per_second:>12.2f}x "
            f"{result.cpu_ms_per_job:>11.2f} {trips}"
        )

    def ratio(label: str, of: dict[str, float], a: str, b: str) -> str | None:
        return f"{label} {a} / {b} {of[a] / of[b]:.2f}x" if a in of and b in of and of[b] else None

    per_second = {v: r.per_second for v, r in median.items()}
    ratios = [
        ratio("jobs/s", per_second, "auth cached", "node no-op"),
        ratio("jobs/s", per_second, "auth cached", "auth uncached"),
        ratio("worker CPU/job", cpu_of, "python no-op", "bullmq no-op"),
        ratio("worker CPU/job", cpu_of, "auth cached", "bullmq no-op"),
        ratio("worker CPU/job", cpu_of, "bullmq no-op", "node no-op"),
        ratio("worker CPU/job", cpu_of, "auth cached", "auth uncached"),
        ratio("PostgreSQL CPU/job", db_of, "auth cached", "auth uncached"),
    ]
    print("ratios (CPU: medians of rounds):", "; ".join(r for r in ratios if r is not None))
    # Each idea against the same worker without it, paired within each round: fetch next (one round trip per
    # job against two), one waiter (one free slot waiting for all against every free slot fetching).
    # The measurement-only ablations: the job's log line, asyncpg's reset query on each release, the
    # redaction's shortcut, FastWire, the hand-off sent with the completion.
    ideas = (
        (TWO_TRIPS, "fetch next"),
        (ALL_FETCH, "one waiter"),
        (" quiet", "log line"),
        (" reset", "no reset query"),
        (" full-redact", "redaction shortcut"),
        (" plain-wire", "fast wire"),
        (" separate-handoff", "hand-off with the completion"),
    )
    for suffix, idea in ideas:
        for variant in ("python no-op", "auth cached"):
            off = variant + suffix
            if variant not in results or off not in results:
                continue
            pairs = list(zip(results[variant], results[off], strict=True))
            paired = {
                "Redis RT/job": [on.round_trips_per_job / two.round_trips_per_job for on, two in pairs],  # type: ignore[operator]
                "worker CPU/job": [on.cpu_ms_per_job / two.cpu_ms_per_job for on, two in pairs],
                "jobs/s": [on.per_second / two.per_second for on, two in pairs],
            }
            if all(two.db_cpu_seconds > 0 for _, two in pairs):
                paired["PostgreSQL CPU/job"] = [on.db_cpu_seconds / two.db_cpu_seconds for on, two in pairs]
            paired["worker CPU ms/job, on - off"] = [on.cpu_ms_per_job - two.cpu_ms_per_job for on, two in pairs]
            print(
                f"{idea} on / off, {variant}, median of the rounds' ratios (per round):",
                "; ".join(
                    f"{label} {statistics.median(values):.2f}{'' if ' - ' in label else 'x'} "
                    f"{[round(v, 2) for v in values]}"
                    for label, values in paired.items()
                ),
            )
    spread = {v: [round(r.per_second) for r in rs] for v, rs in results.items()}
    print("jobs/s per round:", json.dumps(spread))
    for label, field in (
        ("worker CPU ms", "cpu_ms_per_job"),
        ("PostgreSQL CPU ms", "db_cpu_ms_per_job"),
        ("Redis round trips", "round_trips_per_job"),
    ):
        values = {
            v: [round(getattr(r, field), 2) for r in rs if getattr(r, field) is not None] for v, rs in results.items()
        }
        print(f"{label} per job, per round:", json.dumps({v: x for v, x in values.items() if x}))
    print("Redis commands per job in the median round, by command (bullmq's scripts by name):")
    for variant, result in median.items():
        if result.requests is not None:
            print(f"  {variant}: {commands_per_job(result.requests, result.jobs)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2_000)
    parser.add_argument("--concurrency", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="comma-separated, in the order they take turns (default: all; ratios need both sides)",
    )
    parser.add_argument(
        "--latency-variants",
        default=",".join(LATENCY_VARIANTS),
        help="comma-separated: after the rounds, each fed open loop below its saturation "
        "(those not in --variants are skipped)",
    )
    parser.add_argument(
        "--latency-loads", default=",".join(map(str, LATENCY_LOADS)), help="fractions of saturation jobs/s"
    )
    parser.add_argument("--latency-seconds", type=float, default=10.0, help="how long jobs are added at each load")
    parser.add_argument("--latency-tick-ms", type=float, default=5.0, help="the producer adds the jobs due this often")
    parser.add_argument("--no-latency", action="store_true", help="saturation only: skip the latency phase")
    parser.add_argument(
        "--coalescing-window-ms",
        type=float,
        default=2.0,
        help="report how a loader waiting this long for other user lookups (cache misses) would batch them",
    )
    parser.add_argument("--serve", choices=VARIANTS[1:], help=argparse.SUPPRESS)
    parser.add_argument("--redis", help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    parser.add_argument("--queue", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.serve:
        # As in production (falachefe_runtime.worker.app): uvloop, and hiredis found by redis-py.
        uvloop.run(serve(arguments.serve, arguments.redis, arguments.dsn, arguments.queue, arguments.concurrency))
    else:
        variants = tuple(v.strip() for v in arguments.variants.split(","))
        unknown = set(variants) - set(VARIANTS)
        if unknown:
            parser.error(f"unknown variants {sorted(unknown)}: choose from {', '.join(VARIANTS)}")
        latency_variants = (
            () if arguments.no_latency else tuple(v.strip() for v in arguments.latency_variants.split(","))
        )
        unknown = set(latency_variants) - set(VARIANTS)
        if unknown:
            parser.error(f"unknown latency variants {sorted(unknown)}: choose from {', '.join(VARIANTS)}")
        loads = tuple(float(x) for x in arguments.latency_loads.split(","))
        if not all(x > 0 for x in loads):
            parser.error("--latency-loads: fractions of saturation above 0, e.g. 0.5,0.8")
        asyncio.run(
            run(
                arguments.jobs,
                arguments.concurrency,
                arguments.rounds,
                variants,
                latency_variants,
                loads,
                arguments.latency_seconds,
                arguments.latency_tick_ms / 1000,
                arguments.coalescing_window_ms / 1000,
            )
        )


if __name__ == "__main__":
    main()
