"""Malformed jobs, mixed with valid ones, through a real worker process: each fails at once, naming its field.

The jobs come from the original app's side (the real Node bullmq producer,
with the seed's options: three attempts, ``removeOnFail: 50``), except those
Node cannot produce: a ``data`` that is not JSON is written into the job's
hash with plain Redis commands, as a buggy producer or a hand edit would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as redis
from worker_harness import WorkerProcess, add_tenant, eventually, inbound, node_bullmq

from falachefe_runtime.queues import WHATSAPP_QUEUE, Queues

pytestmark = pytest.mark.slow

MEGABYTE = 1_000_000


def message(base: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """``base`` (a ``process-message`` payload) with some of ``messageData``'s fields replaced."""
    return {"messageData": {**base["messageData"], **fields}}


async def test_each_malformed_job_fails_on_its_first_attempt_naming_the_field_and_every_valid_one_is_done(
    sql: asyncpg.Connection, values: dict[str, Any], redis_url: str, queues: Queues, tmp_path: Path
) -> None:
    tenant = await add_tenant(sql)

    def valid(n: int) -> dict[str, Any]:
        return inbound(tenant, text=f"Mensagem {n}", provider_message_id=f"wamid.valid-{n}")

    base = valid(0)
    # What each malformed job must be failed with: the field, and what is wrong with it.
    malformed: list[tuple[dict[str, Any], str]] = [
        (
            message(base, providerMessageId="wamid.\x00nul"),
            "data.messageData.providerMessageId: Value error, contains NUL",
        ),
        (message(base, text="Olá\x00"), "data.messageData.text: Value error, contains NUL"),
        (message(base, text="x" * MEGABYTE), "data.messageData.text: String should have at most 4096 characters"),
        (
            message(base, providerMessageId="w" * MEGABYTE),
            "data.messageData.providerMessageId: String should have at most 255 characters",
        ),
        (message(base, companyId=12345), "data.messageData.companyId: UUID input should be a string"),
        (message(base, text=["Oi"]), "data.messageData.text: Input should be a valid string"),
        (message(base, timestamp={"when": "ontem"}), "data.messageData.timestamp: Input should be a valid datetime"),
        ({"messageData": "Oi"}, "data.messageData: Input should be a valid dictionary"),
        (message(base, phoneNumber=None), "data.messageData.phoneNumber: Input should be a valid string"),
        ({"messageData": base["messageData"], "padding": "p" * (2 * MEGABYTE)}, "data: 2"),
    ]
    jobs: list[dict[str, Any]] = []
    reasons: list[str | None] = []  # per job: None for a valid one
    for n in range(1, 31):
        jobs.append(valid(n))
        reasons.append(None)
        if n <= len(malformed):
            jobs.append(malformed[n - 1][0])
            reasons.append(malformed[n - 1][1])
    request = {"queue": WHATSAPP_QUEUE, "name": "process-message"}
    ids = node_bullmq("add", {"redis": redis_url, "jobs": [{**request, "data": data} for data in jobs]})["ids"]
    expected = {job_id: reason for job_id, reason in zip(ids, reasons, strict=True) if reason is not None}
    valid_ids = [job_id for job_id, reason in zip(ids, reasons, strict=True) if reason is None]

    # Node cannot write a job whose data is not JSON: a few are spoiled in Redis after the fact.
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    spoiled = {
        valid_ids.pop(): ("data", '{"messageData": {"text": "Oi"'),
        valid_ids.pop(): ("data", "Oi, tudo bem?"),
        valid_ids.pop(): ("opts", "{attempts: 3"),
    }
    for job_id, (field, raw) in spoiled.items():
        assert await client.hset(f"bull:{WHATSAPP_QUEUE}:{job_id}", field, raw) == 0
        expected[job_id] = f"{field}: not valid JSON"

    worker = WorkerProcess("auth", values, tmp_path / "auth.log")
    try:

        async def all_finished() -> dict[str, int] | None:
            counts = await queues.counts(WHATSAPP_QUEUE)
            return counts if counts["completed"] + counts["failed"] == len(ids) else None

        counts = await eventually(all_finished, "every job completed or failed", timeout=120)
    finally:
        worker.stop()
    assert counts["failed"] == len(expected) and counts["active"] == counts["wait"] == counts["delayed"] == 0

    for job_id, reason in expected.items():
        stored = await client.hgetall(f"bull:{WHATSAPP_QUEUE}:{job_id}")
        assert stored["failedReason"].startswith(f"invalid_payload: {reason}"), (job_id, stored["failedReason"])
        # On the first attempt, although the producer asked for three.
        assert stored["atm"] == "1", stored.get("atm")
        assert await queues.queue(WHATSAPP_QUEUE).getJobState(job_id) == "failed"
    for job_id in valid_ids:
        assert await queues.queue(WHATSAPP_QUEUE).getJobState(job_id) == "completed"
    await client.aclose()
    logged = await sql.fetchval("SELECT count(*) FROM whatsapp_auth_logs WHERE company_id = $1", tenant.company_id)
    assert logged == len(valid_ids)
    # No reason or log line quotes a value: the megabyte of "x", the phone number.
    log = worker.log_path.read_text(errors="replace")
    assert "xxxxxxxx" not in log and tenant.phone not in log
