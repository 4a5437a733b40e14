"""The auth worker against real PostgreSQL and Redis: each kind of input gets its clear outcome."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from prometheus_client import REGISTRY
from worker_harness import (
    OTP_SECRET,
    Tenant,
    add_tenant,
    cli,
    database_outage,
    eventually,
    finished_job,
    inbound,
    running_pool,
)

from falachefe_devstack.postgres import PostgresServer
from falachefe_devstack.process import free_port
from falachefe_runtime.auth.codes import code_mac
from falachefe_runtime.auth.service import crew_job_id
from falachefe_runtime.payloads import PROCESS_MESSAGE, REQUEST_LINK_CODE, SEND_MESSAGE, VERIFY_LINK_CODE
from falachefe_runtime.queues import CREW_QUEUE, OUTBOUND_QUEUE, WHATSAPP_QUEUE, Queues


@pytest.fixture
async def auth_pool(make_config) -> AsyncIterator[None]:
    async with running_pool(make_config("auth")):
        yield


async def run(queues: Queues, name: str, data: dict) -> object:
    job_id = await queues.enqueue(WHATSAPP_QUEUE, name, data)
    return await finished_job(queues, WHATSAPP_QUEUE, job_id)


def failures(reason: str) -> float:
    return REGISTRY.get_sample_value("falachefe_jobs_failed_total", {"queue": WHATSAPP_QUEUE, "reason": reason}) or 0.0


# -- inbound messages ------------------------------------------------------------


async def test_malformed_payload_fails_at_once_naming_the_fields_and_stays_in_the_failed_set(
    auth_pool: None, queues: Queues, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = failures("invalid_payload")
    job = await run(
        queues,
        PROCESS_MESSAGE,
        {"messageData": {"phoneNumber": "98765-4321", "companyId": "padaria", "timestamp": "yesterday"}},
    )
    assert await job.getState() == "failed"
    # Seed options give three attempts; a payload that cannot validate used one.
    assert job.opts["attempts"] == 3 and job.attemptsMade == 1
    reason = job.failedReason
    assert reason.startswith("invalid_payload: ")
    for field in ("messageData.phoneNumber", "messageData.companyId", "messageData.text", "messageData.timestamp"):
        assert field in reason
    assert "98765-4321" not in reason and "padaria" not in reason
    assert failures("invalid_payload") == before + 1
    [failed] = await queues.failed_jobs(WHATSAPP_QUEUE)
    assert failed.id == job.id and failed.failed_reason == reason
    # What an operator sees.
    monkeypatch.setenv("FALACHEFE_REDIS__URL", redis_url)
    code, out = await asyncio.to_thread(cli, ["failed", "--queue", WHATSAPP_QUEUE])
    assert code == 0
    [shown] = json.loads(out)
    assert (shown["id"], shown["name"], shown["failedReason"], shown["attemptsMade"]) == (
        job.id,
        PROCESS_MESSAGE,
        reason,
        1,
    )


async def test_unknown_job_name_fails_permanently(auth_pool: None, queues: Queues) -> None:
    job = await run(queues, "process-mesage", {"anything": 1})
    assert await job.getState() == "failed" and job.attemptsMade == 1
    assert "unknown_job" in job.failedReason and "'process-mesage'" in job.failedReason
    assert "process-message" in job.failedReason


async def test_message_for_an_unknown_company_fails_permanently(
    auth_pool: None, queues: Queues, sql: asyncpg.Connection
) -> None:
    tenant = Tenant(company_id=uuid.uuid4(), user_id=uuid.uuid4(), phone="+5511987654321", crew_id=uuid.uuid4())
    job = await run(queues, PROCESS_MESSAGE, inbound(tenant))
    assert await job.getState() == "failed" and job.attemptsMade == 1
    assert job.failedReason.startswith(f"unknown_company: company {tenant.company_id} does not exist")
    assert await sql.fetchval("SELECT count(*) FROM whatsapp_auth_logs") == 0


@pytest.mark.parametrize(
    ("registered", "blocked", "reason"), [(False, False, "unknown_number"), (True, True, "blocked")]
)
async def test_unknown_and_blocked_numbers_are_refused_logged_and_not_handed_on(
    auth_pool: None, queues: Queues, sql: asyncpg.Connection, registered: bool, blocked: bool, reason: str
) -> None:
    tenant = await add_tenant(sql, phone="+5511911112222", blocked=blocked)
    sender = tenant if registered else Tenant(tenant.company_id, tenant.user_id, "+5521933334444", tenant.crew_id)
    job = await run(queues, PROCESS_MESSAGE, inbound(sender, provider_message_id="wamid.refused"))
    # Refusing is the job done, not a failure to retry.
    assert await job.getState() == "completed" and job.attemptsMade == 1
    assert job.returnvalue == {"outcome": "refused", "reason": reason, "duplicate": False}
    row = await sql.fetchrow("SELECT * FROM whatsapp_auth_logs WHERE provider_message_id = 'wamid.refused'")
    assert (row["success"], row["reason"], row["phone_number"]) == (False, reason, sender.phone)
    assert row["user_id"] == (tenant.user_id if registered else None)
    assert await sql.fetchval("SELECT count(*) FROM whatsapp_sessions") == 0
    assert await queues.queue(CREW_QUEUE).getJob(crew_job_id(tenant.company_id, "wamid.refused")) is None


async def test_the_same_provider_message_twice_has_one_effect(
    auth_pool: None, queues: Queues, sql: asyncpg.Connection
) -> None:
    tenant = await add_tenant(sql)
    first = await run(queues, PROCESS_MESSAGE, inbound(tenant, provider_message_id="wamid.twice"))
    session_before = await sql.fetchrow("SELECT id, expires_at, last_used_at FROM whatsapp_sessions")
    second = await run(queues, PROCESS_MESSAGE, inbound(tenant, provider_message_id="wamid.twice"))

    assert first.returnvalue["duplicate"] is False and second.returnvalue["duplicate"] is True
    assert first.returnvalue["sessionId"] == second.returnvalue["sessionId"] == str(session_before["id"])
    assert await sql.fetchval("SELECT count(*) FROM whatsapp_auth_logs WHERE provider_message_id = 'wamid.twice'") == 1
    session_after = await sql.fetchrow("SELECT id, expires_at, last_used_at FROM whatsapp_sessions")
    assert session_after == session_before
    # Handed on twice under one id: BullMQ keeps one crew job.
    assert first.returnvalue["crewJobId"] == second.returnvalue["crewJobId"]
    assert (await queues.counts(CREW_QUEUE))["wait"] == 1


async def test_a_new_message_extends_the_session_and_an_expired_one_is_replaced(
    auth_pool: None, queues: Queues, sql: asyncpg.Connection
) -> None:
    tenant = await add_tenant(sql)
    await sql.execute(
        "INSERT INTO whatsapp_sessions (user_id, company_id, phone_number, expires_at, last_used_at)"
        " VALUES ($1, $2, $3, now() - interval '1 hour', now() - interval '25 hours')",
        tenant.user_id,
        tenant.company_id,
        tenant.phone,
    )
    job = await run(queues, PROCESS_MESSAGE, inbound(tenant))
    sessions = await sql.fetch(
        "SELECT id, is_active, expires_at > now() + interval '23 hours' AS fresh FROM whatsapp_sessions"
        " ORDER BY created_at"
    )
    assert [(s["is_active"], s["fresh"]) for s in sessions] == [(False, False), (True, True)]
    assert job.returnvalue["sessionId"] == str(sessions[1]["id"])


# -- phone linking codes ---------------------------------------------------------


async def sent_code(queues: Queues, phone: str) -> str:
    """The code in the latest link-code message the WhatsApp sender was asked to deliver to ``phone``."""
    jobs = await queues.queue(OUTBOUND_QUEUE).getJobs(["wait"], 0, -1, False)
    for job in jobs:
        if job.name == SEND_MESSAGE and job.data["kind"] == "link-code" and job.data["phoneNumber"] == phone:
            match = re.search(r"\b(\d{6})\b", job.data["text"])
            assert match is not None
            return match.group(1)
    raise AssertionError(f"no link code was sent to {phone}")


def link(tenant: Tenant, code: str | None = None) -> dict:
    data = {"companyId": str(tenant.company_id), "phoneNumber": tenant.phone}
    return {**data, "code": code} if code is not None else data


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


async def test_link_code_is_stored_hashed_and_verifying_it_opens_a_session(
    auth_pool: None, queues: Queues, sql: asyncpg.Connection
) -> None:
    tenant = await add_tenant(sql)
    requested = await run(queues, REQUEST_LINK_CODE, link(tenant))
    assert requested.returnvalue["outcome"] == "code_sent"
    code = await sent_code(queues, tenant.phone)
    assert code not in str(requested.returnvalue)

    stored = await sql.fetchrow("SELECT code_hash, attempts FROM phone_link_codes")
    assert bytes(stored["code_hash"]) == code_mac(OTP_SECRET.encode(), tenant.company_id, tenant.phone, code)
    assert code.encode() not in bytes(stored["code_hash"])

    miss = await run(queues, VERIFY_LINK_CODE, link(tenant, wrong(code)))
    assert miss.returnvalue == {"outcome": "wrong_code", "attemptsLeft": 4}
    hit = await run(queues, VERIFY_LINK_CODE, link(tenant, code))
    assert hit.returnvalue["outcome"] == "verified"
    session = await sql.fetchrow("SELECT id, user_id, is_active FROM whatsapp_sessions")
    assert (session["user_id"], session["is_active"]) == (tenant.user_id, True)
    assert hit.returnvalue["sessionId"] == str(session["id"])
    # A used code does not work twice.
    again = await run(queues, VERIFY_LINK_CODE, link(tenant, code))
    assert again.returnvalue["outcome"] == "no_code"
    logged = await sql.fetch("SELECT event, success, reason FROM whatsapp_auth_logs ORDER BY created_at")
    assert [(r["event"], r["success"], r["reason"]) for r in logged] == [
        ("link_code_request", True, "code_issued"),
        ("link_code_verify", False, "wrong_code"),
        ("link_code_verify", True, "verified"),
        ("link_code_verify", False, "no_code"),
    ]


async def test_guessing_stops_after_the_attempt_limit_even_for_the_right_code(
    auth_pool: None, queues: Queues, sql: asyncpg.Connection
) -> None:
    tenant = await add_tenant(sql)
    await run(queues, REQUEST_LINK_CODE, link(tenant))
    code = await sent_code(queues, tenant.phone)
    outcomes = [(await run(queues, VERIFY_LINK_CODE, link(tenant, wrong(code)))).returnvalue for _ in range(5)]
    assert [o["attemptsLeft"] for o in outcomes] == [4, 3, 2, 1, 0]
    assert {o["outcome"] for o in outcomes} == {"wrong_code"}
    late = await run(queues, VERIFY_LINK_CODE, link(tenant, code))
    assert late.returnvalue == {"outcome": "too_many_attempts", "attemptsLeft": 0}
    assert await sql.fetchval("SELECT count(*) FROM whatsapp_sessions") == 0


async def test_link_code_requests_are_rate_limited_per_phone(
    auth_pool: None, queues: Queues, sql: asyncpg.Connection
) -> None:
    tenant = await add_tenant(sql, phone="+5511955556666")
    other = await add_tenant(sql, phone="+5511977778888")
    outcomes = [(await run(queues, REQUEST_LINK_CODE, link(tenant))).returnvalue["outcome"] for _ in range(4)]
    assert outcomes == ["code_sent", "code_sent", "code_sent", "refused"]
    limited = await sql.fetchrow(
        "SELECT reason FROM whatsapp_auth_logs WHERE phone_number = $1 ORDER BY created_at DESC LIMIT 1", tenant.phone
    )
    assert limited["reason"] == "rate_limited"
    # Another phone has its own budget.
    assert (await run(queues, REQUEST_LINK_CODE, link(other))).returnvalue["outcome"] == "code_sent"
    # Only the latest code of a phone is live: earlier ones were retired.
    live = await sql.fetchval(
        "SELECT count(*) FROM phone_link_codes WHERE phone_number = $1 AND consumed_at IS NULL", tenant.phone
    )
    assert live == 1


async def test_link_code_for_an_unregistered_phone_is_refused_without_sending_anything(
    auth_pool: None, queues: Queues, sql: asyncpg.Connection
) -> None:
    tenant = await add_tenant(sql)
    stranger = Tenant(tenant.company_id, tenant.user_id, "+5531999990000", tenant.crew_id)
    job = await run(queues, REQUEST_LINK_CODE, link(stranger))
    assert job.returnvalue == {"outcome": "refused", "reason": "unknown_number"}
    assert (await queues.counts(OUTBOUND_QUEUE))["wait"] == 0
    assert await sql.fetchval("SELECT count(*) FROM phone_link_codes") == 0


async def test_a_database_outage_pauses_the_worker_and_hands_the_job_back_without_spending_an_attempt(
    make_config, queues: Queues, sql: asyncpg.Connection, pg_server: PostgresServer, app_dsn: str
) -> None:
    health_port = free_port()
    tenant = await add_tenant(sql)
    await sql.close()
    returned_before = sample("falachefe_jobs_returned_total", queue=WHATSAPP_QUEUE)
    outages_before = sample("falachefe_dependency_outages_total", dependency="database")
    retries_before = sample("falachefe_job_retries_total", queue=WHATSAPP_QUEUE)
    async with running_pool(make_config("auth", observability={"health_port": health_port})):
        # The outage must hit a running worker, not its start-up (which would
        # fail fast and leave the restart to Kubernetes): one message through first.
        warm_up = await queues.enqueue(WHATSAPP_QUEUE, PROCESS_MESSAGE, inbound(tenant, provider_message_id="wamid.up"))
        warmed = await finished_job(queues, WHATSAPP_QUEUE, warm_up)
        assert warmed.returnvalue is not None, f"the warm-up job failed: {warmed.failedReason}"
        assert warmed.returnvalue["outcome"] == "authorized"
        async with database_outage(pg_server, app_dsn):
            job_id = await queues.enqueue(
                WHATSAPP_QUEUE, PROCESS_MESSAGE, inbound(tenant, provider_message_id="wamid.outage")
            )

            async def handed_back() -> bool:
                return sample("falachefe_jobs_returned_total", queue=WHATSAPP_QUEUE) > returned_before

            await eventually(handed_back, "the job handed back to its queue")
            job = await queues.queue(WHATSAPP_QUEUE).getJob(job_id)
            assert job.attemptsMade == 0, "an outage spends no attempt"
            assert await job.getState() in ("delayed", "waiting")
            assert sample("falachefe_dependency_up", dependency="database") == 0
            assert sample("falachefe_dependency_outages_total", dependency="database") == outages_before + 1
            # Not ready, saying which dependency and how it failed; the worker takes nothing meanwhile.
            down = await readiness(health_port, 503)
            assert down is not None and down["outage"]["dependencies"] == {
                "database": "ObjectNotInPrerequisiteStateError"
            }
            assert "postgres" not in json.dumps(down) and "127.0.0.1" not in json.dumps(down)
            await asyncio.sleep(2)  # past the job's return delay: still not taken while paused
            assert await job.getState() in ("delayed", "waiting")

        job = await finished_job(queues, WHATSAPP_QUEUE, job_id)
        assert await job.getState() == "completed" and job.attemptsMade == 1
        assert job.returnvalue["outcome"] == "authorized"
        assert sample("falachefe_dependency_up", dependency="database") == 1
        assert sample("falachefe_job_retries_total", queue=WHATSAPP_QUEUE) == retries_before
        back = await readiness(health_port, 200)
        assert back is not None and back["outage"] is None
        assert (await queues.counts(WHATSAPP_QUEUE))["failed"] == 0
    sql = await asyncpg.connect(app_dsn)
    try:
        assert (
            await sql.fetchval("SELECT count(*) FROM whatsapp_auth_logs WHERE provider_message_id = 'wamid.outage'")
            == 1
        )
    finally:
        await sql.close()


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def readiness(port: int, status: int) -> dict | None:
    """The worker's /readyz answer once it has ``status`` (None if it never does)."""

    async def probe() -> dict | None:
        async with httpx.AsyncClient(timeout=5) as http:
            try:
                response = await http.get(f"http://127.0.0.1:{port}/readyz")
            except httpx.TransportError:
                return None
        return response.json() if response.status_code == status else None

    return await eventually(probe, f"/readyz {status}")
