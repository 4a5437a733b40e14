"""The crew worker's job: answer an authorized message with the company's crew.

1. The company's active crew comes from the cache (``crew_config``), loaded
   from PostgreSQL on a miss; no crew is a permanent failure.
2. The answer comes from the response cache when the crew answered the same
   text in the last 30 minutes (``crew_response``, keyed by crew and a hash
   of the normalized text, as the seed does); otherwise from a kickoff. The
   cache's stampede protection makes identical messages arriving together
   share one kickoff.
3. The exchange is stored once (see ``CrewStore``) and the reply handed to
   ``whatsapp-outbound`` under an id derived from the message, so a repeat
   neither stores nor sends twice.

A message already answered (a redelivered job) skips straight to step 3's
hand-off with the stored reply: no kickoff, no LLM call.

Step 3 runs inside ``JobInfo.commit``: a run its worker gave up on (the
pod stopped, the job timed out, or its lock passed to another worker
while the crew thought) stores and sends nothing, so the job's next run
is the only one that answers.
"""

from __future__ import annotations

import hashlib
from typing import Any
from uuid import UUID

from falachefe_runtime.cache.keys import CacheKind, Scope
from falachefe_runtime.companies import Companies
from falachefe_runtime.crew.definition import CrewDefinition
from falachefe_runtime.crew.kickoff import CrewKickoff
from falachefe_runtime.crew.store import CrewStore
from falachefe_runtime.interfaces import ReadThroughCache
from falachefe_runtime.observability import metrics
from falachefe_runtime.observability.logging import mask_phone
from falachefe_runtime.payloads import SEND_MESSAGE, CrewRequest, OutboundKind, OutboundMessage, ProcessCrew
from falachefe_runtime.queues import OUTBOUND_QUEUE, Queues
from falachefe_runtime.worker.routing import JobInfo, JobResult, PermanentJobError


def message_hash(text: str) -> str:
    """The response cache's key for a message: case and spacing do not make a new question."""
    normalized = " ".join(text.casefold().split())
    return hashlib.sha256(normalized.encode()).hexdigest()


def reply_job_id(company_id: UUID, provider_message_id: str) -> str:
    digest = hashlib.sha256(f"{company_id}\x00{provider_message_id}".encode()).hexdigest()[:40]
    return f"reply-{digest}"


def _crew(cached: dict[str, Any]) -> CrewDefinition | None:
    """A cached ``crew_config`` entry as the (frozen) definition: validated once per L1 entry, not per job."""
    return CrewDefinition.model_validate(cached["crew"]) if cached["crew"] else None


class CrewService:
    def __init__(
        self,
        *,
        store: CrewStore,
        companies: Companies,
        cache: ReadThroughCache,
        queues: Queues,
        kickoff: CrewKickoff,
    ) -> None:
        self._store = store
        self._companies = companies
        self._cache = cache
        self._queues = queues
        self._kickoff = kickoff

    async def handle(self, job: ProcessCrew, info: JobInfo) -> JobResult:
        request = job.crew_data
        company = await self._companies.active(request.company_id)
        stored = await self._store.stored_reply(request.company_id, request.provider_message_id)
        if stored is not None:
            async with info.commit():
                reply_job = await self._send(request, stored)
            info.note(reply_job_id=reply_job)
            return {"outcome": "answered", "source": "stored", "duplicate": True, "replyJobId": reply_job}

        crew = await self._active_crew(request.company_id)
        reply, source = await self._answer(crew, request.text, company.name)
        metrics.CREW_RESPONSES.labels(source).inc()
        async with info.commit():
            first = await self._store.store_exchange(request, crew.id, reply)
            reply_job = await self._send(request, reply)
        info.note(phone=mask_phone(request.phone_number), crew_id=str(crew.id), source=source, duplicate=not first)
        return {"outcome": "answered", "source": source, "duplicate": not first, "replyJobId": reply_job}

    async def _active_crew(self, company_id: UUID) -> CrewDefinition:
        async def load() -> dict[str, Any]:
            crew = await self._store.active_crew(company_id)
            return {"crew": crew.model_dump(mode="json") if crew else None}

        crew: CrewDefinition | None = await self._cache.get_or_load(
            CacheKind.CREW_CONFIG, "active", load, scope=Scope(company_id=company_id), parse=_crew
        )
        if crew is None:
            raise PermanentJobError(
                "no_active_crew", f"company {company_id} has no active crew with active agents and tasks"
            )
        return crew

    async def _answer(self, crew: CrewDefinition, text: str, company: str) -> tuple[str, str]:
        """The reply and where it came from: ``kickoff`` (this call ran the crew) or ``cache``."""
        ran: list[bool] = []

        async def kickoff() -> dict[str, Any]:
            ran.append(True)
            return {"reply": await self._kickoff.answer(crew, message=text, company=company)}

        cached = await self._cache.get_or_load(
            CacheKind.CREW_RESPONSE,
            message_hash(text),
            kickoff,
            scope=Scope(company_id=crew.company_id, crew_id=crew.id),
        )
        return str(cached["reply"]), "kickoff" if ran else "cache"

    async def _send(self, request: CrewRequest, reply: str) -> str:
        outbound = OutboundMessage(
            company_id=request.company_id,
            phone_number=request.phone_number,
            kind=OutboundKind.REPLY,
            text=reply[:4096],
            reply_to=request.provider_message_id,
        )
        return await self._queues.enqueue(
            OUTBOUND_QUEUE,
            SEND_MESSAGE,
            outbound.model_dump(mode="json", by_alias=True),
            job_id=reply_job_id(request.company_id, request.provider_message_id),
        )
