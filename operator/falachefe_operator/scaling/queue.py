"""A bullmq queue's job counts, read from Redis the way bullmq keeps them.

Key layout (bullmq's ``QueueKeys``, identical in Python bullmq 3 and Node
bullmq 6), for queue ``q`` under prefix ``bull``:

- ``bull:q:wait`` (list): runnable jobs without a priority;
- ``bull:q:paused`` (list): only left by bullmq < 5, which moved the wait
  list there on pause; newer versions flag ``paused`` in ``bull:q:meta`` and
  keep the list in place. Counted as waiting either way;
- ``bull:q:prioritized`` (sorted set): runnable jobs with a priority;
- ``bull:q:delayed`` (sorted set): score = due timestamp in ms * 0x1000 +
  a 12-bit sequence (``getDelayedScore`` in the Lua scripts), so the jobs
  due by ``now`` are those scored at most ``(now + 1) * 0x1000 - 1``, the
  same bound the workers use when they promote delayed jobs;
- ``bull:q:active`` (list): jobs a worker holds;
- ``bull:q:id`` (string): INCR'd for every job added without a custom id.

All of it counted by one Lua script (``_COUNTS``) for every queue of a
batch: one command and one round trip however many queues, and the counts
one consistent snapshot (a script runs atomically). Eight commands per queue
in a MULTI/EXEC pipeline, each packed in Python, cost this process 2.2 times
the CPU per read (``python -m bench queue_reads``: 0.25 ms against 0.11 ms,
400 queues read every 5 s in 250 ms batches).
"Now" is this process's clock, as the producers' and the workers' clocks
are theirs: bullmq has no shared clock either.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript

from falachefe_runtime.redact import address, redact_text, url_problem
from falachefe_runtime.redis_wire import use_fast_wire

from .deadline import responsive_timeout
from .observation import MetricUnavailable, QueueCounts

#: bullmq bakes a 12-bit sequence number into the delayed set's scores.
DELAYED_SEQUENCE_FACTOR = 0x1000


@dataclass(frozen=True)
class QueueRef:
    """Where a pool's queue lives. The URL may hold a password: it is never printed."""

    name: str
    redis_url: str = field(repr=False)
    prefix: str = "bull"

    @property
    def redis_address(self) -> str:
        """host:port/db of the URL, for messages (no user, no password)."""
        return address(self.redis_url)


#: Reads of one Redis asked for within this long go in one round trip. Polls
#: come every few seconds, so a quarter of a second costs their figures
#: nothing, and the round trip's fixed cost (a task, MULTI/EXEC, the reply's
#: framing) is shared: 400 queues polled every 5 s, one every 12.5 ms, cost
#: 0.12 ms of CPU a read against 0.31 ms with 5 ms windows, each read waiting
#: 139 ms at the median (``python -m bench queue_reads``).
BATCH_WINDOW_SECONDS = 0.25
#: Connections the reader keeps to one Redis, however many pools read it.
MAX_CONNECTIONS_PER_REDIS = 4
#: redis-py's own socket timeouts measure wall time, stalls of this process
#: included: they are only a backstop, this many times the reader's timeout,
#: which ``responsive_timeout`` enforces without charging Redis for them.
SOCKET_TIMEOUT_FACTOR = 10
_COMMANDS_PER_QUEUE = 8
#: KEYS: per queue, its wait, paused, prioritized, delayed, active, meta and
#: id keys; ARGV: per queue, the delayed set's due bound. Returns the eight
#: figures per queue ``_counts`` takes (false, a nil reply, for a missing
#: meta flag or id).
_COUNTS = """
local out = {}
for q = 0, #ARGV - 1 do
  local k = q * 7
  out[#out + 1] = redis.call('LLEN', KEYS[k + 1])
  out[#out + 1] = redis.call('LLEN', KEYS[k + 2])
  out[#out + 1] = redis.call('ZCARD', KEYS[k + 3])
  out[#out + 1] = redis.call('ZCOUNT', KEYS[k + 4], 0, ARGV[q + 1])
  out[#out + 1] = redis.call('ZCARD', KEYS[k + 4])
  out[#out + 1] = redis.call('LLEN', KEYS[k + 5])
  out[#out + 1] = redis.call('HGET', KEYS[k + 6], 'paused') or false
  out[#out + 1] = redis.call('GET', KEYS[k + 7]) or false
end
return out
"""


@dataclass
class _Pending:
    queue: QueueRef
    now_ms: int
    result: asyncio.Future[QueueCounts | MetricUnavailable]


class QueueReader:
    """Reads queue counts; one bounded client per Redis URL, reused across polls.

    Reads of the same Redis that arrive within ``BATCH_WINDOW_SECONDS`` of
    each other (pools polled together: an operator restart, resources made
    at once, polls that fell due in the same pass) share one MULTI/EXEC
    round trip, each queue's counts a consistent part of it. While every
    connection to a Redis is waiting for a reply, its next batch keeps
    growing rather than queueing for a connection: a slow Redis gets fewer,
    larger round trips, and a read's timeout starts when its round trip does.

    ``timeout_seconds`` is charged to Redis only while this process's event
    loop was running (``deadline.responsive_timeout``): an operator starved
    of CPU reads late, it does not report Redis down.
    """

    def __init__(self, *, timeout_seconds: float = 3.0, batch_window_seconds: float = BATCH_WINDOW_SECONDS) -> None:
        self._timeout = timeout_seconds
        self._window = batch_window_seconds
        self._clients: dict[str, aioredis.Redis] = {}
        self._scripts: dict[str, AsyncScript] = {}
        self._batches: dict[str, list[_Pending]] = {}
        self._flushing: set[asyncio.Task[None]] = set()
        #: Round trips waiting for a reply, per Redis URL.
        self._in_flight: dict[str, int] = {}
        #: URLs whose batch window closed while every connection was waiting.
        self._held: set[str] = set()

    async def read(self, queue: QueueRef, now_ms: int | None = None) -> QueueCounts | MetricUnavailable:
        """The queue's counts, or why they could not be read (never raises for Redis trouble)."""
        return await asyncio.shield(self.submit(queue, now_ms))

    def submit(self, queue: QueueRef, now_ms: int | None = None) -> asyncio.Future[QueueCounts | MetricUnavailable]:
        """``read``, started now: the future its answer comes in (to await while doing something else)."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        loop = asyncio.get_running_loop()
        batch = self._batches.get(queue.redis_url)
        if batch is None:
            batch = self._batches[queue.redis_url] = []
            loop.call_later(self._window, self._flush_soon, queue.redis_url)
        pending = _Pending(queue, now_ms, loop.create_future())
        batch.append(pending)
        return pending.result

    def _flush_soon(self, url: str, *, closing: bool = False) -> None:
        if not closing and self._in_flight.get(url, 0) >= MAX_CONNECTIONS_PER_REDIS:
            self._held.add(url)  # sent when a round trip ends, with whatever joined it meanwhile
            return
        batch = self._batches.pop(url, [])
        if batch:
            self._in_flight[url] = self._in_flight.get(url, 0) + 1
            task = asyncio.get_running_loop().create_task(self._flush(url, batch))
            self._flushing.add(task)
            task.add_done_callback(lambda done: self._flushed(url, done))

    def _flushed(self, url: str, task: asyncio.Task[None]) -> None:
        self._flushing.discard(task)
        self._in_flight[url] -= 1
        if url in self._held:
            self._held.discard(url)
            self._flush_soon(url)

    async def _flush(self, url: str, batch: list[_Pending]) -> None:
        try:
            keys: list[str] = []
            bounds: list[int] = []
            for pending in batch:
                keys += _queue_keys(pending.queue)
                bounds.append((pending.now_ms + 1) * DELAYED_SEQUENCE_FACTOR - 1)
            async with responsive_timeout(self._timeout):
                # EVALSHA; SCRIPT LOAD and EVALSHA again when Redis has not got it (new, restarted, flushed).
                replies = await self._script(url)(keys=keys, args=bounds)
        except (aioredis.RedisError, OSError, TimeoutError) as error:
            for pending in batch:
                key = f"{pending.queue.prefix}:{pending.queue.name}"
                _settle(
                    pending,
                    MetricUnavailable(
                        "queue",
                        redact_text(f"redis {pending.queue.redis_address} queue {key}: {_describe(error)}", url),
                        _cause(error, self._timeout),
                    ),
                )
            return
        except ValueError as error:  # a malformed URL: redis-py says which part
            reason = redact_text(str(error), url)
            for pending in batch:
                key = f"{pending.queue.prefix}:{pending.queue.name}"
                _settle(
                    pending,
                    MetricUnavailable("queue", f"redis URL for queue {key}: {reason}", "the Redis URL is malformed"),
                )
            return
        except BaseException as error:  # cancelled, or a bug: nobody waits forever
            for pending in batch:
                if not pending.result.done():
                    pending.result.set_exception(error)
            raise
        for index, pending in enumerate(batch):
            part = replies[index * _COMMANDS_PER_QUEUE : (index + 1) * _COMMANDS_PER_QUEUE]
            _settle(pending, _counts(part))

    async def lock_tokens(self, queue: QueueRef) -> list[str | None] | str:
        """The lock token of each active job (None for a job whose lock lapsed), or why they could not be read."""
        key = f"{queue.prefix}:{queue.name}"
        try:
            async with responsive_timeout(self._timeout):
                client = self._client(queue.redis_url)
                active = await client.lrange(f"{key}:active", 0, -1)
                if not active:
                    return []
                locks = await client.mget([f"{key}:{_text(job)}:lock" for job in active])
        except (aioredis.RedisError, OSError, TimeoutError, ValueError) as error:
            return _cause(error, self._timeout)
        return [None if lock is None else _text(lock) for lock in locks]

    def _script(self, url: str) -> AsyncScript:
        script = self._scripts.get(url)
        if script is None:
            script = self._scripts[url] = self._client(url).register_script(_COUNTS)
        return script

    def _client(self, url: str) -> aioredis.Redis:
        client = self._clients.get(url)
        if client is None:
            if problem := url_problem(url):
                raise ValueError(problem)  # redis-py would take pieces of the password for a host or a port
            pool = aioredis.BlockingConnectionPool.from_url(
                url,
                # Batched reads need few; more readers than this wait their turn.
                max_connections=MAX_CONNECTIONS_PER_REDIS,
                timeout=self._timeout * SOCKET_TIMEOUT_FACTOR,
                socket_connect_timeout=self._timeout * SOCKET_TIMEOUT_FACTOR,
                socket_timeout=self._timeout * SOCKET_TIMEOUT_FACTOR,
                # One retry covers a pooled connection that Redis closed
                # (a restart); a Redis that stays down is reported, not waited on.
                retry=Retry(NoBackoff(), 1),
                health_check_interval=30,
            )
            client = aioredis.Redis.from_pool(pool)
            # Commands packed by hiredis: a batch's script call names eight keys per queue, and
            # redis-py's own packer was two thirds of a batch's time (py-spy, 1,000 resources).
            use_fast_wire(client)
            self._clients[url] = client
        return client

    async def aclose(self) -> None:
        for url in list(self._batches):  # reads still in their window are answered, not left waiting
            self._flush_soon(url, closing=True)
        while self._flushing:
            await asyncio.gather(*self._flushing, return_exceptions=True)
        clients, self._clients = self._clients, {}
        self._scripts = {}
        for client in clients.values():
            await client.aclose()


def _queue_keys(queue: QueueRef) -> tuple[str, ...]:
    key = f"{queue.prefix}:{queue.name}"
    return (
        f"{key}:wait",
        f"{key}:paused",
        f"{key}:prioritized",
        f"{key}:delayed",
        f"{key}:active",
        f"{key}:meta",
        f"{key}:id",
    )


def _counts(replies: list[Any]) -> QueueCounts:
    wait, legacy_paused, prioritized, due, delayed, active, paused, added = replies
    return QueueCounts(
        waiting=int(wait) + int(legacy_paused),
        prioritized=int(prioritized),
        delayed_due=int(due),
        delayed_pending=int(delayed) - int(due),
        active=int(active),
        added_total=int(added) if added is not None else 0,
        paused=paused is not None and paused != b"0",
    )


def _settle(pending: _Pending, result: QueueCounts | MetricUnavailable) -> None:
    if not pending.result.done():
        pending.result.set_result(result)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _cause(error: BaseException, timeout: float) -> str:
    """What went wrong, in fixed words: redis-py's own texts may quote parts of the URL."""
    if isinstance(error, TimeoutError | aioredis.TimeoutError):
        return f"Redis did not answer within {timeout:g}s"
    if isinstance(error, aioredis.AuthenticationError):
        return "Redis refused the credentials"
    if isinstance(error, aioredis.ConnectionError | OSError):
        return "cannot connect to Redis"
    return f"Redis refused the read ({type(error).__name__})"


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if isinstance(error, TimeoutError | aioredis.RedisError) else f"{type(error).__name__}: {text}"
