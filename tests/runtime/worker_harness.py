"""Helpers for the worker tests: configs, data, running pools, Node bullmq, worker subprocesses.

Workers run two ways: in the test's process (``running_pool``: the real
``serve()`` with its database pools, cache, health server and bullmq
worker, stopped through its stop event) for most tests, and as real
``falachefe-runtime worker`` subprocesses (``WorkerProcess``) where a test
needs to kill one or send it a signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from bullmq import Job

from falachefe_devstack.postgres import PostgresServer
from falachefe_devstack.waiting import async_wait_for
from falachefe_runtime.cli import main
from falachefe_runtime.config import RuntimeConfig
from falachefe_runtime.queues import Queues
from falachefe_runtime.worker.app import serve

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
RUNTIME_CLI = REPO / ".venv" / "bin" / "falachefe-runtime"
NODE_DIR = REPO / "tests" / "node"
OTP_SECRET = "test-otp-secret-0123456789"
LLM_KEY = "sk-test-not-a-real-key"


def config_values(app_dsn: str, redis_url: str, llm_base_url: str, **sections: dict[str, Any]) -> dict[str, Any]:
    """A runtime configuration for tests, as nested dicts (``sections`` override per section)."""
    values: dict[str, Any] = {
        "database": {"dsn": app_dsn, "primary": {"min_size": 1, "max_size": 5}},
        "redis": {"url": redis_url},
        "llm": {"base_url": llm_base_url, "api_key": LLM_KEY, "model": "gpt-4o-mini", "timeout_s": 30},
        "auth": {"otp_secret": OTP_SECRET},
        # Any free ports, on loopback only: a test's servers are not for the network.
        "observability": {"health_port": 0, "metrics_port": 0, "listen_address": "127.0.0.1", "log_format": "text"},
        "worker": {"shutdown_grace_s": 20},
    }
    for section, overrides in sections.items():
        values[section] = {**values.get(section, {}), **overrides}
    return values


@contextlib.asynccontextmanager
async def running_pool(config: RuntimeConfig) -> AsyncIterator[asyncio.Task[int]]:
    """``serve(config)`` in this process; stopped gracefully on the way out."""
    stop = asyncio.Event()
    task = asyncio.create_task(serve(config, stop=stop), name=f"pool-{config.worker.kind.value}")
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=60)


async def eventually(probe: Callable[[], Awaitable[T]], what: str, timeout: float = 30.0) -> T:
    """``probe()`` once it returns something truthy (polls with a generous deadline)."""
    return await async_wait_for(probe, timeout=timeout, interval=0.1, what=what)


@contextlib.asynccontextmanager
async def database_outage(pg_server: PostgresServer, dsn: str) -> AsyncIterator[None]:
    """The database of ``dsn`` refuses new connections and its sessions are cut, until the block ends."""
    database = dsn.rsplit("/", 1)[1]
    admin = await asyncpg.connect(pg_server.dsn())
    try:
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
        yield
    finally:
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        await admin.close()


# -- data ------------------------------------------------------------------------


@dataclass(frozen=True)
class Tenant:
    company_id: uuid.UUID
    user_id: uuid.UUID
    phone: str
    crew_id: uuid.UUID


async def add_tenant(
    sql: asyncpg.Connection, *, phone: str = "+5511987654321", blocked: bool = False, with_crew: bool = True
) -> Tenant:
    """A company with one user (``phone``) and, unless told not to, an active one-agent crew."""
    company = await sql.fetchval("INSERT INTO companies (name) VALUES ('Padaria Boa Vista') RETURNING id")
    user = await sql.fetchval(
        "INSERT INTO users (company_id, phone_number, name, is_blocked) VALUES ($1, $2, 'Ana', $3) RETURNING id",
        company,
        phone,
        blocked,
    )
    crew = uuid.uuid4()
    if with_crew:
        await sql.execute(
            "INSERT INTO crews (id, company_id, name, process) VALUES ($1, $2, 'Atendimento', 'sequential')",
            crew,
            company,
        )
        agent = await sql.fetchval(
            "INSERT INTO crew_agents (crew_id, role, goal, backstory) VALUES ($1, 'Atendente', $2, $3) RETURNING id",
            crew,
            "Responder os clientes da {company} com cordialidade",
            "Você atende pelo WhatsApp.",
        )
        await sql.execute(
            "INSERT INTO crew_tasks (crew_id, agent_id, description, expected_output) VALUES ($1, $2, $3, $4)",
            crew,
            agent,
            "Responda à mensagem do cliente: {message}",
            "Uma resposta curta e educada",
        )
    return Tenant(company_id=company, user_id=user, phone=phone, crew_id=crew)


def inbound(
    tenant: Tenant, text: str = "Qual o horário de hoje?", provider_message_id: str | None = None
) -> dict[str, Any]:
    """A ``process-message`` payload as the original app produces it (camelCase, ``messageData``)."""
    return {
        "messageData": {
            "phoneNumber": tenant.phone,
            "companyId": str(tenant.company_id),
            "text": text,
            "providerMessageId": provider_message_id or f"wamid.{uuid.uuid4().hex}",
            "timestamp": 1_790_000_000_000,
        }
    }


def cli(argv: list[str]) -> tuple[int, str]:
    """``falachefe-runtime <argv>`` in this process: exit code and standard output.

    The CLI runs its own event loop: from an async test, call it with ``asyncio.to_thread``.
    """
    out = io.StringIO()
    return main(argv, out=out), out.getvalue()


# -- Node bullmq -----------------------------------------------------------------


def node_bullmq(command: str, request: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    """Run tests/node/bullmq.mjs (the real Node bullmq 6.x) and return its JSON answer."""
    if not (NODE_DIR / "node_modules" / "bullmq").exists():
        subprocess.run(["npm", "ci", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund"], check=True, timeout=300)
    done = subprocess.run(
        ["node", str(NODE_DIR / "bullmq.mjs"), command],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"node bullmq {command} failed:\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- worker subprocesses ---------------------------------------------------------


def worker_env(values: dict[str, Any], pool: str) -> dict[str, str]:
    """The environment the operator's Deployment gives a worker: FALACHEFE_<SECTION>__<FIELD>."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FALACHEFE_")}
    for section, fields in values.items():
        for name, value in fields.items():
            if isinstance(value, dict):
                for sub, subvalue in value.items():
                    env[f"FALACHEFE_{section.upper()}__{name.upper()}__{sub.upper()}"] = str(subvalue)
            else:
                env[f"FALACHEFE_{section.upper()}__{name.upper()}"] = str(value)
    env["FALACHEFE_WORKER__KIND"] = pool
    env["CREWAI_TESTING"] = "true"
    return env


#: ``health_port`` in the worker's "listening" line, as the text (``health_port=N``) or JSON format writes it.
_HEALTH_PORT = re.compile(r'health_port"?[=:]\s*(\d+)')


class WorkerProcess:
    """``falachefe-runtime worker --pool <pool>`` as a real process, its output in a log file."""

    def __init__(self, pool: str, values: dict[str, Any], log_path: Path) -> None:
        # Ports the worker picks itself as it binds (``health_port``): a port chosen here could be
        # taken by another connection while the process starts.
        observability = {**values["observability"], "health_port": 0, "metrics_port": 0}
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.popen = subprocess.Popen(
            [str(RUNTIME_CLI), "worker", "--pool", pool],
            env=worker_env({**values, "observability": observability}, pool),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def send(self, signum: signal.Signals) -> None:
        self.popen.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    @property
    def health_port(self) -> int | None:
        """The health server's port, once the worker's log says it listens (None before)."""
        for line in self.log().splitlines():
            if "health and metrics listening" in line and (found := _HEALTH_PORT.search(line)):
                return int(found.group(1))
        return None

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)
        self._log.close()


async def finished_job(queues: Queues, queue: str, job_id: str, timeout: float = 30.0) -> Job:
    """The job once it is completed or failed (permanently: not waiting for a retry)."""

    async def probe() -> Job | None:
        job = await queues.queue(queue).getJob(job_id)
        if job is not None and await job.getState() in ("completed", "failed"):
            # Read again: the job may have finished between the read above and the state
            # check, and that read would carry no return value or failure reason.
            return await queues.queue(queue).getJob(job_id)
        return None

    return await eventually(probe, f"job {job_id} on {queue} to finish", timeout)
