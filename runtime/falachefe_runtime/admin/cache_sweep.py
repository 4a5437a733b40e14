"""Reclaiming Redis memory held by invalidated cache entries, without ``KEYS``.

Invalidation bumps a scope's generation, which orphans every entry built
with the old one (see ``falachefe_runtime.cache.keys``). Orphans are never
read again and expire with their TTL, but a session entry lives 24 hours.
The sweep walks the cache's keys with ``SCAN`` (a bounded number per run,
resuming from a cursor kept in Redis, so the whole keyspace is covered over
successive runs without one run blocking Redis) and unlinks entries built
with any generation other than their scope's current one: no reader can
build their key any more.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as redis

from falachefe_runtime.cache.keys import CacheKind, KeySpace, Member, ScopeKind

#: The scope abbreviations of entry keys (``falachefe_runtime.cache.keys``:
#: ``c=<company>#<gen>,u=<user>#<gen>,w=<crew>#<gen>``); a test checks they agree.
SCOPE_ABBREVIATIONS = {"c": ScopeKind.COMPANY, "u": ScopeKind.USER, "w": ScopeKind.CREW}
_KINDS = frozenset(kind.value for kind in CacheKind)


def entry_generations(key: str, prefix: str) -> list[tuple[Member, int]] | None:
    """The (scope member, generation) pairs an entry key was built with; None if not an entry key."""
    if not key.startswith(prefix + ":") or key.endswith("|loading"):
        return None
    parts = key[len(prefix) + 1 :].split(":", 2)
    if len(parts) != 3 or parts[0] not in _KINDS:
        return None
    scope = parts[1]
    if scope == "-":
        return []
    found = []
    for item in scope.split(","):
        abbreviation, _, rest = item.partition("=")
        ident, _, generation = rest.rpartition("#")
        if abbreviation not in SCOPE_ABBREVIATIONS or not ident or not generation.isdigit():
            return None
        found.append(((SCOPE_ABBREVIATIONS[abbreviation], ident), int(generation)))
    return found


@dataclass(frozen=True)
class SweepReport:
    examined: int
    removed: int
    #: True when this run reached the end of the keyspace (the next starts over).
    wrapped: bool


class CacheSweeper:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._client = client
        self._prefix = prefix
        self._keys = KeySpace(prefix)
        self._cursor_key = f"{prefix}:sweep:cursor"

    async def sweep(self, budget: int) -> SweepReport:
        """Examine about ``budget`` keys from where the last sweep stopped; unlink the orphans."""
        cursor = int(await self._client.get(self._cursor_key) or 0)
        examined = removed = 0
        wrapped = False
        while examined < budget:
            cursor, keys = await self._client.scan(cursor, match=f"{self._prefix}:*", count=min(budget, 1_000))
            examined += len(keys)
            removed += await self._remove_orphans([key if isinstance(key, str) else key.decode() for key in keys])
            if cursor == 0:
                wrapped = True
                break
        await self._client.set(self._cursor_key, cursor)
        return SweepReport(examined=examined, removed=removed, wrapped=wrapped)

    async def _remove_orphans(self, keys: list[str]) -> int:
        entries = {key: entry_generations(key, self._prefix) for key in keys}
        scoped = {key: pairs for key, pairs in entries.items() if pairs}
        members = sorted({member for pairs in scoped.values() for member, _ in pairs})
        if not members:
            return 0
        values = await self._client.mget([self._keys.generation(member) for member in members])
        current = {member: int(value or 0) for member, value in zip(members, values, strict=True)}
        # Any other generation than the current one is unreachable: readers build
        # keys with the current one (a generation key that expired reads as 0).
        orphans = [key for key, pairs in scoped.items() if any(generation != current[m] for m, generation in pairs)]
        if orphans:
            await self._client.unlink(*orphans)
        return len(orphans)
