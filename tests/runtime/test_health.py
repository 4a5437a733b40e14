"""``/healthz``, ``/readyz`` and ``/metrics`` of a running worker, with its database taken away and given back."""

from __future__ import annotations

import asyncpg
import httpx
from worker_harness import add_tenant, database_outage, eventually, finished_job, inbound, running_pool

from falachefe_devstack.postgres import PostgresServer
from falachefe_devstack.process import free_port
from falachefe_runtime.payloads import PROCESS_MESSAGE
from falachefe_runtime.queues import WHATSAPP_QUEUE, Queues


async def test_readyz_follows_the_database_and_metrics_are_served(
    make_config, pg_server: PostgresServer, app_dsn: str, sql: asyncpg.Connection, queues: Queues
) -> None:
    health_port, metrics_port = free_port(), free_port()
    config = make_config("auth", observability={"health_port": health_port, "metrics_port": metrics_port})
    tenant = await add_tenant(sql)
    await sql.close()
    async with running_pool(config), httpx.AsyncClient() as http:

        async def readiness(expected: int) -> dict | None:
            try:
                response = await http.get(f"http://127.0.0.1:{health_port}/readyz")
            except httpx.TransportError:
                return None
            return response.json() if response.status_code == expected else None

        ready = await eventually(lambda: readiness(200), "/readyz 200")
        assert ready["checks"] == {"database": True, "redis": True, "worker": True}
        assert (await http.get(f"http://127.0.0.1:{health_port}/healthz")).json() == {"status": "ok", "problems": []}

        # The database goes away: no new connections, existing ones cut.
        async with database_outage(pg_server, app_dsn):
            down = await eventually(lambda: readiness(503), "/readyz 503 without the database")
            assert down["checks"] == {"database": False, "redis": True, "worker": True}
            # Not ready is not dead: the kubelet must not restart the worker for it.
            assert (await http.get(f"http://127.0.0.1:{health_port}/healthz")).status_code == 200

        back = await eventually(lambda: readiness(200), "/readyz 200 once the database is back")
        assert back["checks"] == {"database": True, "redis": True, "worker": True}

        job_id = await queues.enqueue(WHATSAPP_QUEUE, PROCESS_MESSAGE, inbound(tenant))
        job = await finished_job(queues, WHATSAPP_QUEUE, job_id)
        assert job.returnvalue["outcome"] == "authorized"
        scrape = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
        assert f'falachefe_jobs_processed_total{{outcome="completed",queue="{WHATSAPP_QUEUE}"}}' in scrape
        assert f'falachefe_job_duration_seconds_count{{queue="{WHATSAPP_QUEUE}"}}' in scrape
        assert 'falachefe_auth_decisions_total{event="message",result="authorized"}' in scrape
        assert f'falachefe_job_queue_wait_seconds_count{{queue="{WHATSAPP_QUEUE}"}}' in scrape
        assert 'falachefe_build_info{python="' in scrape
        # Queue depth is the operator's to export, once per pool: here every replica would repeat it.
        assert "queue_depth" not in scrape
