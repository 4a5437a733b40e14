"""Each job the worker finishes is one log line at INFO, with what an operator needs to find and judge it."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from worker_harness import Tenant, add_tenant, finished_job, inbound, running_pool

from falachefe_runtime.observability.logging import JsonFormatter, mask_phone
from falachefe_runtime.payloads import PROCESS_MESSAGE
from falachefe_runtime.queues import WHATSAPP_QUEUE, Queues


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    """Every record at INFO and above, as the worker writes it in production (JSON)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield out
    root.removeHandler(handler)
    root.setLevel(level)


def records_of(out: io.StringIO, job_id: str) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    return [record for record in records if record.get("job_id") == job_id]


async def test_an_authorized_and_a_refused_message_each_log_one_line(
    make_config, queues: Queues, sql: asyncpg.Connection, lines: io.StringIO
) -> None:
    tenant = await add_tenant(sql)
    stranger = Tenant(tenant.company_id, tenant.user_id, "+5521933334444", tenant.crew_id)
    async with running_pool(make_config("auth")):
        authorized = await queues.enqueue(WHATSAPP_QUEUE, PROCESS_MESSAGE, inbound(tenant))
        refused = await queues.enqueue(WHATSAPP_QUEUE, PROCESS_MESSAGE, inbound(stranger))
        crew_job = (await finished_job(queues, WHATSAPP_QUEUE, authorized)).returnvalue["crewJobId"]
        await finished_job(queues, WHATSAPP_QUEUE, refused)

    for job_id, outcome, fields in (
        (authorized, "authorized", {"phone": mask_phone(tenant.phone), "crew_job_id": crew_job}),
        (refused, "refused", {"phone": mask_phone(stranger.phone), "reason": "unknown_number"}),
    ):
        records = records_of(lines, job_id)
        assert len(records) == 1, records
        [record] = records
        assert record["level"] == "info" and record["message"] == "job completed"
        assert record["queue"] == WHATSAPP_QUEUE and record["job_name"] == PROCESS_MESSAGE
        assert (record["outcome"], record["attempt"], record["max_attempts"]) == (outcome, 1, 3)
        assert record["duplicate"] is False
        assert isinstance(record["duration_s"], float) and record["duration_s"] >= 0
        assert {key: record[key] for key in fields} == fields
    assert tenant.phone not in lines.getvalue() and stranger.phone not in lines.getvalue()
