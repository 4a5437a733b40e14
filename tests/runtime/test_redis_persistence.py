"""The worker tells whether the queue's Redis persists: AOF, none, or unknown when CONFIG is refused."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as redis
from prometheus_client import REGISTRY

from falachefe_devstack.redis import RedisServer
from falachefe_runtime.worker.persistence import check_redis_persistence


def modes() -> dict[str, float]:
    return {
        mode: REGISTRY.get_sample_value("falachefe_redis_persistence", {"mode": mode}) or 0.0
        for mode in ("aof", "rdb", "none", "unknown")
    }


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    await connection.aclose()


async def test_the_local_stack_runs_redis_with_aof_as_production_should(
    client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    assert await check_redis_persistence(client) == "aof"
    assert modes() == {"aof": 1, "rdb": 0, "none": 0, "unknown": 0}
    assert (await client.config_get("appendfsync"))["appendfsync"] == "everysec"
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


async def test_a_redis_without_persistence_is_named_in_a_warning_and_the_metric(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(tmp_path / "redis", persist=False).start()
    try:
        connection = redis.Redis.from_url(server.url())
        try:
            assert await check_redis_persistence(connection) == "none"
        finally:
            await connection.aclose()
    finally:
        server.stop()
    assert modes() == {"aof": 0, "rdb": 0, "none": 1, "unknown": 0}
    [warning] = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert "does not persist" in warning.getMessage() and "appendonly yes" in warning.getMessage()


async def test_a_refused_config_command_counts_as_unknown_not_as_an_error(
    client: redis.Redis, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    user, password = f"no-config-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    # A managed Redis often forbids CONFIG: an ACL user that may do anything else.
    await client.acl_setuser(user, enabled=True, passwords=[f"+{password}"], keys=["*"], commands=["+@all", "-config"])
    try:
        limited = redis.Redis.from_url(redis_url, username=user, password=password)
        try:
            assert await limited.ping()
            assert await check_redis_persistence(limited) == "unknown"
        finally:
            await limited.aclose()
    finally:
        await client.acl_deluser(user)
    assert modes() == {"aof": 0, "rdb": 0, "none": 0, "unknown": 1}
    [warning] = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert "cannot tell whether the queue's Redis persists" in warning.getMessage()
    assert password not in caplog.text
