"""The crew worker's SQL: the company's active crew, and the conversation it has with a user.

An exchange (the user's message and the crew's reply) is stored in one
transaction together with the ``crew`` claim of the provider message id:
a message processed twice, or by two workers at once, is stored once.
Both rows get the transaction's ``now()`` as ``created_at``, which is how a
repeat finds the reply that was stored for its message (``stored_reply``).
The transaction is one call of a server-side function (migration 4,
``falachefe_store_crew_exchange``): one round trip instead of six or seven.
"""

from __future__ import annotations

from uuid import UUID

from pydantic import ValidationError

from falachefe_runtime.crew.definition import AgentSpec, CrewDefinition, TaskSpec
from falachefe_runtime.db.database import Database
from falachefe_runtime.payloads import CrewRequest
from falachefe_runtime.validation import describe_validation_error
from falachefe_runtime.worker.routing import PermanentJobError

#: ``processed_messages.stage`` of the crew worker.
CREW_STAGE = "crew"


class CrewStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def active_crew(self, company_id: UUID) -> CrewDefinition | None:
        """The company's newest active crew with its active agents and task templates, in order."""
        crew = await self._db.fetchrow(
            "SELECT id, company_id, name, process FROM crews"
            " WHERE company_id = $1 AND is_active ORDER BY created_at DESC LIMIT 1",
            company_id,
            name="crew.active_crew",
            readonly=True,
        )
        if crew is None:
            return None
        agents = await self._db.fetch(
            "SELECT id, role, goal, backstory FROM crew_agents"
            " WHERE crew_id = $1 AND is_active ORDER BY position, created_at",
            crew["id"],
            name="crew.agents",
            readonly=True,
        )
        tasks = await self._db.fetch(
            "SELECT id, agent_id, description, expected_output FROM crew_tasks"
            " WHERE crew_id = $1 AND status = 'active' ORDER BY position, created_at",
            crew["id"],
            name="crew.tasks",
            readonly=True,
        )
        try:
            return CrewDefinition(
                **dict(crew),
                agents=tuple(AgentSpec(**dict(row)) for row in agents),
                tasks=tuple(TaskSpec(**dict(row)) for row in tasks),
            )
        except ValidationError as error:
            raise PermanentJobError(
                "invalid_crew", f"crew {crew['id']} of company {company_id}: {describe_validation_error(error)}"
            ) from None

    async def stored_reply(self, company_id: UUID, provider_message_id: str) -> str | None:
        """The reply already stored for this inbound message, if it was processed before."""
        reply: str | None = await self._db.fetchval(
            "SELECT reply.content FROM messages inbound"
            " JOIN messages reply ON reply.conversation_id = inbound.conversation_id"
            "  AND reply.role = 'assistant' AND reply.created_at = inbound.created_at"
            " WHERE inbound.company_id = $1 AND inbound.provider_message_id = $2 AND inbound.role = 'user'"
            " LIMIT 1",
            company_id,
            provider_message_id,
            name="crew.stored_reply",
        )
        return reply

    async def store_exchange(self, request: CrewRequest, crew_id: UUID, reply: str) -> bool:
        """Store the message and its reply in the user's conversation; False if already stored.

        One statement (one round trip, its own transaction): the server-side
        function of migration 4 claims the message, locks the user, touches
        or starts the conversation and stores both messages. Not repeated
        after a dropped connection (it writes): the job's retry does that,
        and its claim finds a stored exchange.
        """
        stored: bool = await self._db.fetchval(
            "SELECT falachefe_store_crew_exchange($1, $2, $3, $4, $5, $6, $7)",
            request.company_id,
            request.user_id,
            crew_id,
            request.provider_message_id,
            CREW_STAGE,
            request.text,
            reply,
            name="crew.store_exchange",
            idempotent=False,
        )
        return stored
