"""What coalescing the auth worker's user lookups could save on a cold cache: k lookups one at a time vs one query.

Run from the repository root::

    PYTHONPATH=scripts .venv/bin/python -m bench.lookup_coalescing [--lookups N] [--group K] [--rounds R]
        [--companies C]

It starts its own PostgreSQL, applies the runtime's schema and registers C
companies of 100 users each. Then it looks users up by company and phone
(the auth worker's ``AuthStore.user_by_phone``, the lookup a cold cache
sends to PostgreSQL for every message), each key a different company, in
groups of K, the worker's concurrency, through the runtime's ``Database``
(pool, monitoring, retries), two ways:

- ``single``: K concurrent ``user_by_phone`` calls, as K concurrent jobs
  missing the cache make today (K queries);
- ``coalesced``: the K keys in one query (``unnest`` of the two arrays,
  joined to ``users``), as a coalescing loader would at its best, every
  job of the group arriving within its window;
- ``single reset``: ``single`` with asyncpg's reset query sent on every
  release to the pool again (``SELECT pg_advisory_unlock_all(); CLOSE ALL;
  UNLISTEN *; RESET ALL;``): the ablation of the runtime's pool, which
  sends none (``db.database.NoResetConnection``), one statement per lookup.

The three take turns for R rounds; it prints the CPU time per lookup of the
benchmark process and of PostgreSQL's processes, median of rounds, and the
ratios. This is the ceiling: it assumes every lookup finds K - 1 others in
its window, and does not count the window's own wait.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import uvloop

from bench.db_pool import bench_database
from falachefe_devstack.postgres import PostgresServer
from falachefe_devstack.process import cpu_seconds
from falachefe_runtime.auth.store import AuthStore
from falachefe_runtime.config import DatabaseSettings, PoolSettings
from falachefe_runtime.db import Database
from falachefe_runtime.db.database import NoResetConnection

USERS_PER_COMPANY = 100
#: The runtime's own (empty) reset query, put back after each ``single reset`` run.
_NO_RESET = NoResetConnection.get_reset_query
COALESCED = (
    "SELECT k.company_id, k.phone_number, u.id, u.is_active, u.is_blocked"
    " FROM unnest($1::uuid[], $2::text[]) AS k (company_id, phone_number)"
    " LEFT JOIN users u ON u.company_id = k.company_id AND u.phone_number = k.phone_number"
)


async def seed(dsn: str, companies: int) -> list[uuid.UUID]:
    connection = await asyncpg.connect(dsn)
    try:
        ids: list[uuid.UUID] = [
            await connection.fetchval("INSERT INTO companies (name) VALUES ($1) RETURNING id", f"bench {n}")
            for n in range(companies)
        ]
        await connection.copy_records_to_table(
            "users",
            records=[(c, f"+55119{n:08d}", f"user {n}") for c in ids for n in range(USERS_PER_COMPANY)],
            columns=["company_id", "phone_number", "name"],
        )
        await connection.execute("ANALYZE users")
        return ids
    finally:
        await connection.close()


async def one_way(
    db: Database, store: AuthStore, mode: str, companies: list[uuid.UUID], lookups: int, group: int, postmaster: int
) -> tuple[float, float]:
    """CPU ms per lookup (this process, PostgreSQL) for ``lookups`` lookups, ``group`` at a time."""
    keys = [(companies[n % len(companies)], f"+55119{(n * 7) % USERS_PER_COMPANY:08d}") for n in range(lookups)]
    if mode == "single reset":  # measurement only: asyncpg's own reset query on each release, as before
        NoResetConnection.get_reset_query = asyncpg.Connection.get_reset_query  # type: ignore[method-assign]
    started, db_started = time.process_time(), cpu_seconds(postmaster, with_children=True)
    for start in range(0, lookups, group):
        batch = keys[start : start + group]
        if mode.startswith("single"):
            found = await asyncio.gather(*(store.user_by_phone(c, p) for c, p in batch))
            assert all(user is not None for user in found)
        else:
            rows = await db.fetch(
                COALESCED, [c for c, _ in batch], [p for _, p in batch], name="bench.users_by_phone", readonly=True
            )
            assert len(rows) == len(batch) and all(row["id"] is not None for row in rows)
    worker = 1000 * (time.process_time() - started) / lookups
    server = 1000 * (cpu_seconds(postmaster, with_children=True) - db_started) / lookups
    if mode == "single reset":
        NoResetConnection.get_reset_query = _NO_RESET  # type: ignore[method-assign]
    return worker, server


async def measure(server: PostgresServer, lookups: int, group: int, rounds: int, companies: int) -> None:
    dsn = await bench_database(server)
    ids = await seed(dsn, companies)
    assert server.process is not None and server.process.popen is not None
    postmaster = server.process.popen.pid
    cpu: dict[str, list[tuple[float, float]]] = {"single": [], "coalesced": [], "single reset": []}
    async with Database(DatabaseSettings(dsn=dsn, primary=PoolSettings(min_size=group, max_size=group))) as db:
        store = AuthStore(db)
        await one_way(db, store, "single", ids, 500, group, postmaster)  # warm the pool and the statement caches
        await one_way(db, store, "coalesced", ids, 500, group, postmaster)
        modes = tuple(cpu)
        for index in range(rounds):
            for mode in modes if index % 2 == 0 else modes[::-1]:
                cpu[mode].append(await one_way(db, store, mode, ids, lookups, group, postmaster))
    median = {mode: tuple(statistics.median(v[i] for v in values) for i in (0, 1)) for mode, values in cpu.items()}
    single, coalesced = median["single"], median["coalesced"]
    print(
        f"{lookups} user lookups per round, {companies} companies, groups of {group}, median of {rounds} rounds "
        "(PostgreSQL local, through Database)"
    )
    print(f"{'':<12} {'worker CPU ms/lookup':>19} {'PostgreSQL CPU ms/lookup':>25}")
    for mode, (worker, pg) in median.items():
        print(f"{mode:<12} {worker:>19.3f} {pg:>25.3f}")
    print(
        f"ratio, coalesced / single: worker {coalesced[0] / single[0]:.2f}x, PostgreSQL {coalesced[1] / single[1]:.2f}x"
    )
    reset = median["single reset"]
    print(
        f"ratio, single / single reset (no reset query / asyncpg's): worker {single[0] / reset[0]:.2f}x, "
        f"PostgreSQL {single[1] / reset[1]:.2f}x; per lookup, reset - none: worker {reset[0] - single[0]:.3f} ms, "
        f"PostgreSQL {reset[1] - single[1]:.3f} ms"
    )
    print("per round (worker, PostgreSQL):", {m: [(round(a, 3), round(b, 3)) for a, b in v] for m, v in cpu.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lookups", type=int, default=5_000)
    parser.add_argument("--group", type=int, default=5, help="lookups coalesced into one query (the concurrency)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--companies", type=int, default=200)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-coalescing-") as workdir:
        server = PostgresServer(Path(workdir) / "pg").start()
        try:
            uvloop.run(measure(server, arguments.lookups, arguments.group, arguments.rounds, arguments.companies))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
