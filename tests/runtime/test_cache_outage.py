"""A Redis outage: the cache falls back to the loader, says so once, and recovers by itself.

Uses a private Redis server, since the test stops it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from falachefe_devstack.redis import RedisServer
from falachefe_devstack.waiting import async_wait_for
from falachefe_runtime.cache import Cache, CacheKind, Scope
from falachefe_runtime.config import CacheSettings, RedisSettings


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def errors() -> float:
    return sum(
        metric_sample.value
        for metric in REGISTRY.collect()
        if metric.name == "falachefe_cache_errors"
        for metric_sample in metric.samples
        if metric_sample.name == "falachefe_cache_errors_total"
    )


async def test_redis_outage_degrades_to_the_loader_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(tmp_path / "redis").start()
    company = str(uuid.uuid4())
    scope = Scope(company_id=company)
    kind = CacheKind.COMPANY_CONFIG
    loads = 0

    async def load() -> dict[str, int]:
        nonlocal loads
        loads += 1
        return {"load": loads}

    try:
        async with Cache(RedisSettings(url=server.url(0)), CacheSettings(redis_timeout_s=0.5)) as cache:
            assert cache.listening
            assert await cache.get_or_load(kind, "config", load, scope=scope) == {"load": 1}

            server.stop()
            failures, bypassed = errors(), sample("falachefe_cache_bypassed_total", kind=kind.value)
            with caplog.at_level(logging.WARNING, logger="falachefe_runtime.cache"):
                for attempt in range(20):
                    value = await cache.get_or_load(kind, f"key-{attempt}", load, scope=scope)
                    assert value == {"load": attempt + 2}
                await cache.invalidate_company(company)
            assert errors() > failures
            assert sample("falachefe_cache_bypassed_total", kind=kind.value) >= bypassed + 19
            assert sample("falachefe_cache_redis_up") == 0
            assert cache.pending_invalidations == 1
            down_reports = [record for record in caplog.records if getattr(record, "event", "") == "cache_redis_down"]
            assert len(down_reports) == 1, "an outage is reported once, not per call"

            # The same server comes back on the same port, empty.
            server = RedisServer(tmp_path / "redis-again", port=server.port).start()
            await async_wait_for(
                lambda: asyncio.sleep(0, result=cache.listening and cache.pending_invalidations == 0),
                timeout=30,
                what="the cache reconnecting and replaying the invalidation",
            )
            loads_before = loads

            async def cached_again() -> bool:
                await cache.get_or_load(kind, "after", load, scope=scope)
                return loads == loads_before + 1 and await cache.get_or_load(kind, "after", load, scope=scope) == {
                    "load": loads_before + 1
                }

            await async_wait_for(cached_again, timeout=30, what="values cached again")
            assert sample("falachefe_cache_redis_up") == 1
            client = aioredis.Redis.from_url(server.url(0), decode_responses=True)
            try:
                assert [key async for key in client.scan_iter(match=f"falachefe:cache:{kind.value}:*after")]
                assert await client.get(f"falachefe:cache:gen:company:{company}") is not None, "replayed"
            finally:
                await client.aclose()
    finally:
        server.stop()
