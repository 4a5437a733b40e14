"""A company to talk to: its users and a one-agent crew, written straight into the runtime's schema.

The demo and the end-to-end tests seed the same tenant; messages to it are
answered by the crew (through the LLM stand-in) once the auth worker has
recognised the user's phone number.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from falachefe_runtime.payloads import InboundMessage, ProcessMessage


@dataclass(frozen=True)
class Tenant:
    company_id: uuid.UUID
    phones: tuple[str, ...]


def phone(i: int) -> str:
    return f"+55119{i:08d}"


async def seed_tenant(dsn: str, users: int, company: str = "Padaria Demo") -> Tenant:
    """A company with ``users`` users (phones ``phone(0..users-1)``) and an active one-agent crew."""
    connection = await asyncpg.connect(dsn)
    try:
        async with connection.transaction():
            company_id = await connection.fetchval(
                "INSERT INTO companies (name, domain) VALUES ($1, $2) RETURNING id", company, "demo.example"
            )
            phones = tuple(phone(i) for i in range(users))
            await connection.executemany(
                "INSERT INTO users (company_id, phone_number, name) VALUES ($1, $2, $3)",
                [(company_id, number, f"Cliente {i}") for i, number in enumerate(phones)],
            )
            crew_id = await connection.fetchval(
                "INSERT INTO crews (company_id, name) VALUES ($1, $2) RETURNING id", company_id, "Atendimento"
            )
            agent_id = await connection.fetchval(
                "INSERT INTO crew_agents (crew_id, role, goal, backstory, position) "
                "VALUES ($1, $2, $3, $4, 0) RETURNING id",
                crew_id,
                "Atendente",
                "Responder clientes da padaria com cordialidade",
                "Trabalha na padaria há dez anos.",
            )
            await connection.execute(
                "INSERT INTO crew_tasks (crew_id, agent_id, description, expected_output, position) "
                "VALUES ($1, $2, $3, $4, 0)",
                crew_id,
                agent_id,
                "Responda à mensagem do cliente: {message}",
                "Uma resposta curta e educada",
            )
    finally:
        await connection.close()
    return Tenant(company_id=company_id, phones=phones)


def seed_tenant_sync(dsn: str, users: int) -> Tenant:
    return asyncio.run(seed_tenant(dsn, users))


def process_message_job(tenant: Tenant, i: int, text: str) -> tuple[str, dict[str, Any]]:
    """A ``process-message`` job as the original app enqueues it (camelCase JSON under ``messageData``).

    Returns the message's provider id (what a reply names in ``replyTo``) and the job's data.
    """
    message = InboundMessage(
        phone_number=tenant.phones[i % len(tenant.phones)],
        company_id=tenant.company_id,
        text=text,
        provider_message_id=f"wamid.{i:05d}.{uuid.uuid4().hex[:8]}",
        timestamp=datetime.now(UTC),
    )
    return message.provider_message_id, ProcessMessage(message_data=message).model_dump(mode="json", by_alias=True)
