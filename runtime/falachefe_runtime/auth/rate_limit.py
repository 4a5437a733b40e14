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

import redis.asyncio as redis


def subject_key(prefix: str, scope: str, *parts: object) -> str:
    digest = hashlib.sha256(":".join(str(part) for part in parts).encode()).hexdigest()[:32]
    return f"{prefix}:ratelimit:{scope}:{digest}"


class FixedWindowLimiter:
    def __init__(self, client: redis.Redis, *, limit: int, window_s: int) -> None:
        self._client = client
        self.limit = limit
        self.window_s = window_s

    async def hit(self, key: str) -> bool:
        """Count one event for ``key``; whether the window's count is still within the limit."""
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, self.window_s, nx=True)
            count, _ = await pipe.execute()
        return int(count) <= self.limit
