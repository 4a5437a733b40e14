"""The auth worker's jobs: authorize inbound messages, issue and check phone-link codes.

An inbound message (``process-message``):

1. its company must exist and be active, or the job fails permanently (the
   producer sent something that can never work);
2. its phone is looked up among the company's users (cache, then DB): an
   unknown, blocked or deactivated number is refused, logged in
   ``whatsapp_auth_logs`` and not retried;
3. an authorized sender's session is opened or extended, the attempt
   logged, and the message handed to ``crewai-processing`` with the user,
   session and company.

Step 3's writes and the claim of the provider message id are one
transaction, and the crew job's id is derived from the message id, so a
message delivered twice (BullMQ is at-least-once) changes nothing the second
time; it is only handed on again, which BullMQ and the crew worker ignore.

Phone linking: ``request-link-code`` sends a registered phone a six-digit
code (rate limited per phone in Redis), ``verify-link-code`` checks the code
the user typed back (a limited number of attempts per code) and opens the
session. Codes never appear in logs, results or the database (see ``codes``).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from falachefe_runtime.auth.codes import code_mac, code_matches, new_code
from falachefe_runtime.auth.rate_limit import FixedWindowLimiter, subject_key
from falachefe_runtime.auth.store import AuthAttempt, AuthEvent, AuthStore, CodeCheck, Session, UserAuth
from falachefe_runtime.cache.keys import CacheKind, Scope
from falachefe_runtime.companies import Companies
from falachefe_runtime.config import AuthSettings
from falachefe_runtime.interfaces import ReadThroughCache
from falachefe_runtime.observability import metrics
from falachefe_runtime.observability.logging import mask_phone
from falachefe_runtime.payloads import (
    PROCESS_CREW,
    SEND_MESSAGE,
    CrewRequest,
    InboundMessage,
    LinkCodeRequest,
    LinkCodeVerify,
    OutboundKind,
    OutboundMessage,
    ProcessCrew,
    ProcessMessage,
)
from falachefe_runtime.queues import CREW_QUEUE, OUTBOUND_QUEUE, PreparedJob, Queues
from falachefe_runtime.worker.routing import JobInfo, JobResult

#: A cached session is extended in the database only once it is this much
#: older than a fresh one: a user sending many messages costs one session
#: write per interval, not one per message.
SESSION_REFRESH_S = 300


def phone_key(phone_number: str) -> str:
    """Cache key for a phone: a digest, so Redis key names carry no phone numbers."""
    return hashlib.sha256(phone_number.encode()).hexdigest()[:32]


def crew_job_id(company_id: UUID, provider_message_id: str) -> str:
    """The crew job's id for an inbound message: the same message always maps to the same job."""
    digest = hashlib.sha256(f"{company_id}\x00{provider_message_id}".encode()).hexdigest()[:40]
    return f"crew-{digest}"


def refusal(user: UserAuth | None) -> str | None:
    """Why this sender may not talk to the crew, or None if they may."""
    if user is None:
        return "unknown_number"
    if user.is_blocked:
        return "blocked"
    if not user.is_active:
        return "inactive_user"
    return None


def _user(cached: dict[str, Any]) -> UserAuth | None:
    """A cached user entry as the (frozen) model: parsed once per L1 entry."""
    return UserAuth.model_validate(cached["user"]) if cached["user"] else None


def _session(cached: dict[str, Any]) -> Session | None:
    return Session.model_validate(cached["session"]) if cached["session"] else None


class AuthService:
    def __init__(
        self,
        *,
        store: AuthStore,
        companies: Companies,
        cache: ReadThroughCache,
        queues: Queues,
        limiter: FixedWindowLimiter,
        settings: AuthSettings,
        rate_limit_prefix: str,
    ) -> None:
        if settings.otp_secret is None:
            raise ValueError("auth.otp_secret is required by the auth pool: set FALACHEFE_AUTH__OTP_SECRET")
        self._store = store
        self._companies = companies
        self._cache = cache
        self._queues = queues
        self._limiter = limiter
        self._settings = settings
        self._otp_secret = settings.otp_secret.get_secret_value().encode()
        self._rate_limit_prefix = rate_limit_prefix

    # -- process-message -------------------------------------------------------

    async def handle_message(self, job: ProcessMessage, info: JobInfo) -> JobResult:
        message = job.message_data
        await self._companies.active(message.company_id)
        user = await self._cached_user(message.company_id, message.phone_number)
        reason = refusal(user)
        attempt = AuthAttempt(
            company_id=message.company_id,
            phone_number=message.phone_number,
            event=AuthEvent.MESSAGE,
            success=reason is None,
            reason=reason or "authorized",
            user_id=user.id if user else None,
            provider_message_id=message.provider_message_id,
        )
        if reason is not None:
            first, _ = await self._store.record_message(attempt, session_ttl_s=None)
            if first:
                metrics.AUTH_DECISIONS.labels("message", reason).inc()
            info.note(phone=mask_phone(message.phone_number), reason=reason, duplicate=not first)
            return {"outcome": "refused", "reason": reason, "duplicate": not first}
        assert user is not None  # refusal() refuses unknown numbers

        session = await self._fresh_session(message.company_id, user.id)
        first, opened = await self._store.record_message(
            attempt, session_ttl_s=None if session else self._settings.session_ttl_s
        )
        if opened is not None:
            session = opened
            await self._remember_session(message.company_id, opened)
        if session is None:  # a repeat: the first delivery opened it
            session = await self._store.active_session(user.id)
        if session is None:
            raise RuntimeError("no active session right after authorizing the message; retrying")
        if first:
            metrics.AUTH_DECISIONS.labels("message", "authorized").inc()
        crew_job = info.hand_off(self._crew_job(message, user.id, session.id))
        info.note(phone=mask_phone(message.phone_number), crew_job_id=crew_job, duplicate=not first)
        return {"outcome": "authorized", "sessionId": str(session.id), "crewJobId": crew_job, "duplicate": not first}

    def _crew_job(self, message: InboundMessage, user_id: UUID, session_id: UUID) -> PreparedJob:
        received = message.timestamp if message.timestamp.tzinfo else message.timestamp.replace(tzinfo=UTC)
        request = CrewRequest(
            company_id=message.company_id,
            user_id=user_id,
            session_id=session_id,
            phone_number=message.phone_number,
            text=message.text,
            provider_message_id=message.provider_message_id,
            received_at=received,
        )
        return self._queues.prepare(
            CREW_QUEUE,
            PROCESS_CREW,
            ProcessCrew(crew_data=request).model_dump(mode="json", by_alias=True),
            job_id=crew_job_id(message.company_id, message.provider_message_id),
        )

    # -- request-link-code -----------------------------------------------------

    async def request_link_code(self, job: LinkCodeRequest, info: JobInfo) -> JobResult:
        await self._companies.active(job.company_id)
        user = await self._store.user_by_phone(job.company_id, job.phone_number)
        reason = refusal(user)
        if reason is None and not await self._limiter.hit(
            subject_key(self._rate_limit_prefix, "link-code", job.company_id, job.phone_number)
        ):
            reason = "rate_limited"
        if reason is not None:
            return await self._refuse_link_code(AuthEvent.LINK_CODE_REQUEST, job, info, user, reason)

        code = new_code()
        ttl_s = self._settings.otp_ttl_s
        mac = code_mac(self._otp_secret, job.company_id, job.phone_number, code)
        await self._store.issue_code(job.company_id, job.phone_number, mac, ttl_s)
        await self._queues.enqueue(
            OUTBOUND_QUEUE,
            SEND_MESSAGE,
            OutboundMessage(
                company_id=job.company_id,
                phone_number=job.phone_number,
                kind=OutboundKind.LINK_CODE,
                text=f"Seu código Falachefe é {code}. Ele vale por {max(ttl_s // 60, 1)} minutos.",
            ).model_dump(mode="json", by_alias=True),
        )
        metrics.AUTH_DECISIONS.labels("link_code_request", "code_sent").inc()
        info.note(phone=mask_phone(job.phone_number))
        expires = datetime.now(UTC) + timedelta(seconds=ttl_s)
        return {"outcome": "code_sent", "expiresAt": expires.isoformat()}

    # -- verify-link-code ------------------------------------------------------

    async def verify_link_code(self, job: LinkCodeVerify, info: JobInfo) -> JobResult:
        await self._companies.active(job.company_id)
        user = await self._store.user_by_phone(job.company_id, job.phone_number)
        reason = refusal(user)
        if reason is not None:
            return await self._refuse_link_code(AuthEvent.LINK_CODE_VERIFY, job, info, user, reason)
        assert user is not None  # refusal() refuses unknown numbers

        def matches(stored_mac: bytes) -> bool:
            return code_matches(self._otp_secret, job.company_id, job.phone_number, job.code, stored_mac)

        outcome, session = await self._store.check_code(
            job.company_id,
            job.phone_number,
            matches,
            user_id=user.id,
            max_attempts=self._settings.otp_max_attempts,
            session_ttl_s=self._settings.session_ttl_s,
        )
        if session is not None:
            await self._remember_session(job.company_id, session)
        metrics.AUTH_DECISIONS.labels("link_code_verify", outcome.result.value).inc()
        info.note(phone=mask_phone(job.phone_number))
        result: dict[str, Any] = {"outcome": outcome.result.value, "attemptsLeft": outcome.attempts_left}
        if outcome.result is CodeCheck.VERIFIED and session is not None:
            result["sessionId"] = str(session.id)
        return result

    async def _refuse_link_code(
        self,
        event: AuthEvent,
        job: LinkCodeRequest | LinkCodeVerify,
        info: JobInfo,
        user: UserAuth | None,
        reason: str,
    ) -> JobResult:
        """Log and count a refused link-code request or check; the job is done, not failed."""
        await self._store.log(
            AuthAttempt(
                job.company_id,
                job.phone_number,
                event,
                success=False,
                reason=reason,
                user_id=user.id if user else None,
            )
        )
        metrics.AUTH_DECISIONS.labels(event.value, reason).inc()
        info.note(phone=mask_phone(job.phone_number), auth_event=event.value, reason=reason)
        return {"outcome": "refused", "reason": reason}

    # -- lookups ---------------------------------------------------------------

    async def _cached_user(self, company_id: UUID, phone_number: str) -> UserAuth | None:
        async def load() -> dict[str, Any]:
            user = await self._store.user_by_phone(company_id, phone_number)
            return {"user": user.model_dump(mode="json") if user else None}

        # Company scope only: the user is what the lookup finds. Blocking a
        # user takes effect within cache.ttl.whatsapp_auth_s (5 min), or at
        # once if the app invalidates the company.
        user: UserAuth | None = await self._cache.get_or_load(
            CacheKind.WHATSAPP_AUTH, phone_key(phone_number), load, scope=Scope(company_id=company_id), parse=_user
        )
        return user

    async def _remember_session(self, company_id: UUID, session: Session) -> None:
        """Replace the cached session with the one just written (other processes' L1 may lag by l1_ttl_s)."""
        await self._cache.set(
            CacheKind.SESSION,
            "active",
            {"session": session.model_dump(mode="json")},
            scope=Scope(company_id=company_id, user_id=session.user_id),
        )

    async def _fresh_session(self, company_id: UUID, user_id: UUID) -> Session | None:
        """The user's cached session if it needs no extension yet, else None."""

        async def load() -> dict[str, Any]:
            session = await self._store.active_session(user_id)
            return {"session": session.model_dump(mode="json") if session else None}

        session: Session | None = await self._cache.get_or_load(
            CacheKind.SESSION, "active", load, scope=Scope(company_id=company_id, user_id=user_id), parse=_session
        )
        if session is None:
            return None
        fresh_until = session.expires_at - timedelta(seconds=self._settings.session_ttl_s - SESSION_REFRESH_S)
        return session if datetime.now(UTC) < fresh_until else None
