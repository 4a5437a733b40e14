"""Does the queue's Redis keep its data across a restart? Checked once at a worker's start.

Every accepted message waits in Redis (a BullMQ job) until a worker has
handled it: a Redis that restarts without persistence loses all of them,
and nothing else notices (the workers reconnect and stay ready). AOF
(``appendonly yes``, ``appendfsync everysec``) loses at most about a second
of writes; RDB snapshots alone lose everything since the last snapshot. A
Redis whose ``CONFIG`` command is refused (managed services often rename or
forbid it) cannot be asked: that is ``unknown``, not an error.

When AOF is on, Redis restores from it (not from a snapshot) at start, so
AOF decides what survives and is reported whatever ``save`` says.
"""

from __future__ import annotations

import logging
from typing import Literal

import redis.asyncio as redis

from falachefe_runtime.observability import metrics

log = logging.getLogger(__name__)

Persistence = Literal["aof", "rdb", "none", "unknown"]
MODES: tuple[Persistence, ...] = ("aof", "rdb", "none", "unknown")


async def redis_persistence(client: redis.Redis) -> Persistence:
    """How ``client``'s server persists: ``aof``, ``rdb``, ``none``, or ``unknown`` when it refuses CONFIG."""
    try:
        appendonly = await client.config_get("appendonly")
        save = await client.config_get("save")
    except redis.ResponseError:  # unknown command (renamed), NOPERM (ACL): cannot tell
        return "unknown"
    if _text(appendonly.get("appendonly")) == "yes":
        return "aof"
    if _text(save.get("save")).strip():
        return "rdb"
    if "appendonly" not in appendonly and "save" not in save:
        return "unknown"
    return "none"


async def check_redis_persistence(client: redis.Redis) -> Persistence:
    """Find the mode, export it (``falachefe_redis_persistence``) and warn when jobs would not survive a restart."""
    mode = await redis_persistence(client)
    for each in MODES:
        metrics.REDIS_PERSISTENCE.labels(each).set(1 if each == mode else 0)
    if mode == "none":
        log.warning(
            "the queue's Redis does not persist: a restart of it loses every queued job;"
            " run it with appendonly yes (appendfsync everysec)",
            extra={"redis_persistence": mode},
        )
    elif mode == "unknown":
        log.warning(
            "cannot tell whether the queue's Redis persists (CONFIG GET refused);"
            " make sure it runs with appendonly yes, or a restart loses every queued job",
            extra={"redis_persistence": mode},
        )
    else:
        log.info("the queue's Redis persists", extra={"redis_persistence": mode})
    return mode


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return "" if value is None else str(value)
