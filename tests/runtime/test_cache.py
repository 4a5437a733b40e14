"""The two-layer cache against a real Redis: layers, TTLs, stampedes, values."""

from __future__ import annotations

import asyncio
import datetime
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from falachefe_devstack.waiting import async_wait_for
from falachefe_runtime.cache import Cache, CacheKind, Scope
from falachefe_runtime.config import CacheSettings, CacheTTLs, RedisSettings

COMPANY = str(uuid.uuid4())


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Loader:
    """A loader that counts its calls; optionally slow, optionally failing."""

    def __init__(self, value: Any = "loaded", *, delay_s: float = 0.0, error: Exception | None = None) -> None:
        self.value = value
        self.delay_s = delay_s
        self.error = error
        self.calls = 0

    async def __call__(self) -> Any:
        self.calls += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        return self.value


def new_cache(redis_url: str, **settings: Any) -> Cache:
    return Cache(RedisSettings(url=redis_url), CacheSettings(**settings))


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


async def test_a_miss_loads_then_l1_answers_then_another_process_hits_l2(redis_url: str, cache: Cache) -> None:
    kind = CacheKind.COMPANY_CONFIG.value
    counters = {
        (metric, layer): sample(f"falachefe_cache_{metric}_total", layer=layer, kind=kind)
        for metric in ("hits", "misses")
        for layer in ("l1", "l2")
    }

    def delta(metric: str, layer: str) -> float:
        return sample(f"falachefe_cache_{metric}_total", layer=layer, kind=kind) - counters[metric, layer]

    loader = Loader({"plan": "pro"})
    scope = Scope(company_id=COMPANY)
    assert await cache.get_or_load(CacheKind.COMPANY_CONFIG, "config", loader, scope=scope) == {"plan": "pro"}
    assert (loader.calls, delta("misses", "l1"), delta("misses", "l2")) == (1, 1, 1)

    assert await cache.get_or_load(CacheKind.COMPANY_CONFIG, "config", loader, scope=scope) == {"plan": "pro"}
    assert (loader.calls, delta("hits", "l1")) == (1, 1)

    async with new_cache(redis_url) as other_process:
        assert await other_process.get_or_load("company_config", "config", loader, scope=scope) == {"plan": "pro"}
    assert (loader.calls, delta("hits", "l2"), delta("misses", "l1")) == (1, 1, 2)


async def test_each_kind_is_stored_in_redis_with_its_ttl(cache: Cache, redis_client: aioredis.Redis) -> None:
    expected = {
        CacheKind.SESSION: 86_400,
        CacheKind.WHATSAPP_AUTH: 300,
        CacheKind.CREW_RESPONSE: 1_800,
        CacheKind.COMPANY_CONFIG: 3_600,
        CacheKind.CREW_CONFIG: 3_600,
    }
    for kind, ttl in expected.items():
        await cache.get_or_load(kind, "entry", Loader(kind.value), scope=Scope(company_id=COMPANY))
        keys = [key async for key in redis_client.scan_iter(match=f"falachefe:cache:{kind.value}:*")]
        assert len(keys) == 1, keys
        assert COMPANY in keys[0]
        assert ttl - 5 <= await redis_client.ttl(keys[0]) <= ttl, kind


async def test_l1_keeps_an_entry_no_longer_than_its_kind_ttl(redis_url: str) -> None:
    async with new_cache(redis_url, l1_ttl_s=600, ttl=CacheTTLs(whatsapp_auth_s=1)) as cache:
        loader = Loader()
        await cache.get_or_load(CacheKind.WHATSAPP_AUTH, "+5511999990000", loader)
        assert loader.calls == 1

        async def reloaded() -> bool:
            await cache.get_or_load(CacheKind.WHATSAPP_AUTH, "+5511999990000", loader)
            return loader.calls == 2

        # With L1 at its own 600 s this would never reload.
        await async_wait_for(reloaded, timeout=20, interval=0.2, what="reload after the 1 s kind TTL")


async def test_l1_holds_at_most_its_configured_number_of_entries(redis_url: str) -> None:
    kind = CacheKind.CREW_RESPONSE.value
    async with new_cache(redis_url, l1_max_entries=10) as cache:
        loader = Loader("reply")
        for number in range(50):
            await cache.get_or_load(CacheKind.CREW_RESPONSE, f"message-{number}", loader)
        l1_hits, l2_hits = (sample("falachefe_cache_hits_total", layer=layer, kind=kind) for layer in ("l1", "l2"))
        await cache.get_or_load(CacheKind.CREW_RESPONSE, "message-49", loader)  # recent: still in L1
        await cache.get_or_load(CacheKind.CREW_RESPONSE, "message-0", loader)  # evicted: back from Redis
        assert sample("falachefe_cache_hits_total", layer="l1", kind=kind) == l1_hits + 1
        assert sample("falachefe_cache_hits_total", layer="l2", kind=kind) == l2_hits + 1
        assert loader.calls == 50


async def test_a_hundred_concurrent_misses_run_the_loader_once(cache: Cache) -> None:
    loader = Loader({"crew": "support"}, delay_s=0.2)
    results = await asyncio.gather(
        *(
            cache.get_or_load(CacheKind.CREW_CONFIG, "active", loader, scope=Scope(company_id=COMPANY))
            for _ in range(100)
        )
    )
    assert loader.calls == 1
    assert results == [{"crew": "support"}] * 100


async def test_concurrent_misses_in_two_processes_run_the_loader_once(redis_url: str) -> None:
    loader = Loader("shared", delay_s=0.3)
    async with new_cache(redis_url) as first, new_cache(redis_url) as second:
        results = await asyncio.gather(
            *(
                process.get_or_load(CacheKind.SESSION, "user-1", loader)
                for _ in range(50)
                for process in (first, second)
            )
        )
    assert loader.calls == 1
    assert set(results) == {"shared"}


async def test_a_failing_load_reaches_every_waiter_and_caches_nothing(cache: Cache) -> None:
    failing = Loader(delay_s=0.1, error=LookupError("company not found"))
    outcomes = await asyncio.gather(
        *(cache.get_or_load(CacheKind.COMPANY_CONFIG, "config", failing) for _ in range(10)), return_exceptions=True
    )
    assert failing.calls == 1
    assert all(isinstance(outcome, LookupError) for outcome in outcomes)
    working = Loader("found")
    assert await cache.get_or_load(CacheKind.COMPANY_CONFIG, "config", working) == "found"
    assert working.calls == 1


async def test_none_is_cached_only_when_asked(cache: Cache) -> None:
    unknown = Loader(None)
    assert await cache.get_or_load(CacheKind.WHATSAPP_AUTH, "+5511000000000", unknown) is None
    assert await cache.get_or_load(CacheKind.WHATSAPP_AUTH, "+5511000000000", unknown) is None
    assert unknown.calls == 2
    negative = Loader(None)
    for _ in range(2):
        assert await cache.get_or_load(CacheKind.WHATSAPP_AUTH, "+5511000000001", negative, cache_none=True) is None
    assert negative.calls == 1


async def test_values_have_the_same_json_shape_on_a_miss_and_on_a_hit(cache: Cache) -> None:
    ident = uuid.uuid4()
    at = datetime.datetime(2025, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    loader = Loader({"id": ident, "at": at, "agents": ("researcher", "writer")})
    expected = {"id": str(ident), "at": at.isoformat(), "agents": ["researcher", "writer"]}
    missed = await cache.get_or_load(CacheKind.CREW_CONFIG, "active", loader)
    assert missed == expected
    missed["agents"].append("mutated by a caller")
    assert await cache.get_or_load(CacheKind.CREW_CONFIG, "active", loader) == expected


async def test_a_value_that_is_not_json_is_an_error_naming_its_type(cache: Cache) -> None:
    with pytest.raises(TypeError, match="JSON-serialisable; got object"):
        await cache.get_or_load(CacheKind.SESSION, "bad", Loader(object()))


async def test_tenants_with_the_same_key_are_kept_apart(cache: Cache) -> None:
    other_company = str(uuid.uuid4())
    first = await cache.get_or_load(CacheKind.COMPANY_CONFIG, "config", Loader("A"), scope=Scope(company_id=COMPANY))
    second = await cache.get_or_load(
        CacheKind.COMPANY_CONFIG, "config", Loader("B"), scope=Scope(company_id=other_company)
    )
    assert (first, second) == ("A", "B")


def test_a_scope_id_that_could_forge_a_key_is_refused() -> None:
    with pytest.raises(ValueError, match="company_id 'a:b,u=x' is not a valid scope id"):
        Scope(company_id="a:b,u=x").members()


async def test_set_then_get(redis_url: str, cache: Cache) -> None:
    scope = Scope(company_id=COMPANY, user_id=str(uuid.uuid4()))
    assert await cache.get(CacheKind.SESSION, "session", scope=scope) is None
    assert await cache.set(CacheKind.SESSION, "session", {"expires": "later"}, scope=scope)
    assert await cache.get(CacheKind.SESSION, "session", scope=scope) == {"expires": "later"}
    async with new_cache(redis_url) as other_process:
        assert await other_process.get("session", "session", scope=scope) == {"expires": "later"}


def test_a_cache_needs_a_redis_url() -> None:
    with pytest.raises(ValueError, match=r"redis\.url is required"):
        Cache(RedisSettings(), CacheSettings())


async def test_with_parse_l1_keeps_the_parsed_object_and_a_hit_decodes_nothing(redis_url: str, cache: Cache) -> None:
    parsed: list[Any] = []

    def parse(value: Any) -> tuple[str, ...]:
        parsed.append(value)
        return tuple(value["agents"])

    scope = Scope(company_id=COMPANY)
    loader = Loader({"agents": ["researcher", "writer"]})
    first = await cache.get_or_load(CacheKind.CREW_CONFIG, "active", loader, scope=scope, parse=parse)
    hits = [
        await cache.get_or_load(CacheKind.CREW_CONFIG, "active", loader, scope=scope, parse=parse) for _ in range(5)
    ]
    assert first == ("researcher", "writer") and all(hit is first for hit in hits)
    assert loader.calls == 1 and len(parsed) == 1
    # Without parse, the same entry is still decoded afresh for each caller.
    plain = await cache.get_or_load(CacheKind.CREW_CONFIG, "active", loader, scope=scope)
    assert plain == {"agents": ["researcher", "writer"]}
    assert plain is not await cache.get_or_load(CacheKind.CREW_CONFIG, "active", loader, scope=scope)
    # An L2 hit in another process parses once there; an invalidation drops the object here.
    async with new_cache(redis_url) as other:
        again = await other.get_or_load(CacheKind.CREW_CONFIG, "active", loader, scope=scope, parse=parse)
        assert again == first and again is not first and loader.calls == 1 and len(parsed) == 2
    await cache.invalidate_company(COMPANY)
    reloaded = await cache.get_or_load(CacheKind.CREW_CONFIG, "active", loader, scope=scope, parse=parse)
    assert reloaded == first and reloaded is not first and loader.calls == 2
