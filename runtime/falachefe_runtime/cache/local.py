"""The in-process layer (L1): a bounded LRU whose entries each carry their own TTL.

Entries hold the JSON text: a caller that reads without a ``parse``
function decodes its own copy, so a handler that mutates what it got cannot
change what the next one gets, and L1 returns exactly what L2 would. A
caller that passes ``parse`` (JSON to a validated, immutable object) gets
the object parsed by the first such read, shared: nothing is decoded or
validated per hit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cachetools import TLRUCache

from .keys import Member


@dataclass
class Entry:
    payload: str
    ttl_s: float
    members: frozenset[Member]
    #: The function that parsed ``payload`` and what it returned (an immutable object), once a read has.
    parsed: tuple[Callable[[Any], Any], Any] | None = None


def _expires(_key: str, entry: Entry, now: float) -> float:
    return now + entry.ttl_s


class LocalCache:
    """L1 for one process; ``max_entries=0`` turns it off."""

    def __init__(self, max_entries: int) -> None:
        self.enabled = max_entries > 0
        self._entries: TLRUCache[str, Entry] = TLRUCache(maxsize=max(max_entries, 1), ttu=_expires)

    def get(self, key: str) -> str | None:
        entry = self._entries.get(key) if self.enabled else None
        return entry.payload if entry is not None else None

    def entry(self, key: str) -> Entry | None:
        return self._entries.get(key) if self.enabled else None

    def put(self, key: str, payload: str, ttl_s: float, members: frozenset[Member]) -> None:
        if self.enabled:
            self._entries[key] = Entry(payload, ttl_s, members)

    def drop(self, member: Member) -> int:
        """Remove every entry of ``member``; O(entries), and invalidations are rare."""
        doomed = [key for key, entry in list(self._entries.items()) if member in entry.members]
        for key in doomed:
            self._entries.pop(key, None)
        return len(doomed)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
