"""Fixtures for the runtime's tests: a migrated database, configs, queues, a cache, the fake LLM server.

The helpers the tests call directly are in ``worker_harness``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio as redis
from worker_harness import config_values

from falachefe_devstack.llm_standin import FakeOpenAI
from falachefe_runtime.cache import Cache
from falachefe_runtime.config import CacheSettings, RedisSettings, RuntimeConfig
from falachefe_runtime.db import migrate
from falachefe_runtime.queues import Queues

# CrewAI asks on stdin about tracing at its first kickoff unless told it is under test.
os.environ.setdefault("CREWAI_TESTING", "true")


@pytest.fixture
async def app_dsn(pg_dsn: str) -> str:
    """A fresh database with the runtime's schema."""
    await migrate(pg_dsn)
    return pg_dsn


@pytest.fixture
async def sql(app_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection for arranging data and checking effects."""
    connection = await asyncpg.connect(app_dsn)
    yield connection
    await connection.close()


@pytest.fixture(scope="session")
def fake_llm() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI().start()
    yield server
    server.stop()


@pytest.fixture
def llm(fake_llm: FakeOpenAI) -> FakeOpenAI:
    """The session's fake LLM, with no requests recorded and no delay."""
    fake_llm.reset()
    return fake_llm


@pytest.fixture
def values(app_dsn: str, redis_url: str, fake_llm: FakeOpenAI) -> dict[str, Any]:
    """This test's configuration as nested dicts (for subprocess environments)."""
    return config_values(app_dsn, redis_url, fake_llm.base_url)


@pytest.fixture
def make_config(app_dsn: str, redis_url: str, fake_llm: FakeOpenAI) -> Callable[..., RuntimeConfig]:
    """``make_config("auth", queues={...})``: a validated config for one pool of this test."""

    def make(pool: str, **sections: dict[str, Any]) -> RuntimeConfig:
        values = config_values(app_dsn, redis_url, fake_llm.base_url, **sections)
        values["worker"] = {**values["worker"], "kind": pool}
        return RuntimeConfig(**values)

    return make


@pytest.fixture
async def queues(redis_url: str) -> AsyncIterator[Queues]:
    """The producer side of this test's queues."""
    queues = Queues(redis_url)
    yield queues
    await queues.close()


@pytest.fixture
async def cache(redis_url: str) -> AsyncIterator[Cache]:
    """A started cache with the default settings, already receiving invalidations."""
    async with Cache(RedisSettings(url=redis_url), CacheSettings()) as started:
        assert started.listening
        yield started


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.Redis]:
    """A plain Redis client (strings decoded) on this test's database, to look at what bullmq keeps."""
    connection = redis.Redis.from_url(redis_url, decode_responses=True)
    yield connection
    await connection.aclose()
