"""The auth worker's SQL: companies, users by phone, sessions, the audit log, link codes.

Every statement is a constant with ``$n`` parameters; nothing from a job is
ever spliced into SQL. Writes that belong together (claiming a provider
message id, opening the session, logging the attempt) run in one
transaction, so a job that dies half-way leaves nothing half-done and its
retry starts clean.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from pydantic import BaseModel, ConfigDict

from falachefe_runtime.db.database import Database, Transaction

#: ``processed_messages.stage`` of the auth worker.
AUTH_STAGE = "auth"


class _Row(BaseModel):
    """A row as the cache keeps it (JSON)."""

    model_config = ConfigDict(frozen=True)


class UserAuth(_Row):
    """What authorizing a phone needs to know about its user."""

    id: UUID
    is_active: bool
    is_blocked: bool


class Session(_Row):
    id: UUID
    user_id: UUID
    expires_at: datetime


class AuthEvent(enum.StrEnum):
    MESSAGE = "message"
    LINK_CODE_REQUEST = "link_code_request"
    LINK_CODE_VERIFY = "link_code_verify"


@dataclass(frozen=True)
class AuthAttempt:
    """One line of ``whatsapp_auth_logs``."""

    company_id: UUID
    phone_number: str
    event: AuthEvent
    success: bool
    reason: str
    user_id: UUID | None = None
    provider_message_id: str | None = None


class CodeCheck(enum.StrEnum):
    VERIFIED = "verified"
    WRONG_CODE = "wrong_code"
    NO_CODE = "no_code"
    EXPIRED = "expired"
    TOO_MANY_ATTEMPTS = "too_many_attempts"


@dataclass(frozen=True)
class CodeOutcome:
    result: CodeCheck
    attempts_left: int


class AuthStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # -- reads (may go to the replica) ------------------------------------------

    async def user_by_phone(self, company_id: UUID, phone_number: str) -> UserAuth | None:
        row = await self._db.fetchrow(
            "SELECT id, is_active, is_blocked FROM users WHERE company_id = $1 AND phone_number = $2",
            company_id,
            phone_number,
            name="auth.user_by_phone",
            readonly=True,
        )
        return UserAuth(**dict(row)) if row else None

    async def active_session(self, user_id: UUID) -> Session | None:
        row = await self._db.fetchrow(
            "SELECT id, user_id, expires_at FROM whatsapp_sessions"
            " WHERE user_id = $1 AND is_active AND expires_at > now()",
            user_id,
            name="auth.active_session",
            readonly=True,
        )
        return Session(**dict(row)) if row else None

    # -- writes -----------------------------------------------------------------

    async def record_message(self, attempt: AuthAttempt, *, session_ttl_s: int | None) -> tuple[bool, Session | None]:
        """Claim the message id, open/extend the session when ``session_ttl_s`` is given, log.

        Returns ``(first_time, session)``; ``first_time`` is False when this
        provider message id was already processed, and then nothing changes.
        """
        assert attempt.provider_message_id is not None
        if session_ttl_s is None:
            # The common case (refusals, and sessions still fresh in the
            # cache): claim and log in one statement, one round trip, atomic.
            logged = await self._db.fetchval(
                "WITH claim AS ("
                " INSERT INTO processed_messages (company_id, provider_message_id, stage) VALUES ($1, $2, $3)"
                " ON CONFLICT DO NOTHING RETURNING true)"
                " INSERT INTO whatsapp_auth_logs"
                " (company_id, phone_number, user_id, event, success, reason, provider_message_id)"
                " SELECT $1, $4, $5, $6, $7, $8, $2 FROM claim RETURNING true",
                attempt.company_id,
                attempt.provider_message_id,
                AUTH_STAGE,
                attempt.phone_number,
                attempt.user_id,
                attempt.event.value,
                attempt.success,
                attempt.reason,
                name="auth.claim_and_log",
                idempotent=False,
            )
            return bool(logged), None
        async with self._db.transaction() as tx:
            claimed = await tx.fetchval(
                "INSERT INTO processed_messages (company_id, provider_message_id, stage) VALUES ($1, $2, $3)"
                " ON CONFLICT DO NOTHING RETURNING true",
                attempt.company_id,
                attempt.provider_message_id,
                AUTH_STAGE,
                name="auth.claim_message",
            )
            if not claimed:
                return False, None
            assert attempt.user_id is not None
            session = await self._open_session(
                tx, attempt.user_id, attempt.company_id, attempt.phone_number, session_ttl_s
            )
            await self._log(tx, attempt)
        return True, session

    async def log(self, attempt: AuthAttempt) -> None:
        """Log an attempt that changes nothing else: one statement, no transaction."""
        await self._log(self._db, attempt)

    async def issue_code(self, company_id: UUID, phone_number: str, code_mac: bytes, ttl_s: int) -> None:
        """Store a new code's MAC; earlier unused codes of the phone stop working."""
        async with self._db.transaction() as tx:
            await tx.execute(
                "UPDATE phone_link_codes SET consumed_at = now()"
                " WHERE company_id = $1 AND phone_number = $2 AND consumed_at IS NULL",
                company_id,
                phone_number,
                name="auth.retire_codes",
            )
            await tx.execute(
                "INSERT INTO phone_link_codes (company_id, phone_number, code_hash, expires_at)"
                " VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
                company_id,
                phone_number,
                code_mac,
                float(ttl_s),
                name="auth.issue_code",
            )
            await self._log(
                tx,
                AuthAttempt(company_id, phone_number, AuthEvent.LINK_CODE_REQUEST, success=True, reason="code_issued"),
            )

    async def check_code(
        self,
        company_id: UUID,
        phone_number: str,
        matches: Callable[[bytes], bool],
        *,
        user_id: UUID,
        max_attempts: int,
        session_ttl_s: int,
    ) -> tuple[CodeOutcome, Session | None]:
        """Check a typed code against the phone's latest one; on a match, consume it and open a session.

        The row is locked (``FOR UPDATE``) so concurrent guesses are counted
        one after the other: no race gets more than ``max_attempts`` tries.
        """
        async with self._db.transaction() as tx:
            row = await tx.fetchrow(
                "SELECT id, code_hash, attempts, expires_at <= now() AS expired FROM phone_link_codes"
                " WHERE company_id = $1 AND phone_number = $2 AND consumed_at IS NULL"
                " ORDER BY created_at DESC LIMIT 1 FOR UPDATE",
                company_id,
                phone_number,
                name="auth.latest_code",
            )
            session = None
            if row is None:
                outcome = CodeOutcome(CodeCheck.NO_CODE, 0)
            elif row["expired"]:
                outcome = CodeOutcome(CodeCheck.EXPIRED, 0)
            elif row["attempts"] >= max_attempts:
                outcome = CodeOutcome(CodeCheck.TOO_MANY_ATTEMPTS, 0)
            elif matches(bytes(row["code_hash"])):
                await tx.execute(
                    "UPDATE phone_link_codes SET consumed_at = now() WHERE id = $1", row["id"], name="auth.consume_code"
                )
                session = await self._open_session(tx, user_id, company_id, phone_number, session_ttl_s)
                outcome = CodeOutcome(CodeCheck.VERIFIED, max_attempts - row["attempts"] - 1)
            else:
                attempts = await tx.fetchval(
                    "UPDATE phone_link_codes SET attempts = attempts + 1 WHERE id = $1 RETURNING attempts",
                    row["id"],
                    name="auth.count_attempt",
                )
                outcome = CodeOutcome(CodeCheck.WRONG_CODE, max(max_attempts - attempts, 0))
            await self._log(
                tx,
                AuthAttempt(
                    company_id,
                    phone_number,
                    AuthEvent.LINK_CODE_VERIFY,
                    success=outcome.result is CodeCheck.VERIFIED,
                    reason=outcome.result.value,
                    user_id=user_id,
                ),
            )
        return outcome, session

    async def _open_session(
        self, tx: Transaction, user_id: UUID, company_id: UUID, phone_number: str, ttl_s: int
    ) -> Session:
        # At most one active session per user (a unique partial index): an
        # expired one is closed first, then the upsert creates or extends.
        await tx.execute(
            "UPDATE whatsapp_sessions SET is_active = false WHERE user_id = $1 AND is_active AND expires_at <= now()",
            user_id,
            name="auth.close_expired_session",
        )
        row = await tx.fetchrow(
            "INSERT INTO whatsapp_sessions (user_id, company_id, phone_number, expires_at, last_used_at)"
            " VALUES ($1, $2, $3, now() + make_interval(secs => $4), now())"
            " ON CONFLICT (user_id) WHERE is_active DO UPDATE"
            " SET expires_at = EXCLUDED.expires_at, last_used_at = EXCLUDED.last_used_at"
            " RETURNING id, user_id, expires_at",
            user_id,
            company_id,
            phone_number,
            float(ttl_s),
            name="auth.open_session",
        )
        return Session(**dict(row))

    async def _log(self, db: Database | Transaction, attempt: AuthAttempt) -> None:
        await db.execute(
            "INSERT INTO whatsapp_auth_logs"
            " (company_id, phone_number, user_id, event, success, reason, provider_message_id)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7)",
            attempt.company_id,
            attempt.phone_number,
            attempt.user_id,
            attempt.event.value,
            attempt.success,
            attempt.reason,
            attempt.provider_message_id,
            name="auth.log_attempt",
        )
