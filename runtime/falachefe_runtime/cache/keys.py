"""Cache kinds, scopes and key layout (pure: no I/O).

An entry's Redis key folds in the *generation* of every scope it belongs
to: ``<prefix>:<kind>:c=<company>#<gen>,u=<user>#<gen>:<key>``. Invalidating
a company bumps its generation, so every key built afterwards differs and
the old entries are never read again; they expire by their TTL. No ``KEYS``
or ``SCAN`` is needed, and the scope ids in the key keep tenants apart even
when two callers use the same ``key``.
"""

from __future__ import annotations

import enum
import hashlib
import re
import uuid
from dataclasses import dataclass

from ..config import CacheTTLs


class CacheKind(enum.StrEnum):
    """What an entry is; each kind has its own Redis TTL (``cache.ttl``)."""

    SESSION = "session"
    WHATSAPP_AUTH = "whatsapp_auth"
    CREW_RESPONSE = "crew_response"
    COMPANY_CONFIG = "company_config"
    CREW_CONFIG = "crew_config"


def kind_ttl_s(kind: CacheKind, ttls: CacheTTLs) -> int:
    return {
        CacheKind.SESSION: ttls.session_s,
        CacheKind.WHATSAPP_AUTH: ttls.whatsapp_auth_s,
        CacheKind.CREW_RESPONSE: ttls.crew_response_s,
        CacheKind.COMPANY_CONFIG: ttls.company_config_s,
        CacheKind.CREW_CONFIG: ttls.crew_config_s,
    }[kind]


class ScopeKind(enum.StrEnum):
    """What an entry can be invalidated by."""

    COMPANY = "company"
    USER = "user"
    CREW = "crew"


_ABBREVIATION = {ScopeKind.COMPANY: "c", ScopeKind.USER: "u", ScopeKind.CREW: "w"}

#: Scope ids are UUIDs in practice; anything that cannot break the key layout is accepted.
_SCOPE_ID = re.compile(r"^[A-Za-z0-9_.@+-]{1,128}$")

#: Keys longer than this are replaced by their SHA-256 (e.g. a message's text).
_MAX_KEY_CHARS = 200

ScopeId = str | uuid.UUID


def scope_id(kind: ScopeKind, value: ScopeId) -> str:
    """The id as it appears in keys and messages; rejects ids that could forge another key."""
    text = str(value)
    if not _SCOPE_ID.match(text):
        raise ValueError(f"{kind.value}_id {text!r} is not a valid scope id (1-128 of letters, digits and '_.@+-')")
    return text


@dataclass(frozen=True)
class Scope:
    """The company, user and crew an entry belongs to: invalidating any of them drops it."""

    company_id: ScopeId | None = None
    user_id: ScopeId | None = None
    crew_id: ScopeId | None = None

    def members(self) -> tuple[tuple[ScopeKind, str], ...]:
        """``(kind, id)`` for each id set, in a fixed order."""
        found: list[tuple[ScopeKind, str]] = []
        for kind, value in (
            (ScopeKind.COMPANY, self.company_id),
            (ScopeKind.USER, self.user_id),
            (ScopeKind.CREW, self.crew_id),
        ):
            if value is not None:
                found.append((kind, scope_id(kind, value)))
        return tuple(found)


Member = tuple[ScopeKind, str]


@dataclass(frozen=True)
class KeySpace:
    """Names of everything the cache keeps in Redis, under one prefix."""

    prefix: str

    @property
    def channel(self) -> str:
        """Pub/sub channel that carries invalidations to every process."""
        return f"{self.prefix}:invalidate"

    @property
    def generation_counter(self) -> str:
        """One counter for all generations, so a generation value is never reused (see ``Cache``)."""
        return f"{self.prefix}:gen-counter"

    def generation(self, member: Member) -> str:
        kind, ident = member
        return f"{self.prefix}:gen:{kind.value}:{ident}"

    def entry(self, kind: CacheKind, key: str, members: tuple[Member, ...], generations: tuple[int, ...]) -> str:
        scope = ",".join(
            f"{_ABBREVIATION[member_kind]}={ident}#{generation}"
            for (member_kind, ident), generation in zip(members, generations, strict=True)
        )
        if len(key) > _MAX_KEY_CHARS:
            key = "sha256=" + hashlib.sha256(key.encode()).hexdigest()
        return f"{self.prefix}:{kind.value}:{scope or '-'}:{key}"

    @staticmethod
    def lock(entry_key: str) -> str:
        """The key a process holds while it loads ``entry_key`` (see stampede protection)."""
        return f"{entry_key}|loading"


def invalidation_prefix(member: Member) -> str:
    """An invalidation message is this prefix followed by the new generation."""
    kind, ident = member
    return f"{kind.value}:{ident}:"


def parse_invalidation(message: str) -> tuple[Member, int]:
    """The member and generation in an invalidation message."""
    kind, ident, generation = message.split(":")
    return (ScopeKind(kind), scope_id(ScopeKind(kind), ident)), int(generation)
