"""Workers as real ``falachefe-runtime worker`` processes: killed mid-job, and stopped with SIGTERM.

The crew pool is used because its jobs can be held in flight from the
outside: the fake LLM server answers only after a delay the test chooses.
"""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from worker_harness import LLM_KEY, OTP_SECRET, Tenant, WorkerProcess, add_tenant, eventually

from falachefe_devstack.llm_standin import FakeOpenAI
from falachefe_devstack.postgres import PASSWORD
from falachefe_runtime.payloads import PROCESS_CREW
from falachefe_runtime.queues import CREW_QUEUE, OUTBOUND_QUEUE, Queues

pytestmark = pytest.mark.slow


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.stop()


def crew_job(tenant: Tenant, text: str, provider_message_id: str) -> dict[str, Any]:
    return {
        "crewData": {
            "companyId": str(tenant.company_id),
            "userId": str(tenant.user_id),
            "sessionId": str(uuid.uuid4()),
            "phoneNumber": tenant.phone,
            "text": text,
            "providerMessageId": provider_message_id,
            "receivedAt": datetime.now(UTC).isoformat(),
        }
    }


async def enqueue_three(queues: Queues, tenant: Tenant) -> list[str]:
    return [
        await queues.enqueue(CREW_QUEUE, PROCESS_CREW, crew_job(tenant, f"Pergunta número {n}", f"wamid.p{n}"))
        for n in range(3)
    ]


async def readiness(worker: WorkerProcess, status: int) -> dict[str, Any] | None:
    """The worker's /readyz answer if it has ``status``, else None."""
    port = worker.health_port
    if port is None:  # not listening yet
        return None
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            response = await http.get(f"http://127.0.0.1:{port}/readyz")
    except httpx.TransportError:
        return None
    return response.json() if response.status_code == status else None


async def in_flight(llm: FakeOpenAI, count: int) -> None:
    async def seen() -> bool:
        return llm.request_count >= count

    await eventually(seen, f"{count} LLM requests in flight", timeout=90)


async def test_jobs_of_a_worker_killed_mid_job_are_finished_by_another_worker_once(
    values: dict[str, Any],
    tmp_path: Path,
    workers: list[WorkerProcess],
    queues: Queues,
    sql: asyncpg.Connection,
    llm: FakeOpenAI,
) -> None:
    # Short locks, so a dead worker's jobs come back in seconds rather than a minute.
    values["queues"] = {"lock_duration_s": 5, "stalled_interval_s": 2}
    tenant = await add_tenant(sql)
    llm.delays.extend([600, 600, 600])  # the first worker's three calls never get an answer
    job_ids = await enqueue_three(queues, tenant)

    first = WorkerProcess("crew", values, tmp_path / "first.log")
    workers.append(first)
    await in_flight(llm, 3)
    assert (await queues.counts(CREW_QUEUE))["active"] == 3
    first.popen.kill()  # SIGKILL: no chance to clean up
    assert first.wait(10) == -signal.SIGKILL

    second = WorkerProcess("crew", values, tmp_path / "second.log")
    workers.append(second)

    async def all_completed() -> bool:
        states = [await queues.queue(CREW_QUEUE).getJobState(job_id) for job_id in job_ids]
        return states == ["completed"] * 3

    await eventually(all_completed, "the three jobs completed by the second worker", timeout=120)
    for job_id in job_ids:
        job = await queues.queue(CREW_QUEUE).getJob(job_id)
        assert job.stalledCounter == 1, "the job came back through the stalled-job check"
        assert job.returnvalue["source"] == "kickoff" and job.returnvalue["duplicate"] is False
    # Three calls lost with the first worker, three answered for the second.
    assert llm.request_count == 6
    stored = await sql.fetch("SELECT role, provider_message_id FROM messages ORDER BY provider_message_id NULLS LAST")
    assert sorted(r["provider_message_id"] for r in stored if r["role"] == "user") == [
        "wamid.p0",
        "wamid.p1",
        "wamid.p2",
    ]
    assert sum(r["role"] == "assistant" for r in stored) == 3
    assert (await queues.counts(OUTBOUND_QUEUE))["wait"] == 3
    assert "job completed" in second.log()


async def test_sigterm_lets_in_flight_jobs_finish_takes_no_new_ones_and_exits_0(
    values: dict[str, Any],
    tmp_path: Path,
    workers: list[WorkerProcess],
    queues: Queues,
    sql: asyncpg.Connection,
    llm: FakeOpenAI,
) -> None:
    values["observability"]["log_format"] = "json"
    tenant = await add_tenant(sql)
    llm.delay_s = 6.0
    job_ids = await enqueue_three(queues, tenant)
    worker = WorkerProcess("crew", values, tmp_path / "worker.log")
    workers.append(worker)
    await in_flight(llm, 3)
    ready = await eventually(lambda: readiness(worker, 200), "/readyz 200 while consuming")
    assert ready["checks"] == {"database": True, "redis": True, "worker": True}

    worker.send(signal.SIGTERM)
    late = await queues.enqueue(CREW_QUEUE, PROCESS_CREW, crew_job(tenant, "Chegou tarde", "wamid.late"))
    # Draining: no longer ready, still finishing its jobs.
    draining = await eventually(lambda: readiness(worker, 503), "/readyz 503 while draining", timeout=10)
    assert draining["shutting_down"] is True
    assert worker.wait(60) == 0, worker.log()

    for job_id in job_ids:
        assert await queues.queue(CREW_QUEUE).getJobState(job_id) == "completed"
    assert await queues.queue(CREW_QUEUE).getJobState(late) == "waiting"
    assert await sql.fetchval("SELECT count(*) FROM messages WHERE role = 'assistant'") == 3
    assert llm.request_count == 3
    log = worker.log()
    for secret in (LLM_KEY, OTP_SECRET, PASSWORD, tenant.phone):
        assert secret not in log
    records = [json.loads(line) for line in log.splitlines()]
    messages = [record["message"] for record in records]
    assert "stopping: no new jobs; waiting for in-flight ones" in messages and messages[-1] == "worker stopped"
    completed = [record for record in records if record["message"] == "job completed"]
    assert sorted(record["job_id"] for record in completed) == sorted(job_ids)
    assert {record["queue"] for record in completed} == {CREW_QUEUE}


async def test_jobs_still_running_when_the_grace_period_ends_go_back_to_the_queue_and_the_exit_code_says_so(
    values: dict[str, Any],
    tmp_path: Path,
    workers: list[WorkerProcess],
    queues: Queues,
    sql: asyncpg.Connection,
    llm: FakeOpenAI,
) -> None:
    values["worker"] = {**values["worker"], "shutdown_grace_s": 1}
    tenant = await add_tenant(sql)
    llm.delays.extend([600, 600, 600])  # kickoffs that will not end in any reasonable time
    await enqueue_three(queues, tenant)
    worker = WorkerProcess("crew", values, tmp_path / "worker.log")
    workers.append(worker)
    await in_flight(llm, 3)

    worker.send(signal.SIGTERM)
    # The kickoff threads cannot be interrupted; the process must not wait for them.
    assert worker.wait(60) == 1, worker.log()
    assert "shutdown grace period over, giving in-flight jobs back to the queue" in worker.log()
    # Nothing was stored; the jobs are back in the queue now, not once their locks expire, no attempt spent.
    counts = await queues.counts(CREW_QUEUE)
    assert counts["active"] == 0 and counts["wait"] + counts["delayed"] == 3, counts
    for job in await queues.queue(CREW_QUEUE).getJobs(["wait", "delayed"], 0, -1):
        assert job.attemptsMade == 0
    assert await sql.fetchval("SELECT count(*) FROM messages") == 0
    assert (await queues.counts(OUTBOUND_QUEUE))["wait"] == 0
