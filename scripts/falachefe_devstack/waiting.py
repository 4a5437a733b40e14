"""Polling with a deadline, for things that become true eventually (controllers, workers)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class Timeout(AssertionError):
    """The condition never held; the message says what was last seen."""


def wait_for(probe: Callable[[], T], timeout: float = 30.0, interval: float = 0.1, what: str = "condition") -> T:
    """Call ``probe`` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise Timeout(f"{what} not reached within {timeout}s; last value: {last!r}")
        time.sleep(interval)


async def async_wait_for(
    probe: Callable[[], Awaitable[T]], timeout: float = 30.0, interval: float = 0.1, what: str = "condition"
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        last = await probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise Timeout(f"{what} not reached within {timeout}s; last value: {last!r}")
        await asyncio.sleep(interval)
