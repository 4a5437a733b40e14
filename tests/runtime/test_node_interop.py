"""Jobs enqueued by the original app's side (Node bullmq 6.x, the seed's options) run on the Python workers."""

from __future__ import annotations

import asyncpg
from worker_harness import add_tenant, eventually, inbound, node_bullmq, running_pool

from falachefe_runtime.auth.service import crew_job_id
from falachefe_runtime.queues import CREW_QUEUE, WHATSAPP_QUEUE, Queues


async def test_message_enqueued_by_node_bullmq_is_authorized_by_the_python_auth_worker(
    sql: asyncpg.Connection, make_config, redis_url: str, queues: Queues
) -> None:
    tenant = await add_tenant(sql)
    plain = inbound(tenant, provider_message_id="wamid.node-plain")
    urgent = {**inbound(tenant, provider_message_id="wamid.node-urgent"), "priority": 1}
    later = {**inbound(tenant, provider_message_id="wamid.node-later"), "delay": 1500}
    ids = node_bullmq(
        "add",
        {
            "redis": redis_url,
            "jobs": [
                {"queue": WHATSAPP_QUEUE, "name": "process-message", "data": data} for data in (plain, urgent, later)
            ],
        },
    )["ids"]
    counts = await queues.counts(WHATSAPP_QUEUE)
    assert (counts["wait"], counts["prioritized"], counts["delayed"]) == (1, 1, 1)

    async def all_three_logged() -> list[asyncpg.Record] | None:
        rows = await sql.fetch("SELECT * FROM whatsapp_auth_logs WHERE company_id = $1", tenant.company_id)
        return rows if len(rows) == 3 else None

    async with running_pool(make_config("auth")):
        logged = await eventually(all_three_logged, "three auth log rows")
    assert sorted(row["provider_message_id"] for row in logged) == [
        "wamid.node-later",
        "wamid.node-plain",
        "wamid.node-urgent",
    ]
    assert all(row["success"] and row["user_id"] == tenant.user_id for row in logged)
    assert {row["reason"] for row in logged} == {"authorized"}

    sessions = await sql.fetch("SELECT * FROM whatsapp_sessions WHERE user_id = $1", tenant.user_id)
    assert len(sessions) == 1 and sessions[0]["is_active"]

    for job_id in ids:
        job = await queues.queue(WHATSAPP_QUEUE).getJob(job_id)
        assert job is not None and await job.getState() == "completed"
        # The seed's options travelled with the job from Node.
        assert job.opts["attempts"] == 3
        assert job.opts["backoff"] == {"type": "exponential", "delay": 2000}
        assert job.returnvalue["outcome"] == "authorized"
        assert job.returnvalue["sessionId"] == str(sessions[0]["id"])

    # Each authorized message was handed to the crew queue under its own deterministic id.
    for provider_id in ("wamid.node-plain", "wamid.node-urgent", "wamid.node-later"):
        crew_job = await queues.queue(CREW_QUEUE).getJob(crew_job_id(tenant.company_id, provider_id))
        assert crew_job is not None
        assert crew_job.data["crewData"]["userId"] == str(tenant.user_id)
        assert crew_job.data["crewData"]["sessionId"] == str(sessions[0]["id"])
        assert crew_job.opts["backoff"] == {"type": "exponential", "delay": 3000}
