"""A timeout that charges a peer only for the time this process could have heard it.

``asyncio.timeout(3)`` measures wall time. When the operator's event loop is
starved (a 2-core node busy with other work, a thousand resources reconciled
at once), a reply that Redis sent within a millisecond waits in the socket
until the loop comes round again, and the loop runs the expired timer in that
same pass: the read is cancelled and Redis is reported down. Every such false
timeout is a metric outage: a Warning Event, a poll without queue figures, a
pool held at its size for no reason.

``responsive_timeout`` ticks every ``tick`` seconds. Each tick charges the
time since the previous one, but a tick that comes late charges at most
``2 * tick``: the rest of the gap is this process's own stall, not the peer's
silence. The deadline expires when the charged time reaches ``seconds``. A
peer that is really silent is found after ``seconds`` on a responsive loop;
on a starved one, after ``seconds`` of the loop's own running time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass


@dataclass
class Charged:
    """What a deadline counted: the time charged to the peer and the wall time it covered."""

    charged_seconds: float = 0.0
    wall_seconds: float = 0.0

    @property
    def stalled_seconds(self) -> float:
        """Wall time not charged to the peer: the loop was not running this process's callbacks."""
        return max(0.0, self.wall_seconds - self.charged_seconds)


@asynccontextmanager
async def responsive_timeout(seconds: float, *, tick: float = 0.25) -> AsyncIterator[Charged]:
    """Like ``asyncio.timeout(seconds)`` (raises ``TimeoutError``), but blind to the loop's own stalls."""
    if seconds <= 0:
        raise ValueError("seconds must be positive")
    tick = min(tick, seconds)
    loop = asyncio.get_running_loop()
    started = last = loop.time()
    charged = Charged()
    handle: asyncio.TimerHandle | None = None

    async with asyncio.timeout(None) as timeout:

        def on_tick() -> None:
            nonlocal last, handle
            now = loop.time()
            charged.charged_seconds += min(now - last, 2 * tick)
            charged.wall_seconds = now - started
            last = now
            remaining = seconds - charged.charged_seconds
            if remaining <= 1e-9:
                timeout.reschedule(now)  # expires in this pass: the awaited work is cancelled
                handle = None
            else:
                handle = loop.call_at(now + min(tick, remaining), on_tick)

        handle = loop.call_at(started + tick, on_tick)
        try:
            yield charged
        finally:
            if handle is not None:
                handle.cancel()
            charged.wall_seconds = loop.time() - started
