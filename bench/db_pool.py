"""Pooled vs connect-per-query database access, and COPY vs executemany, measured side by side.

Run from the repository root::

    PYTHONPATH=scripts .venv/bin/python -m bench.db_pool [--queries N] [--concurrency C] [--rounds K] [--rows R]

It starts its own PostgreSQL (falachefe_devstack), applies the runtime's
schema, and runs the same user lookup (the auth worker's hottest query)
three ways: a new connection per query (the baseline), a plain asyncpg pool,
and the runtime's ``Database`` (pool + monitoring + retries). The methods
take turns for ``--rounds`` rounds and each reports its median round, so a
busy machine slows all of them alike. Then it bulk inserts the same rows
with ``executemany`` (the baseline) and with ``Database.copy_records``.
Ratios are against the baseline of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from falachefe_devstack.postgres import PostgresServer
from falachefe_runtime.config import DatabaseSettings, PoolSettings
from falachefe_runtime.db import Database, migrate

USER_LOOKUP = "SELECT id, name, role, is_blocked FROM users WHERE company_id = $1 AND phone_number = $2 AND is_active"


@dataclass
class Result:
    name: str
    seconds: float
    operations: int
    latencies_s: list[float]

    @property
    def per_second(self) -> float:
        return self.operations / self.seconds

    def percentile_ms(self, fraction: float) -> float:
        ordered = sorted(self.latencies_s)
        return 1000 * ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def timed_concurrently(
    name: str, operations: int, concurrency: int, operation: Callable[[int], Awaitable[object]]
) -> Result:
    latencies: list[float] = []
    next_index = iter(range(operations))

    async def lane() -> None:
        for index in next_index:
            started = time.perf_counter()
            await operation(index)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return Result(name, time.perf_counter() - started, operations, latencies)


def print_table(title: str, results: list[Result], unit: str) -> None:
    baseline = results[0]
    print(f"\n{title}")
    print(f"{'method':<34} {unit + '/s':>12} {'p50 ms':>9} {'p99 ms':>9} {'x baseline':>11}")
    for result in results:
        print(
            f"{result.name:<34} {result.per_second:>12.0f} {result.percentile_ms(0.50):>9.2f} "
            f"{result.percentile_ms(0.99):>9.2f} {result.per_second / baseline.per_second:>10.1f}x"
        )


async def lookups(dsn: str, queries: int, concurrency: int, rounds: int) -> list[Result]:
    company = await seed_users(dsn, users=1_000)
    phones = [f"+55119{n:08d}" for n in range(1_000)]

    async def connect_per_query(index: int) -> object:
        connection = await asyncpg.connect(dsn)
        try:
            return await connection.fetchrow(USER_LOOKUP, company, phones[index % len(phones)])
        finally:
            await connection.close()

    pool = await asyncpg.create_pool(dsn, min_size=concurrency, max_size=concurrency)
    sizing = PoolSettings(min_size=concurrency, max_size=max(concurrency, 20))
    db = Database(DatabaseSettings(dsn=dsn, primary=sizing))
    await db.start()
    methods: dict[str, Callable[[int], Awaitable[object]]] = {
        "connect per query (baseline)": connect_per_query,
        "asyncpg pool": lambda index: pool.fetchrow(USER_LOOKUP, company, phones[index % len(phones)]),
        "Database (pool + monitoring)": lambda index: db.fetchrow(
            USER_LOOKUP, company, phones[index % len(phones)], name="auth.user"
        ),
    }
    runs: dict[str, list[Result]] = {name: [] for name in methods}
    try:
        for _ in range(rounds):
            for name, operation in methods.items():
                runs[name].append(await timed_concurrently(name, queries, concurrency, operation))
    finally:
        await pool.close()
        await db.close()
    return [sorted(results, key=lambda result: result.per_second)[len(results) // 2] for results in runs.values()]


async def bench_database(server: PostgresServer) -> str:
    """The DSN of a new database ``bench`` on ``server`` with the runtime's schema (shared by the runtime's benches)."""
    admin = await asyncpg.connect(server.dsn())
    try:
        await admin.execute("CREATE DATABASE bench")
    finally:
        await admin.close()
    dsn = server.dsn("bench")
    await migrate(dsn)
    return dsn


async def seed_users(dsn: str, users: int) -> uuid.UUID:
    """A company with ``users`` users, phones ``+55119`` plus eight digits from 0; the company's id."""
    connection = await asyncpg.connect(dsn)
    try:
        company: uuid.UUID = await connection.fetchval("INSERT INTO companies (name) VALUES ('bench') RETURNING id")
        await connection.copy_records_to_table(
            "users",
            records=[(company, f"+55119{n:08d}", f"user {n}") for n in range(users)],
            columns=["company_id", "phone_number", "name"],
        )
        await connection.execute("ANALYZE users")
        return company
    finally:
        await connection.close()


async def bulk_inserts(dsn: str, rows: int, repeats: int = 3) -> list[Result]:
    company = uuid.uuid4()
    records = [(company, f"+55119{n:08d}", "message", n % 7 != 0, None) for n in range(rows)]
    columns = ["company_id", "phone_number", "event", "success", "reason"]
    insert = (
        "INSERT INTO whatsapp_auth_logs (company_id, phone_number, event, success, reason) VALUES ($1, $2, $3, $4, $5)"
    )
    results = []
    async with Database(DatabaseSettings(dsn=dsn, primary=PoolSettings(min_size=1, max_size=2))) as db:
        for name, operation in (
            ("executemany (baseline)", lambda: db.executemany(insert, records, name="bench.insert_logs")),
            ("Database.copy_records (COPY)", lambda: db.copy_records("whatsapp_auth_logs", columns, records)),
        ):
            durations = []
            for _ in range(repeats):
                started = time.perf_counter()
                await operation()
                durations.append(time.perf_counter() - started)
                await db.execute("TRUNCATE whatsapp_auth_logs")
            best = min(durations)
            results.append(Result(name, best, rows, [statistics.median(durations)]))
    return results


async def run(queries: int, concurrency: int, rounds: int, rows: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-db-") as workdir:
        server = PostgresServer(Path(workdir)).start()
        try:
            dsn = await bench_database(server)
            print(f"PostgreSQL on loopback; {queries} user lookups, {concurrency} at a time, median of {rounds} rounds")
            print_table("User lookup", await lookups(dsn, queries, concurrency, rounds), "queries")
            bulk = await bulk_inserts(dsn, rows)
            print(f"\nBulk insert of {rows} rows (best of 3)")
            print(f"{'method':<34} {'rows/s':>12} {'seconds':>9} {'x baseline':>11}")
            for result in bulk:
                print(
                    f"{result.name:<34} {result.per_second:>12.0f} {result.seconds:>9.3f} "
                    f"{result.per_second / bulk[0].per_second:>10.1f}x"
                )
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=20_000)
    arguments = parser.parse_args()
    asyncio.run(run(arguments.queries, arguments.concurrency, arguments.rounds, arguments.rows))


if __name__ == "__main__":
    main()
