"""The two-layer cache: an in-process L1 over Redis (L2), invalidated across every process.

Reads: L1, then L2, then the loader (the database), with one load per key at
a time in a process (:class:`~.singleflight.SingleFlight`) and, across
processes, a short Redis lock (``SET NX PX``) whose waiters re-read L2.

Invalidation by company, user or crew uses versioned namespaces (see
:mod:`.keys`): a Lua script bumps the member's generation and publishes it
on a channel in one step. Every process's listener then raises its local
generation and drops the member's L1 entries. Pub/sub was chosen over
``CLIENT TRACKING`` because redis-py's asyncio client has no RESP3 tracking
support, and a generation bump is one message per invalidation however many
keys it covers, where tracking invalidates key by key.

Pub/sub delivers at most once, so L1 (and the locally known generations)
are trusted only while the subscription is up: whenever it drops, L1 is
emptied and bypassed until the listener has subscribed again. A missed
message can therefore never leave a stale entry behind.

Generations come from one shared counter, so a member's generation never
returns to a value it had before; that lets a generation key expire
(``max TTL + L1 TTL`` after its last bump) without an old entry coming back.

Redis outages: every Redis call is guarded; a failure sends the call to the
loader, is counted (``falachefe_cache_errors_total``,
``falachefe_cache_bypassed_total``) and logged at most every 30 s
(:class:`~.health.RedisHealth`). An invalidation that cannot reach Redis is
kept and replayed once Redis answers, and reads of its member bypass the
cache until then. Nothing here raises to the caller because Redis failed.

Values must survive JSON (dicts, lists, strings, numbers, booleans, None;
UUIDs, datetimes and Decimals are written as strings). Every layer returns
the decoded JSON, so a caller sees the same shape on a hit and on a miss;
or, given ``parse``, what ``parse`` makes of it (a validated, immutable
object), which L1 keeps: an L1 hit then decodes and validates nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import decimal
import enum
import functools
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar, cast

from cachetools import TTLCache
from prometheus_client import Counter
from pydantic import BaseModel
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from ..config import CacheSettings, RedisSettings, RuntimeConfig
from ..redis_wire import use_fast_wire
from .health import RedisHealth
from .keys import (
    CacheKind,
    KeySpace,
    Member,
    Scope,
    ScopeId,
    ScopeKind,
    invalidation_prefix,
    kind_ttl_s,
    parse_invalidation,
    scope_id,
)
from .local import LocalCache
from .metrics import BYPASSED, HITS, INVALIDATIONS, L1_RESETS, LOADS, MISSES
from .singleflight import SingleFlight

T = TypeVar("T")

log = logging.getLogger("falachefe_runtime.cache")

#: What a failing Redis raises: its own errors, socket errors, and timeouts.
REDIS_FAILURES: Final = (RedisError, OSError, TimeoutError)

#: Locally known generations (bounded; a forgotten one is fetched again).
_MAX_KNOWN_GENERATIONS = 10_000

_NO_SCOPE = Scope()


class _Unavailable(enum.Enum):
    REDIS = "unavailable"


_UNAVAILABLE: Final = _Unavailable.REDIS

#: Bump a member's generation from the shared counter and tell every process, atomically.
_BUMP = """
local generation = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], generation, 'EX', ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3] .. generation)
return generation
"""

#: Store a loaded value and release our load lock (only if it is still ours).
_STORE_AND_UNLOCK = """
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[3] then
    redis.call('DEL', KEYS[2])
end
return 1
"""

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


@functools.cache
def _child(metric: Counter, *labels: str) -> Counter:
    """A labelled counter, looked up once: ``labels()`` costs more than ``inc()``."""
    return metric.labels(*labels)


def _json_default(value: Any) -> Any:
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    items = getattr(value, "items", None)
    if callable(items):  # mappings, and asyncpg.Record rows
        return dict(items())
    raise TypeError(f"a cached value must be JSON-serialisable; got {type(value).__name__}")


def _parsed(value: Any, parse: Callable[[Any], Any] | None) -> Any:
    return value if parse is None else parse(value)


def encode(value: Any) -> str:
    return json.dumps(value, default=_json_default, separators=(",", ":"), ensure_ascii=False)


class Cache:
    """``await cache.start()``; ``get_or_load``; ``invalidate_company/user/crew``; ``await cache.close()``."""

    def __init__(self, redis: RedisSettings, settings: CacheSettings) -> None:
        if redis.url is None:
            raise ValueError("redis.url is required: set FALACHEFE_REDIS__URL from the Redis secret")
        self._url = redis.url.get_secret_value()
        self.keys = KeySpace(redis.cache_prefix)
        self.settings = settings
        self._l1 = LocalCache(settings.l1_max_entries)
        self._generations: TTLCache[Member, int] = TTLCache(maxsize=_MAX_KNOWN_GENERATIONS, ttl=settings.l1_ttl_s)
        self._flights = SingleFlight()
        self._health = RedisHealth()
        # Bumped whenever local state is reset: a read that started before a
        # reset must not write what it learned into the new state.
        self._epoch = 0
        self._listening = False
        self._subscribed = asyncio.Event()
        self._pending: set[Member] = set()
        self._redis: Redis | None = None
        self._subscriber: Redis | None = None
        self._listener: asyncio.Task[None] | None = None
        longest = max(kind_ttl_s(kind, settings.ttl) for kind in CacheKind)
        self._generation_ttl_s = int(longest + settings.l1_ttl_s) + 60

    @classmethod
    def from_config(cls, config: RuntimeConfig) -> Cache:
        return cls(config.redis, config.cache)

    # -- lifecycle -------------------------------------------------------------

    async def start(self, subscribe_wait_s: float = 2.0) -> None:
        """Connect and start listening for invalidations.

        Waits up to ``subscribe_wait_s`` for the subscription, so L1 is in use
        from the first read; an unreachable Redis is not an error (reads go
        to the loader until it answers).
        """
        timeout = self.settings.redis_timeout_s
        self._redis = Redis.from_url(
            self._url,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # One immediate retry covers a pooled connection that a Redis
            # restart left dead; more would only delay the fallback.
            retry=Retry(NoBackoff(), 1),
        )
        use_fast_wire(self._redis)
        self._subscriber = Redis.from_url(
            self._url,
            decode_responses=True,
            socket_timeout=None,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            # A silent network partition must not look like a quiet channel.
            health_check_interval=5,
        )
        self._listener = asyncio.create_task(self._listen(), name="falachefe-cache-invalidations")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(subscribe_wait_s):
                await self._subscribed.wait()

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        for client in (self._redis, self._subscriber):
            if client is not None:
                await client.aclose()
        self._redis = self._subscriber = None
        self._listening = False

    async def __aenter__(self) -> Cache:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def listening(self) -> bool:
        """Whether invalidations are being received (and so L1 is in use)."""
        return self._listening

    # -- reads and writes ------------------------------------------------------

    async def get_or_load(
        self,
        kind: CacheKind | str,
        key: str,
        loader: Callable[[], Awaitable[Any]],
        *,
        scope: Scope | None = None,
        cache_none: bool = False,
        parse: Callable[[Any], Any] | None = None,
    ) -> Any:
        """The cached value of ``key``, else ``await loader()`` (stored for the kind's TTL).

        With ``parse`` (the decoded JSON to an immutable object; always the
        same function for a kind), the result is ``parse``'s, and L1 keeps
        it: a hit returns that object as it is.

        ``scope`` names the company/user/crew whose invalidation must drop
        this entry; ids in it are part of the key. A loader's ``None`` is
        not cached unless ``cache_none`` (e.g. "no such user", worth caching
        if registering a user invalidates the company). A loader's exception
        reaches every caller waiting on that load and nothing is cached.
        """
        kind = CacheKind(kind)
        members = (scope or _NO_SCOPE).members()
        epoch, listening = self._epoch, self._listening
        generations = await self._generations_of(members, listening, epoch)
        if generations is None:
            return _parsed(await self._bypass(kind, key, members, loader), parse)
        entry_key = self.keys.entry(kind, key, members, generations)
        if parse is not None and listening:
            entry = self._l1.entry(entry_key)
            if entry is not None and entry.parsed is not None and entry.parsed[0] is parse:
                _child(HITS, "l1", kind.value).inc()
                return entry.parsed[1]
        found = await self._lookup(kind, entry_key, members, epoch=epoch, listening=listening)
        if found is _UNAVAILABLE:
            return _parsed(await self._bypass(kind, key, members, loader), parse)
        if found is None:
            # Only the load is shared: a hit needs no coordination.
            found = await self._flights.run(
                entry_key,
                lambda: self._load_once(
                    kind=kind,
                    entry_key=entry_key,
                    members=members,
                    loader=loader,
                    cache_none=cache_none,
                    epoch=epoch,
                    listening=listening,
                ),
            )
        value = json.loads(found)
        if parse is None:
            return value
        value = parse(value)
        entry = self._l1.entry(entry_key) if listening and epoch == self._epoch else None
        if entry is not None and entry.payload == found:
            entry.parsed = (parse, value)
        return value

    async def get(self, kind: CacheKind | str, key: str, *, scope: Scope | None = None) -> Any:
        """The cached value of ``key``, or ``None`` (a miss, or Redis unavailable)."""
        kind = CacheKind(kind)
        members = (scope or _NO_SCOPE).members()
        epoch, listening = self._epoch, self._listening
        generations = await self._generations_of(members, listening, epoch)
        found = None
        if generations is not None:
            entry_key = self.keys.entry(kind, key, members, generations)
            found = await self._lookup(kind, entry_key, members, epoch=epoch, listening=listening)
        if generations is None or found is _UNAVAILABLE:
            _child(BYPASSED, kind.value).inc()
            return None
        return None if found is None else json.loads(found)

    async def set(self, kind: CacheKind | str, key: str, value: Any, *, scope: Scope | None = None) -> bool:
        """Store ``value`` for the kind's TTL; whether it reached Redis."""
        kind = CacheKind(kind)
        members = (scope or _NO_SCOPE).members()
        payload = encode(value)
        epoch, listening = self._epoch, self._listening
        generations = await self._generations_of(members, listening, epoch)
        if generations is None:
            return False
        entry_key = self.keys.entry(kind, key, members, generations)
        stored = await self._l2_set(entry_key, payload, kind_ttl_s(kind, self.settings.ttl))
        self._remember(kind, entry_key, payload, members=members, epoch=epoch, listening=listening)
        return stored

    # -- invalidation ----------------------------------------------------------

    async def invalidate_company(self, company_id: ScopeId) -> None:
        """Drop every entry scoped to the company, in every process. See :meth:`invalidate`."""
        await self.invalidate(ScopeKind.COMPANY, company_id)

    async def invalidate_user(self, user_id: ScopeId) -> None:
        await self.invalidate(ScopeKind.USER, user_id)

    async def invalidate_crew(self, crew_id: ScopeId) -> None:
        await self.invalidate(ScopeKind.CREW, crew_id)

    async def invalidate(self, kind: ScopeKind, ident: ScopeId) -> None:
        """Drop a member's entries everywhere; call it after the database change commits.

        If Redis cannot take it, this process stops caching the member and
        replays the invalidation when Redis answers again (see
        :attr:`pending_invalidations`); the failure is counted and logged.
        """
        member = (kind, scope_id(kind, ident))
        INVALIDATIONS.labels(kind.value, "sent").inc()
        self._l1.drop(member)
        try:
            await self._bump(member)
        except REDIS_FAILURES as error:
            self._health.failed("invalidate", error)
            self._pending.add(member)
            return
        self._health.succeeded()

    @property
    def pending_invalidations(self) -> int:
        """Invalidations waiting for Redis to come back."""
        return len(self._pending)

    async def _bump(self, member: Member) -> None:
        client = self._client()
        generation = int(
            await client.eval(
                _BUMP,
                2,
                self.keys.generation(member),
                self.keys.generation_counter,
                self._generation_ttl_s,
                self.keys.channel,
                invalidation_prefix(member),
            )
        )
        self._raise_generation(member, generation)

    def _raise_generation(self, member: Member, generation: int) -> None:
        known = self._generations.get(member)
        if known is None or known < generation:
            self._generations[member] = generation

    async def _replay_pending(self) -> None:
        for member in list(self._pending):
            try:
                await self._bump(member)
            except REDIS_FAILURES as error:
                self._health.failed("invalidate", error)
                return
            self._pending.discard(member)
            log.info(
                "replayed invalidation of %s %s",
                member[0].value,
                member[1],
                extra={"event": "cache_invalidation_replayed", "scope": member[0].value},
            )

    # -- the listener ----------------------------------------------------------

    async def _listen(self) -> None:
        """Receive invalidations; on any failure empty L1 and subscribe again."""
        pause = 0.1
        subscriber = self._subscriber
        assert subscriber is not None
        while True:
            pubsub = subscriber.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.keys.channel)
                # Whatever was published before this point may be lost.
                self._reset_local()
                self._listening = True
                self._subscribed.set()
                self._health.succeeded()
                pause = 0.1
                while True:
                    if self._pending:
                        await self._replay_pending()
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._receive(message["data"])
            except Exception as error:
                # Whatever went wrong, L1 must not outlive the subscription.
                if self._listening:
                    L1_RESETS.inc()
                self._listening = False
                self._subscribed.clear()
                self._reset_local()
                if isinstance(error, REDIS_FAILURES):
                    self._health.failed("subscribe", error)
                else:
                    log.exception(
                        "cache invalidation listener failed; resubscribing", extra={"event": "cache_listener"}
                    )
            finally:
                with contextlib.suppress(*REDIS_FAILURES):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(pause)
            pause = min(pause * 2, 5.0)

    def _receive(self, data: str) -> None:
        try:
            member, generation = parse_invalidation(data)
        except ValueError:
            log.warning("ignored a malformed cache invalidation message", extra={"event": "cache_bad_invalidation"})
            return
        INVALIDATIONS.labels(member[0].value, "received").inc()
        self._raise_generation(member, generation)
        self._l1.drop(member)

    def _reset_local(self) -> None:
        self._epoch += 1
        self._l1.clear()
        self._generations.clear()

    # -- internals -------------------------------------------------------------

    def _client(self) -> Redis:
        if self._redis is None:
            raise RuntimeError("the cache is not started: call Cache.start() first")
        return self._redis

    async def _generations_of(self, members: tuple[Member, ...], listening: bool, epoch: int) -> tuple[int, ...] | None:
        """The members' current generations; ``None`` means "do not use the cache now"."""
        if self._pending and self._pending.intersection(members):
            return None
        if not members:
            return ()
        if listening:
            known = [self._generations.get(member) for member in members]
            if all(generation is not None for generation in known):
                return tuple(generation or 0 for generation in known)
        if not self._health.available():
            return None
        try:
            values = await self._client().mget([self.keys.generation(member) for member in members])
        except REDIS_FAILURES as error:
            self._health.failed("generations", error)
            return None
        self._health.succeeded()
        generations = tuple(int(value) if value else 0 for value in values)
        if listening and epoch == self._epoch:
            for member, generation in zip(members, generations, strict=True):
                self._raise_generation(member, generation)
            # A newer generation may have arrived by message meanwhile.
            generations = tuple(self._generations.get(member, 0) for member in members)
        return generations

    async def _bypass(
        self, kind: CacheKind, key: str, members: tuple[Member, ...], loader: Callable[[], Awaitable[T]]
    ) -> T:
        _child(BYPASSED, kind.value).inc()
        flight = f"bypass|{kind.value}|{members}|{key}"
        payload = await self._flights.run(flight, lambda: self._load(kind, loader))
        return json.loads(payload)  # type: ignore[no-any-return]

    async def _load(self, kind: CacheKind, loader: Callable[[], Awaitable[Any]]) -> str:
        _child(LOADS, kind.value).inc()
        return encode(await loader())

    async def _lookup(
        self, kind: CacheKind, entry_key: str, members: tuple[Member, ...], *, epoch: int, listening: bool
    ) -> str | _Unavailable | None:
        """The entry's JSON from L1, else from L2 (copied into L1); ``None`` on a miss in both."""
        if listening and self._l1.enabled:
            payload = self._l1.get(entry_key)
            if payload is not None:
                _child(HITS, "l1", kind.value).inc()
                return payload
            _child(MISSES, "l1", kind.value).inc()
        found = await self._l2_get(entry_key)
        if isinstance(found, str):
            _child(HITS, "l2", kind.value).inc()
            self._remember(kind, entry_key, found, members=members, epoch=epoch, listening=listening)
        elif found is None:
            _child(MISSES, "l2", kind.value).inc()
        return found

    async def _load_once(
        self,
        *,
        kind: CacheKind,
        entry_key: str,
        members: tuple[Member, ...],
        loader: Callable[[], Awaitable[Any]],
        cache_none: bool,
        epoch: int,
        listening: bool,
    ) -> str:
        """Load a missing entry, unless another process is already loading it (then wait for its value)."""
        lock_key, token = KeySpace.lock(entry_key), uuid.uuid4().hex
        # Our miss may predate a load that finished just before we took the lock: read again, in the same trip.
        locked, loaded_elsewhere = await self._lock_and_reread(entry_key, lock_key, token)
        if isinstance(loaded_elsewhere, str):
            if locked:
                await self._unlock(lock_key, token)
        elif locked is False:
            loaded_elsewhere = await self._wait_for_other_loader(entry_key, lock_key)
        if isinstance(loaded_elsewhere, str):
            _child(HITS, "l2", kind.value).inc()
            self._remember(kind, entry_key, loaded_elsewhere, members=members, epoch=epoch, listening=listening)
            return loaded_elsewhere
        try:
            payload = await self._load(kind, loader)
        except BaseException:
            if locked:
                await self._unlock(lock_key, token)
            raise
        ttl_s = kind_ttl_s(kind, self.settings.ttl)
        if payload == "null" and not cache_none:
            if locked:
                await self._unlock(lock_key, token)
            return payload
        if locked:
            await self._store_and_unlock(entry_key, payload, ttl_s, lock_key, token)
        else:
            await self._l2_set(entry_key, payload, ttl_s)
        self._remember(kind, entry_key, payload, members=members, epoch=epoch, listening=listening)
        return payload

    def _remember(
        self, kind: CacheKind, entry_key: str, payload: str, *, members: tuple[Member, ...], epoch: int, listening: bool
    ) -> None:
        if listening and self._listening and epoch == self._epoch:
            ttl_s = min(float(kind_ttl_s(kind, self.settings.ttl)), self.settings.l1_ttl_s)
            self._l1.put(entry_key, payload, ttl_s, frozenset(members))

    async def _l2_get(self, entry_key: str) -> str | _Unavailable | None:
        if not self._health.available():
            return _UNAVAILABLE
        try:
            found = cast(str | None, await self._client().get(entry_key))
        except REDIS_FAILURES as error:
            self._health.failed("get", error)
            return _UNAVAILABLE
        self._health.succeeded()
        return found

    async def _l2_set(self, entry_key: str, payload: str, ttl_s: int) -> bool:
        if not self._health.available():
            return False
        try:
            await self._client().set(entry_key, payload, ex=ttl_s)
        except REDIS_FAILURES as error:
            self._health.failed("set", error)
            return False
        self._health.succeeded()
        return True

    async def _lock_and_reread(self, entry_key: str, lock_key: str, token: str) -> tuple[bool | None, str | None]:
        """Try the load lock and read the entry again, in one round trip: (locked, the entry if stored now).

        ``locked`` is ``True`` if we hold the load lock, ``False`` if another
        process does, ``None`` if Redis failed.
        """
        lock_ms = int(self.settings.load_lock_s * 1000)
        try:
            async with self._client().pipeline(transaction=False) as pipe:
                pipe.set(lock_key, token, nx=True, px=lock_ms)
                pipe.get(entry_key)
                locked, found = await pipe.execute()
        except REDIS_FAILURES as error:
            self._health.failed("lock", error)
            return None, None
        return bool(locked), cast(str | None, found)

    async def _unlock(self, lock_key: str, token: str) -> None:
        try:
            await self._client().eval(_UNLOCK, 1, lock_key, token)
        except REDIS_FAILURES as error:
            self._health.failed("unlock", error)

    async def _store_and_unlock(self, entry_key: str, payload: str, ttl_s: int, lock_key: str, token: str) -> None:
        try:
            await self._client().eval(_STORE_AND_UNLOCK, 2, entry_key, lock_key, payload, ttl_s, token)
        except REDIS_FAILURES as error:
            self._health.failed("set", error)

    async def _wait_for_other_loader(self, entry_key: str, lock_key: str) -> str | None:
        """The value another process is loading, once stored; ``None`` if it gave up or took too long."""
        deadline = time.monotonic() + self.settings.load_lock_s
        pause = 0.005
        while time.monotonic() < deadline:
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.1)
            try:
                async with self._client().pipeline(transaction=False) as pipe:
                    pipe.get(entry_key)
                    pipe.exists(lock_key)
                    found, still_loading = await pipe.execute()
            except REDIS_FAILURES as error:
                self._health.failed("get", error)
                return None
            if found is not None:
                return str(found)
            if not still_loading:
                return None
        return None
