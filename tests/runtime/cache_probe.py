"""A second worker process holding its own Cache, driven by test_cache_invalidation over stdin/stdout.

Usage: ``python cache_probe.py <redis-url>``. It prints ``{"listening": ...}``
once started, then answers each ``get <company_id> <key>`` line with
``{"value": ..., "loads": <times its loader ran for that entry>}``. Its
values are ``<company>/<key>/load-<n>``, so the test can tell a value this
process loaded before (served from its L1) from a fresh load.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter

from falachefe_runtime.cache import Cache, CacheKind, Scope
from falachefe_runtime.config import CacheSettings, RedisSettings


async def serve(redis_url: str) -> None:
    # A long L1 TTL: only an invalidation can make this process drop an entry
    # within a test's lifetime.
    cache = Cache(RedisSettings(url=redis_url), CacheSettings(l1_ttl_s=600))
    await cache.start()
    loads: Counter[tuple[str, str]] = Counter()
    print(json.dumps({"listening": cache.listening}), flush=True)
    loop = asyncio.get_running_loop()
    try:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            command, company, key = line.split()
            if command != "get":
                raise SystemExit(f"unknown command {command!r}")

            async def load(company: str = company, key: str = key) -> str:
                loads[company, key] += 1
                return f"{company}/{key}/load-{loads[company, key]}"

            value = await cache.get_or_load(CacheKind.COMPANY_CONFIG, key, load, scope=Scope(company_id=company))
            print(json.dumps({"value": value, "loads": loads[company, key]}), flush=True)
    finally:
        await cache.close()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))
