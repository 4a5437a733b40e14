"""A fixed-window counter in Redis: at most N events per key per window, across all workers.

``INCR`` and ``EXPIRE ... NX`` run in one MULTI/EXEC, so the first event of
a window starts its clock and no interleaving of workers can lose a count or
leave a counter without an expiry. (bullmq's limiter throttles a whole
queue, not one phone, and is unreliable in the Python port.)

Keys hold a digest of the phone number, not the number: Redis key names
show up in monitoring tools and ``MONITOR`` output.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import redis.asyncio as redis


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    count: int
    #: Seconds until the window resets (0 when allowed).
    retry_after_s: int


def subject_key(prefix: str, scope: str, *parts: object) -> str:
    digest = hashlib.sha256(":".join(str(part) for part in parts).encode()).hexdigest()[:32]
    return f"{prefix}:ratelimit:{scope}:{digest}"


class FixedWindowLimiter:
    def __init__(self, client: redis.Redis, *, limit: int, window_s: int) -> None:
        self._client = client
        self.limit = limit
        self.window_s = window_s

    async def hit(self, key: str) -> RateDecision:
        """Count one event for ``key``; allowed while the window's count stays within the limit."""
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, self.window_s, nx=True)
            pipe.ttl(key)
            count, _, ttl = await pipe.execute()
        allowed = int(count) <= self.limit
        return RateDecision(allowed=allowed, count=int(count), retry_after_s=0 if allowed else max(int(ttl), 1))
