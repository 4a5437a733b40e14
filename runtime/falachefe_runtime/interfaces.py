"""The small interfaces the job handlers depend on, so each can be swapped in one place."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from falachefe_runtime.cache.keys import CacheKind, Scope


class ReadThroughCache(Protocol):
    """What the handlers use of ``falachefe_runtime.cache.Cache``: values are JSON-able dicts.

    ``parse`` turns the decoded JSON into a validated, immutable object (what
    ``get_or_load`` then returns); the cache may keep that object and hand it
    out again.
    """

    async def get_or_load(
        self,
        kind: CacheKind,
        key: str,
        loader: Callable[[], Awaitable[Any]],
        *,
        scope: Scope,
        parse: Callable[[Any], Any] | None = None,
    ) -> Any: ...

    async def set(self, kind: CacheKind, key: str, value: Any, *, scope: Scope) -> bool: ...
