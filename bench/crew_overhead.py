"""What the crew worker adds around a CrewAI kickoff, against CrewAI run bare on the same LLM stand-in.

Run from the repository root::

    PYTHONPATH=scripts .venv/bin/python -m bench.crew_overhead [--jobs N] [--rounds K]

It starts its own Redis, PostgreSQL (the runtime's schema, one company with
an active one-agent crew) and the OpenAI-compatible LLM stand-in (answers at
once), all in this machine. One process, one job at a time, each message a
different text (no response-cache hit: every job runs the crew). Measured,
in turns for K rounds, the median round reported:

- ``llm call``: one ``crewai.LLM.call`` (one HTTP round trip to the stand-in:
  the floor any crew run pays);
- ``bare kickoff``: the same one-agent one-task crew (the stored definition's
  texts) built and kicked off as
  CrewAI's documentation writes it from async code (``Crew.kickoff_async``,
  which runs the kickoff in a thread), at its best: one ``LLM`` built once
  and reused; ``bare, new LLM`` builds an ``LLM`` per kickoff, as the
  crew worker did before (each one loads the CA bundle into new TLS
  contexts);
- ``our kickoff``: ``CrewKickoff.answer`` (the crew built from its stored
  definition, run in the kickoff thread pool);
- ``crew job``: the real crew worker (``serve``, production logging at INFO
  to a file) taking N ``process-crew`` jobs from bullmq: per job, the time
  from the first job taken to the last one finished (bullmq's timestamps)
  divided by N.

Ablation of the exchange (the crew worker's write after a kickoff), on the
same database, the two ways alternating call by call (median per call): ``exchange, one call`` is
``CrewStore.store_exchange`` (one call of migration 4's server-side
function); ``exchange, statements`` sends the same steps as separate
statements in a transaction, as the worker did before (``BEGIN``, claim,
user lock, conversation, messages, ``COMMIT``).

The worker's overhead around a kickoff is ``crew job`` minus ``kickoff in
job`` (the worker's own kickoff histogram, over the same jobs)
(fetching and completing the job, validation, the crew and company lookups,
storing the exchange, the hand-off to ``whatsapp-outbound``); our build and
thread hop is ``our kickoff`` minus ``bare kickoff``; CrewAI's own cost is
``bare kickoff`` minus ``llm call``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import uvloop
from prometheus_client import REGISTRY

from bench.db_pool import bench_database
from falachefe_devstack.llm_standin import FakeOpenAI
from falachefe_devstack.postgres import PostgresServer
from falachefe_devstack.redis import RedisServer
from falachefe_devstack.seed import phone, seed_tenant
from falachefe_runtime.config import RuntimeConfig
from falachefe_runtime.crew.definition import CrewDefinition
from falachefe_runtime.crew.kickoff import CrewKickoff
from falachefe_runtime.crew.store import CREW_STAGE, CrewStore
from falachefe_runtime.db import Database
from falachefe_runtime.observability.logging import configure_logging
from falachefe_runtime.payloads import PROCESS_CREW, CrewRequest
from falachefe_runtime.queues import CREW_QUEUE, SEED_JOB_OPTIONS, Queues
from falachefe_runtime.worker.app import serve

LLM_KEY = "sk-bench-not-a-real-key"
GOAL_MS = 5.0
COMPANY = "Padaria Demo"  # seed_tenant's


async def seed(dsn: str) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    """The demo's tenant (one user, an active one-agent crew): (company, user, a session id)."""
    tenant = await seed_tenant(dsn, users=1)
    sql = await asyncpg.connect(dsn)
    try:
        user: uuid.UUID = await sql.fetchval("SELECT id FROM users WHERE company_id = $1", tenant.company_id)
    finally:
        await sql.close()
    return tenant.company_id, user, uuid.uuid4()


def config(dsn: str, redis_url: str, llm: FakeOpenAI) -> RuntimeConfig:
    return RuntimeConfig(
        database={"dsn": dsn, "primary": {"min_size": 1, "max_size": 5}},
        redis={"url": redis_url},
        llm={"base_url": llm.base_url, "api_key": LLM_KEY, "model": "gpt-4o-mini", "timeout_s": 30},
        auth={"otp_secret": "bench-otp-secret-0123456789"},
        observability={"health_port": 0, "metrics_port": 0, "log_format": "json", "log_level": "INFO"},
        worker={"kind": "crew", "concurrency": 1},
    )


def crew_jobs(company: uuid.UUID, user: uuid.UUID, session: uuid.UUID, count: int, tag: str) -> list[dict[str, Any]]:
    options = {**SEED_JOB_OPTIONS[CREW_QUEUE], "removeOnComplete": False}
    return [
        {
            "name": PROCESS_CREW,
            "data": {
                "crewData": {
                    "companyId": str(company),
                    "userId": str(user),
                    "sessionId": str(session),
                    "phoneNumber": phone(0),
                    "text": f"Pergunta {tag} número {n}: vocês abrem domingo?",
                    "providerMessageId": f"wamid.bench.{tag}.{n}",
                    "receivedAt": datetime.now(UTC).isoformat(),
                }
            },
            "opts": options,
        }
        for n in range(count)
    ]


async def exchange_as_statements(db: Database, request: CrewRequest, crew_id: uuid.UUID, reply: str) -> bool:
    """The exchange as the crew worker stored it before migration 4: one statement per step, in a transaction."""
    async with db.transaction() as tx:
        claimed = await tx.fetchval(
            "INSERT INTO processed_messages (company_id, provider_message_id, stage) VALUES ($1, $2, $3)"
            " ON CONFLICT DO NOTHING RETURNING true",
            request.company_id,
            request.provider_message_id,
            CREW_STAGE,
        )
        if not claimed:
            return False
        await tx.execute("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0))", str(request.user_id))
        conversation = await tx.fetchval(
            "UPDATE conversations SET updated_at = now() WHERE id = ("
            " SELECT id FROM conversations WHERE user_id = $1 AND crew_id = $2 ORDER BY updated_at DESC LIMIT 1"
            ") RETURNING id",
            request.user_id,
            crew_id,
        )
        if conversation is None:
            conversation = await tx.fetchval(
                "INSERT INTO conversations (company_id, user_id, crew_id) VALUES ($1, $2, $3) RETURNING id",
                request.company_id,
                request.user_id,
                crew_id,
            )
        await tx.execute(
            "INSERT INTO messages (conversation_id, company_id, role, content, provider_message_id)"
            " VALUES ($1, $2, 'user', $3, $4), ($1, $2, 'assistant', $5, NULL)",
            conversation,
            request.company_id,
            request.text,
            request.provider_message_id,
            reply,
        )
    return True


async def exchanges(
    index: int, count: int, db: Database, ids: tuple[uuid.UUID, uuid.UUID, uuid.UUID], crew_id: uuid.UUID
) -> dict[str, float]:
    """Median milliseconds per exchange stored, each way, the two ways alternating call by call.

    Alternating (and the median) keeps a burst of load on a shared machine
    from landing on one way only. The same user and crew as the crew jobs.
    """
    company, user, session = ids
    store = CrewStore(db)

    def request(way: str, n: int) -> CrewRequest:
        return CrewRequest.model_validate(
            crew_jobs(company, user, session, 1, f"{index}.{way}.{n}")[0]["data"]["crewData"]
        )

    ways = {
        "exchange, one call": lambda n: store.store_exchange(request("call", n), crew_id, "Abrimos às 8h."),
        "exchange, statements": lambda n: exchange_as_statements(
            db, request("statements", n), crew_id, "Abrimos às 8h."
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    for n in range(-2, count):  # two to warm up
        for name, way in ways.items():
            started = time.perf_counter()
            assert await way(n)
            if n >= 0:
                times[name].append((time.perf_counter() - started) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


async def per_call(count: int, call: Callable[[int], Awaitable[Any]]) -> float:
    """Mean milliseconds of ``call(n)`` over ``count`` sequential calls (after two to warm up)."""
    for n in range(2):
        await call(-1 - n)
    started = time.perf_counter()
    for n in range(count):
        await call(n)
    return (time.perf_counter() - started) / count * 1000


async def one_round(
    index: int, jobs: int, dsn: str, redis_url: str, llm: FakeOpenAI, ids: tuple[uuid.UUID, uuid.UUID, uuid.UUID]
) -> dict[str, float]:
    company, user, session = ids
    cfg = config(dsn, redis_url, llm)
    kickoff = CrewKickoff(cfg.llm, threads=1)
    crewai = kickoff._crewai
    async with Database(cfg.database) as db:
        definition: CrewDefinition | None = await CrewStore(db).active_crew(company)
        assert definition is not None
        stored = await exchanges(index, jobs, db, ids, definition.id)
    llm_api = crewai.LLM(model="gpt-4o-mini", provider="openai", base_url=llm.base_url, api_key=LLM_KEY)

    async def llm_call(n: int) -> Any:
        return llm_api.call([{"role": "user", "content": f"Pergunta {index}.{n}: vocês abrem domingo?"}])

    agent_spec, task_spec = definition.agents[0], definition.tasks[0]

    async def bare_kickoff(n: int, *, new_llm: bool = False) -> str:
        agent = crewai.Agent(
            role=agent_spec.role,
            goal=agent_spec.goal,
            backstory=agent_spec.backstory,
            llm=crewai.LLM(model="gpt-4o-mini", provider="openai", base_url=llm.base_url, api_key=LLM_KEY)
            if new_llm
            else llm_api,
            allow_delegation=False,
            verbose=False,
        )
        task = crewai.Task(
            description=task_spec.description,
            expected_output=task_spec.expected_output,
            agent=agent,
        )
        crew = crewai.Crew(agents=[agent], tasks=[task], memory=False, cache=False, verbose=False)
        output = await crew.kickoff_async(inputs={"message": f"Pergunta {index}.{n}", "company": COMPANY})
        return str(output.raw)

    async def our_kickoff(n: int) -> Any:
        return await kickoff.answer(definition, message=f"Pergunta {index}.{n}", company=COMPANY)

    figures = {
        "llm call": await per_call(jobs, llm_call),
        "bare kickoff": await per_call(jobs, bare_kickoff),
        "bare, new LLM": await per_call(jobs, lambda n: bare_kickoff(n, new_llm=True)),
        "our kickoff": await per_call(jobs, our_kickoff),
    }
    kickoff.close()
    figures.update(stored)

    queues = Queues(redis_url)
    queue = queues.queue(CREW_QUEUE)
    stop = asyncio.Event()
    worker = asyncio.create_task(serve(cfg, stop=stop))
    kickoffs_before = 0.0
    try:
        for tag, count in ((f"{index}.warm", 2), (f"{index}.run", jobs)):
            kickoffs_before = REGISTRY.get_sample_value("falachefe_crew_kickoff_duration_seconds_sum") or 0.0
            await queue.pause()
            await queue.addBulk(crew_jobs(company, user, session, count, tag))
            await queue.resume()
            # Polled slowly: this process also runs the worker, whose kickoff thread a busy poll would slow.
            while await queues.backlog(CREW_QUEUE) > 0:  # noqa: ASYNC110 - the queue is in Redis
                await asyncio.sleep(0.05)
        counts = await queues.counts(CREW_QUEUE)
        done = await queue.getJobs(["completed"], 0, -1, True)
        run = [job for job in done if str(job.data["crewData"]["providerMessageId"]).startswith(f"wamid.bench.{tag}.")]
        sources = {job.returnvalue.get("source") for job in run}
        if counts["failed"] or len(run) != jobs or sources != {"kickoff"}:
            raise RuntimeError(f"crew jobs: {counts}, {len(run)} of {jobs} measured, sources {sources}")
        # From the first job taken to the last one finished, by bullmq's own timestamps (ms), per job.
        span_ms = max(int(job.finishedOn) for job in run) - min(int(job.processedOn) for job in run)
        figures["crew job"] = span_ms / jobs
        kickoff_seconds = REGISTRY.get_sample_value("falachefe_crew_kickoff_duration_seconds_sum") or 0.0
        figures["kickoff in job"] = (kickoff_seconds - kickoffs_before) / jobs * 1000
        await queue.obliterate(force=True)
    finally:
        stop.set()
        await asyncio.wait_for(worker, timeout=60)
        await queues.close()
    return figures


@contextlib.asynccontextmanager
async def crew_stack(name: str) -> AsyncIterator[tuple[str, str, FakeOpenAI]]:
    """A PostgreSQL (its bench database's DSN), a Redis (its URL) and the LLM stand-in, production logging on.

    The worker's JSON lines at INFO (the schema's handler) go to ``<tmp>/<name>.log`` instead of stderr.
    """
    stream = (Path(tempfile.gettempdir()) / f"{name}.log").open("w")  # open for the whole run: the handler writes to it
    with contextlib.redirect_stderr(stream):
        configure_logging("INFO", "json")
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as workdir:
        pg = PostgresServer(Path(workdir) / "pg").start()
        cache = RedisServer(Path(workdir) / "redis").start()
        llm = FakeOpenAI().start()
        try:
            yield await bench_database(pg), cache.url(0), llm
        finally:
            llm.stop()
            cache.stop()
            pg.stop()


async def run(jobs: int, rounds: int) -> None:
    async with crew_stack("bench-crew-overhead") as (dsn, redis_url, llm):
        ids = await seed(dsn)
        results = [await one_round(index, jobs, dsn, redis_url, llm, ids) for index in range(rounds)]
    median = {name: statistics.median(r[name] for r in results) for name in results[0]}
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(
        f"{jobs} kickoffs per variant, one at a time, median of {rounds} rounds (LLM stand-in answers at once); "
        f"load average {load} on {os.cpu_count()} CPUs"
    )
    print(f"{'variant':<21} {'ms each':>8} {'x llm call':>11}")
    for name, value in median.items():
        print(f"{name:<21} {value:>8.2f} {value / median['llm call']:>10.2f}x")
    worker = [r["crew job"] - r["kickoff in job"] for r in results]
    build = [r["our kickoff"] - r["bare kickoff"] for r in results]
    crewai_own = [r["bare kickoff"] - r["llm call"] for r in results]
    print(
        f"the crew worker around a kickoff: {statistics.median(worker):.2f} ms per job "
        f"(goal: under {GOAL_MS:.0f} ms; rounds {[round(w, 2) for w in worker]}); "
        f"our build and thread hop: {statistics.median(build):.2f} ms; "
        f"CrewAI's own cost beyond the LLM call: {statistics.median(crewai_own):.2f} ms"
    )
    statements = [r["exchange, statements"] / r["exchange, one call"] for r in results]
    print(
        f"the exchange as statements / as one call: {statistics.median(statements):.2f}x "
        f"({statistics.median(r['exchange, statements'] - r['exchange, one call'] for r in results):.2f} ms per job)"
    )
    reuse = [r["bare, new LLM"] / r["bare kickoff"] for r in results]
    print(f"an LLM built per kickoff / one kept: {statistics.median(reuse):.2f}x the time of a bare kickoff")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    # As in production (falachefe_runtime.worker.app.run_worker): uvloop.
    uvloop.run(run(arguments.jobs, arguments.rounds))


if __name__ == "__main__":
    main()
