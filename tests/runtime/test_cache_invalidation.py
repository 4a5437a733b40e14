"""Cache invalidation across processes: a real second process, real Redis pub/sub."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from falachefe_devstack.waiting import async_wait_for
from falachefe_runtime.cache import Cache, CacheKind, Scope
from falachefe_runtime.config import CacheSettings, RedisSettings

PROBE = Path(__file__).with_name("cache_probe.py")


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Probe:
    """The second process (``cache_probe.py``), asked for values line by line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout=30)
        assert line, "the probe process exited"
        return dict(json.loads(line))

    async def get(self, company: str, key: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(f"get {company} {key}\n".encode())
        await self.process.stdin.drain()
        return await self.read()


@pytest.fixture
async def probe(redis_url: str) -> AsyncIterator[Probe]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(PROBE), redis_url, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    started = Probe(process)
    try:
        assert await started.read() == {"listening": True}
        yield started
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), timeout=20)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def test_invalidating_a_company_reaches_the_l1_of_another_process(
    probe: Probe, cache: Cache, redis_url: str
) -> None:
    company, bystander = str(uuid.uuid4()), str(uuid.uuid4())
    assert await probe.get(company, "config") == {"value": f"{company}/config/load-1", "loads": 1}
    assert await probe.get(bystander, "config") == {"value": f"{bystander}/config/load-1", "loads": 1}

    # Empty Redis: what the probe answers now can only come from its own L1.
    admin = aioredis.Redis.from_url(redis_url)
    await admin.flushdb()
    await admin.aclose()
    assert await probe.get(company, "config") == {"value": f"{company}/config/load-1", "loads": 1}

    await cache.invalidate_company(company)

    async def reloaded() -> dict[str, Any] | None:
        answer = await probe.get(company, "config")
        return answer if answer["loads"] == 2 else None

    assert await async_wait_for(reloaded, timeout=20, interval=0.05, what="the probe reloading")
    assert await probe.get(company, "config") == {"value": f"{company}/config/load-2", "loads": 2}
    # Another company's entry is untouched.
    assert await probe.get(bystander, "config") == {"value": f"{bystander}/config/load-1", "loads": 1}


async def test_user_and_crew_invalidations_drop_only_their_entries(redis_url: str, cache: Cache) -> None:
    company, user, crew = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    scopes = {
        "session": (CacheKind.SESSION, Scope(company_id=company, user_id=user)),
        "reply": (CacheKind.CREW_RESPONSE, Scope(company_id=company, crew_id=crew)),
        "config": (CacheKind.COMPANY_CONFIG, Scope(company_id=company)),
    }
    loads: dict[str, int] = dict.fromkeys(scopes, 0)

    async def read(process: Cache, name: str) -> int:
        kind, scope = scopes[name]

        async def load() -> int:
            loads[name] += 1
            return loads[name]

        value: int = await process.get_or_load(kind, name, load, scope=scope)
        return value

    async with Cache(RedisSettings(url=redis_url), CacheSettings()) as other:

        async def wait_until_reads(name: str, expected: int) -> None:
            async def probe() -> bool:
                return await read(other, name) == expected

            await async_wait_for(probe, timeout=20, interval=0.05, what=f"{name} reloaded")

        for name in scopes:
            assert await read(other, name) == 1

        await cache.invalidate_user(user)
        await wait_until_reads("session", 2)
        assert (await read(other, "reply"), await read(other, "config")) == (1, 1)

        await cache.invalidate_crew(crew)
        await wait_until_reads("reply", 2)
        assert (await read(other, "session"), await read(other, "config")) == (2, 1)

        await cache.invalidate_company(company)
        for name, expected in (("session", 3), ("reply", 3), ("config", 2)):
            await wait_until_reads(name, expected)


async def test_a_lost_subscription_empties_l1_before_it_is_used_again(redis_url: str, cache: Cache) -> None:
    kind = CacheKind.COMPANY_CONFIG
    loader_calls = 0

    async def load() -> str:
        nonlocal loader_calls
        loader_calls += 1
        return "value"

    await cache.get_or_load(kind, "config", load)
    l1_hits = sample("falachefe_cache_hits_total", layer="l1", kind=kind.value)
    await cache.get_or_load(kind, "config", load)
    assert sample("falachefe_cache_hits_total", layer="l1", kind=kind.value) == l1_hits + 1

    resets = sample("falachefe_cache_l1_resets_total")
    database = redis_url.rsplit("/", 1)[1]
    admin = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        # Kill this test's subscriber connection: messages sent meanwhile are lost for good.
        clients = await admin.client_list(_type="pubsub")
        ours = [client["id"] for client in clients if client["db"] == database]
        assert ours
        for client_id in ours:
            await admin.client_kill_filter(_id=client_id)
    finally:
        await admin.aclose()

    await async_wait_for(
        lambda: asyncio.sleep(0, result=sample("falachefe_cache_l1_resets_total") == resets + 1),
        timeout=20,
        what="the listener noticing",
    )
    await async_wait_for(lambda: asyncio.sleep(0, result=cache.listening), timeout=20, what="resubscribed")
    l2_hits = sample("falachefe_cache_hits_total", layer="l2", kind=kind.value)
    assert await cache.get_or_load(kind, "config", load) == "value"
    assert sample("falachefe_cache_hits_total", layer="l2", kind=kind.value) == l2_hits + 1, "L1 was emptied"
    assert loader_calls == 1
