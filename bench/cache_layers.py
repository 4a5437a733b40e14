"""Latency of a cached read from each layer: L1 (in-process) vs L2 (Redis) vs the loader (PostgreSQL).

Run from the repository root::

    PYTHONPATH=scripts .venv/bin/python -m bench.cache_layers [--reads N] [--rounds K]

It starts its own PostgreSQL and Redis (falachefe_devstack), applies the
runtime's schema, and reads one company's configuration (the row the auth
and crew workers look up for every message) ``--reads`` times, one after
another, three ways: straight from the database through ``Database`` (the
baseline, what a miss costs), through a ``Cache`` whose L1 is off (every
read is an L2 hit: one Redis round trip), and through a ``Cache`` with its
default L1 (every read an L1 hit). The three take turns for ``--rounds``
rounds and each reports its median round. Ratios are speed-ups over the
baseline of the same run, in throughput and in median latency (the latter
is the steadier figure on a busy machine).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from bench.db_pool import bench_database
from falachefe_devstack.postgres import PostgresServer
from falachefe_devstack.redis import RedisServer
from falachefe_runtime.cache import Cache, CacheKind, Scope
from falachefe_runtime.config import CacheSettings, DatabaseSettings, PoolSettings, RedisSettings
from falachefe_runtime.db import Database

COMPANY_CONFIG = "SELECT id, name, domain, is_active, settings FROM companies WHERE id = $1"


@dataclass
class Result:
    name: str
    latencies_s: list[float]

    @property
    def seconds(self) -> float:
        return sum(self.latencies_s)

    @property
    def per_second(self) -> float:
        return len(self.latencies_s) / self.seconds

    def percentile_us(self, fraction: float) -> float:
        ordered = sorted(self.latencies_s)
        return 1e6 * ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def timed(name: str, reads: int, read: Callable[[], Awaitable[Any]]) -> Result:
    latencies = []
    for _ in range(reads):
        started = time.perf_counter()
        await read()
        latencies.append(time.perf_counter() - started)
    return Result(name, latencies)


async def measure(dsn: str, redis_url: str, reads: int, rounds: int) -> list[Result]:
    admin = await asyncpg.connect(dsn)
    company: uuid.UUID = await admin.fetchval(
        "INSERT INTO companies (name, domain, settings) VALUES ('bench', 'bench.example', $1::jsonb) RETURNING id",
        '{"language": "pt-BR", "greeting": "Olá!", "business_hours": {"mon": "08-18", "sat": "08-12"}}',
    )
    await admin.close()
    scope = Scope(company_id=company)

    async with (
        Database(DatabaseSettings(dsn=dsn, primary=PoolSettings(min_size=1, max_size=2))) as db,
        Cache(RedisSettings(url=redis_url), CacheSettings(l1_max_entries=0)) as l2_only,
        Cache(RedisSettings(url=redis_url), CacheSettings()) as two_layers,
    ):

        async def load() -> dict[str, Any]:
            return dict(await db.fetchrow(COMPANY_CONFIG, company, name="bench.company_config", readonly=True))

        methods: dict[str, Callable[[], Awaitable[Any]]] = {
            "loader: PostgreSQL (baseline)": load,
            "L2 hit: Redis": lambda: l2_only.get_or_load(CacheKind.COMPANY_CONFIG, "config", load, scope=scope),
            "L1 hit: in-process": lambda: two_layers.get_or_load(CacheKind.COMPANY_CONFIG, "config", load, scope=scope),
        }
        for read in methods.values():  # warm: pools connected, caches filled
            await read()
        runs: dict[str, list[Result]] = {name: [] for name in methods}
        for _ in range(rounds):
            for name, read in methods.items():
                runs[name].append(await timed(name, reads, read))
    return [sorted(results, key=lambda result: result.per_second)[len(results) // 2] for results in runs.values()]


async def run(reads: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as workdir:
        postgres = PostgresServer(Path(workdir, "postgres")).start()
        redis = RedisServer(Path(workdir, "redis")).start()
        try:
            results = await measure(await bench_database(postgres), redis.url(0), reads, rounds)
        finally:
            redis.stop()
            postgres.stop()
    baseline = results[0]
    print(
        f"PostgreSQL and Redis on loopback; {reads} sequential reads of a company's config, median of {rounds} rounds"
    )
    print(f"{'layer':<32} {'reads/s':>10} {'p50 us':>9} {'p99 us':>9} {'x reads/s':>10} {'x p50':>8}")
    for result in results:
        print(
            f"{result.name:<32} {result.per_second:>10.0f} {result.percentile_us(0.50):>9.1f} "
            f"{result.percentile_us(0.99):>9.1f} {result.per_second / baseline.per_second:>9.1f}x "
            f"{baseline.percentile_us(0.50) / result.percentile_us(0.50):>7.1f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reads", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    asyncio.run(run(arguments.reads, arguments.rounds))


if __name__ == "__main__":
    main()
