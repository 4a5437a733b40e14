"""Each test gets its own PostgreSQL database and Redis key space.

Both parametrisations write a marker and then look for the other's: if the
fixtures leaked state between tests, whichever runs second would see it.
"""

from __future__ import annotations

import asyncpg
import pytest
import redis.asyncio as aioredis

MARKERS = ["first", "second"]


@pytest.mark.parametrize("marker", MARKERS)
async def test_postgres_database_is_private(pg_dsn: str, marker: str) -> None:
    connection = await asyncpg.connect(pg_dsn)
    try:
        tables = await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        assert tables == [], f"a fresh database already has tables: {tables}"
        await connection.execute("CREATE TABLE marker (name text)")
        await connection.execute("INSERT INTO marker VALUES ($1)", marker)
        assert await connection.fetchval("SELECT count(*) FROM marker") == 1
    finally:
        await connection.close()


@pytest.mark.parametrize("marker", MARKERS)
async def test_redis_keyspace_is_private(redis_url: str, marker: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert await client.dbsize() == 0
        await client.set(f"marker:{marker}", "1")
        assert await client.exists(*(f"marker:{m}" for m in MARKERS)) == 1
    finally:
        await client.aclose()
