"""End to end: inbound message -> auth worker -> crew worker running a real CrewAI crew -> stored reply.

The LLM is the OpenAI-compatible stand-in (``falachefe_devstack.llm_standin``); CrewAI,
PostgreSQL, Redis and bullmq are real. Both pools run in this process.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from worker_harness import add_tenant, finished_job, inbound, running_pool

from falachefe_devstack.llm_standin import FakeOpenAI
from falachefe_runtime.auth.service import crew_job_id
from falachefe_runtime.crew.service import reply_job_id
from falachefe_runtime.payloads import PROCESS_CREW, PROCESS_MESSAGE
from falachefe_runtime.queues import CREW_QUEUE, OUTBOUND_QUEUE, WHATSAPP_QUEUE, Queues


@pytest.fixture
async def pools(make_config) -> AsyncIterator[None]:
    async with running_pool(make_config("auth")), running_pool(make_config("crew")):
        yield


async def replies(sql: asyncpg.Connection, company_id: uuid.UUID) -> list[asyncpg.Record]:
    return await sql.fetch(
        "SELECT m.role, m.content, m.provider_message_id, c.user_id, c.crew_id FROM messages m"
        " JOIN conversations c ON c.id = m.conversation_id WHERE m.company_id = $1 ORDER BY m.created_at, m.role DESC",
        company_id,
    )


async def test_inbound_message_is_answered_by_the_crew_and_a_repeat_question_from_cache(
    pools: None, queues: Queues, sql: asyncpg.Connection, llm: FakeOpenAI
) -> None:
    tenant = await add_tenant(sql)
    await queues.enqueue(WHATSAPP_QUEUE, PROCESS_MESSAGE, inbound(tenant, "Vocês abrem domingo?", "wamid.first"))
    crew_job = await finished_job(queues, CREW_QUEUE, crew_job_id(tenant.company_id, "wamid.first"), timeout=90)
    assert await crew_job.getState() == "completed", crew_job.failedReason
    assert crew_job.returnvalue["source"] == "kickoff"

    session = await sql.fetchrow("SELECT user_id, is_active FROM whatsapp_sessions")
    assert (session["user_id"], session["is_active"]) == (tenant.user_id, True)
    rows = await replies(sql, tenant.company_id)
    assert [(r["role"], r["provider_message_id"]) for r in rows] == [("user", "wamid.first"), ("assistant", None)]
    assert rows[0]["content"] == "Vocês abrem domingo?"
    reply = rows[1]["content"]
    assert reply.startswith("Falachefe responde:")
    assert {(r["user_id"], r["crew_id"]) for r in rows} == {(tenant.user_id, tenant.crew_id)}

    # The crew really ran: one LLM call whose prompt carries the message and the company's name.
    assert llm.request_count == 1
    prompt = str(llm.requests[0]["messages"])
    assert "Vocês abrem domingo?" in prompt and "Padaria Boa Vista" in prompt

    outbound = await queues.queue(OUTBOUND_QUEUE).getJob(reply_job_id(tenant.company_id, "wamid.first"))
    assert outbound is not None
    assert outbound.data == {
        "companyId": str(tenant.company_id),
        "phoneNumber": tenant.phone,
        "kind": "reply",
        "text": reply,
        "replyTo": "wamid.first",
    }

    # Same question (other case and spacing), new message: answered from the response cache.
    await queues.enqueue(WHATSAPP_QUEUE, PROCESS_MESSAGE, inbound(tenant, "  vocês abrem   DOMINGO? ", "wamid.second"))
    second = await finished_job(queues, CREW_QUEUE, crew_job_id(tenant.company_id, "wamid.second"), timeout=60)
    assert second.returnvalue["source"] == "cache"
    assert llm.request_count == 1
    rows = await replies(sql, tenant.company_id)
    assert [(r["role"], r["content"]) for r in rows[2:]] == [
        ("user", "  vocês abrem   DOMINGO? "),
        ("assistant", reply),
    ]


async def test_a_crew_job_delivered_twice_runs_the_crew_once_and_stores_one_exchange(
    pools: None, queues: Queues, sql: asyncpg.Connection, llm: FakeOpenAI
) -> None:
    tenant = await add_tenant(sql)
    await queues.enqueue(WHATSAPP_QUEUE, PROCESS_MESSAGE, inbound(tenant, "Tem pão de queijo?", "wamid.dup"))
    first = await finished_job(queues, CREW_QUEUE, crew_job_id(tenant.company_id, "wamid.dup"), timeout=90)
    # A redelivery of the same crew job under another id (as after the first one was removed).
    again = await queues.enqueue(CREW_QUEUE, PROCESS_CREW, first.data, job_id="redelivered-dup")
    second = await finished_job(queues, CREW_QUEUE, again)
    assert second.returnvalue == {
        "outcome": "answered",
        "source": "stored",
        "duplicate": True,
        "replyJobId": first.returnvalue["replyJobId"],
    }
    assert llm.request_count == 1
    assert len(await replies(sql, tenant.company_id)) == 2
    assert (await queues.counts(OUTBOUND_QUEUE))["wait"] == 1


async def test_a_company_without_an_active_crew_fails_the_crew_job_permanently(
    pools: None, queues: Queues, sql: asyncpg.Connection, llm: FakeOpenAI
) -> None:
    tenant = await add_tenant(sql, with_crew=False)
    await queues.enqueue(WHATSAPP_QUEUE, PROCESS_MESSAGE, inbound(tenant, provider_message_id="wamid.nocrew"))
    job = await finished_job(queues, CREW_QUEUE, crew_job_id(tenant.company_id, "wamid.nocrew"), timeout=60)
    assert await job.getState() == "failed" and job.attemptsMade == 1
    assert job.failedReason.startswith(f"no_active_crew: company {tenant.company_id} has no active crew")
    assert llm.request_count == 0
    assert await sql.fetchval("SELECT count(*) FROM messages") == 0
