"""One load per key at a time in a process: concurrent callers share the first caller's result."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

T = TypeVar("T")


class SingleFlight:
    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Future[Any]] = {}

    async def run(self, key: str, work: Callable[[], Awaitable[T]]) -> T:
        """``work()``'s result; if a call for ``key`` is already running, its result instead.

        The work runs as its own task, so a caller that gives up (is
        cancelled) does not cancel it for the others.
        """
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.ensure_future(work())
            self._flights[key] = flight
            flight.add_done_callback(lambda done: self._land(key, done))
        return cast(T, await asyncio.shield(flight))

    def _land(self, key: str, done: asyncio.Future[Any]) -> None:
        if self._flights.get(key) is done:
            del self._flights[key]
        # Mark the exception retrieved: the callers that waited have it, and
        # if all of them gave up nobody else should hear of it.
        if not done.cancelled():
            done.exception()
