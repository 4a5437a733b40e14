"""The crew worker's exchange against a real PostgreSQL: stored once, one conversation per user and crew, atomic.

``CrewStore.store_exchange`` is one call of the server-side function that
migration 4 creates; these tests hold it to what the statements it replaced
guaranteed, under concurrency too.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
from worker_harness import Tenant, add_tenant

from falachefe_runtime.config import DatabaseSettings
from falachefe_runtime.crew.store import CREW_STAGE, CrewStore
from falachefe_runtime.db import Database
from falachefe_runtime.payloads import CrewRequest


@pytest.fixture
async def store(app_dsn: str) -> AsyncIterator[CrewStore]:
    async with Database(DatabaseSettings(dsn=app_dsn, primary={"min_size": 1, "max_size": 10})) as db:
        yield CrewStore(db)


def request(tenant: Tenant, provider_message_id: str, text: str = "Vocês abrem domingo?") -> CrewRequest:
    return CrewRequest(
        company_id=tenant.company_id,
        user_id=tenant.user_id,
        session_id=uuid.uuid4(),
        phone_number=tenant.phone,
        text=text,
        provider_message_id=provider_message_id,
        received_at=datetime.now(UTC),
    )


async def exchanges(sql: asyncpg.Connection, company_id: uuid.UUID) -> list[asyncpg.Record]:
    return await sql.fetch(
        "SELECT m.conversation_id, m.role, m.content, m.provider_message_id, m.created_at, c.user_id, c.crew_id"
        " FROM messages m JOIN conversations c ON c.id = m.conversation_id"
        " WHERE m.company_id = $1 ORDER BY m.created_at, m.role DESC",
        company_id,
    )


async def test_an_exchange_is_stored_once_and_a_repeat_finds_its_reply(
    store: CrewStore, sql: asyncpg.Connection
) -> None:
    tenant = await add_tenant(sql)
    message = request(tenant, "wamid.once")
    assert await store.stored_reply(tenant.company_id, "wamid.once") is None

    assert await store.store_exchange(message, tenant.crew_id, "Abrimos das 8h às 12h.") is True
    rows = await exchanges(sql, tenant.company_id)
    assert [(r["role"], r["content"], r["provider_message_id"]) for r in rows] == [
        ("user", "Vocês abrem domingo?", "wamid.once"),
        ("assistant", "Abrimos das 8h às 12h.", None),
    ]
    assert rows[0]["created_at"] == rows[1]["created_at"]
    assert {(r["user_id"], r["crew_id"]) for r in rows} == {(tenant.user_id, tenant.crew_id)}
    claims = await sql.fetch("SELECT company_id, provider_message_id, stage FROM processed_messages")
    assert [tuple(claim) for claim in claims] == [(tenant.company_id, "wamid.once", CREW_STAGE)]
    assert await store.stored_reply(tenant.company_id, "wamid.once") == "Abrimos das 8h às 12h."

    # The same message again (a redelivered job whose first run stored it): nothing more is stored.
    assert await store.store_exchange(message, tenant.crew_id, "Outra resposta") is False
    assert len(await exchanges(sql, tenant.company_id)) == 2
    assert await store.stored_reply(tenant.company_id, "wamid.once") == "Abrimos das 8h às 12h."


async def test_a_message_stored_by_several_workers_at_once_is_stored_once(
    store: CrewStore, sql: asyncpg.Connection
) -> None:
    tenant = await add_tenant(sql)
    message = request(tenant, "wamid.race")
    results = await asyncio.gather(*(store.store_exchange(message, tenant.crew_id, f"resposta {n}") for n in range(8)))
    assert sorted(results) == [False] * 7 + [True]
    rows = await exchanges(sql, tenant.company_id)
    assert [r["role"] for r in rows] == ["user", "assistant"]
    assert await store.stored_reply(tenant.company_id, "wamid.race") == rows[1]["content"]


async def test_concurrent_messages_of_one_user_go_to_one_conversation(
    store: CrewStore, sql: asyncpg.Connection
) -> None:
    tenant = await add_tenant(sql)
    results = await asyncio.gather(
        *(
            store.store_exchange(request(tenant, f"wamid.burst.{n}", f"pergunta {n}"), tenant.crew_id, f"resposta {n}")
            for n in range(10)
        )
    )
    assert results == [True] * 10
    assert await sql.fetchval("SELECT count(*) FROM conversations") == 1
    rows = await exchanges(sql, tenant.company_id)
    assert len(rows) == 20
    # Each message is stored with its own reply (same created_at, same conversation).
    for n in range(10):
        assert await store.stored_reply(tenant.company_id, f"wamid.burst.{n}") == f"resposta {n}"


async def test_the_next_message_continues_the_conversation_and_tenants_and_crews_stay_apart(
    store: CrewStore, sql: asyncpg.Connection
) -> None:
    first = await add_tenant(sql)
    other = await add_tenant(sql, phone="+5511900000000")
    assert await store.store_exchange(request(first, "wamid.a"), first.crew_id, "resposta a")
    conversation, touched = await sql.fetchrow("SELECT id, updated_at FROM conversations")
    assert await store.store_exchange(request(first, "wamid.b"), first.crew_id, "resposta b")
    again = await sql.fetchrow("SELECT id, updated_at FROM conversations WHERE user_id = $1", first.user_id)
    assert again["id"] == conversation and again["updated_at"] > touched

    # The same provider message id in another company is another message.
    assert await store.store_exchange(request(other, "wamid.a"), other.crew_id, "resposta da outra")
    assert await store.stored_reply(other.company_id, "wamid.a") == "resposta da outra"
    assert await store.stored_reply(first.company_id, "wamid.a") == "resposta a"
    # The same user talking to another crew of the company gets a conversation of its own.
    second_crew = await sql.fetchval(
        "INSERT INTO crews (company_id, name) VALUES ($1, 'Vendas') RETURNING id", first.company_id
    )
    assert await store.store_exchange(request(first, "wamid.c"), second_crew, "resposta c")
    per_crew = await sql.fetch(
        "SELECT crew_id, count(*) AS messages FROM conversations c JOIN messages m ON m.conversation_id = c.id"
        " WHERE c.user_id = $1 GROUP BY crew_id",
        first.user_id,
    )
    assert {row["crew_id"]: row["messages"] for row in per_crew} == {first.crew_id: 4, second_crew: 2}
    assert await sql.fetchval("SELECT count(*) FROM conversations") == 3


async def test_an_exchange_that_fails_stores_nothing_and_leaves_the_message_unclaimed(
    store: CrewStore, sql: asyncpg.Connection
) -> None:
    tenant = await add_tenant(sql)
    # A message row already holds the provider id (as a row the original app wrote): the insert fails.
    conversation = await sql.fetchval(
        "INSERT INTO conversations (company_id, user_id) VALUES ($1, $2) RETURNING id",
        tenant.company_id,
        tenant.user_id,
    )
    await sql.execute(
        "INSERT INTO messages (conversation_id, company_id, role, content, provider_message_id)"
        " VALUES ($1, $2, 'user', 'antes', 'wamid.taken')",
        conversation,
        tenant.company_id,
    )
    with pytest.raises(asyncpg.UniqueViolationError):
        await store.store_exchange(request(tenant, "wamid.taken"), tenant.crew_id, "resposta")
    # All or nothing: no claim, no new conversation, no message; a retry meets the same state.
    assert await sql.fetchval("SELECT count(*) FROM processed_messages") == 0
    assert await sql.fetchval("SELECT count(*) FROM conversations") == 1
    assert await sql.fetchval("SELECT count(*) FROM messages") == 1
