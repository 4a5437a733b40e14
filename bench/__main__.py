"""``make bench``: every benchmark, one after the other, each in its own process.

Each prints its own table and ratios against a baseline measured in the
same run (see bench/README.md). ``python -m bench NAME ...`` runs only the
named ones.
"""

from __future__ import annotations

import subprocess
import sys
import time

BENCHMARKS = (
    "autoscale_sim",
    "worker_throughput",
    "handoff_batching",
    "crew_overhead",
    "db_pool",
    "cache_layers",
    "operator_reconcile",
)


def main(argv: list[str]) -> int:
    chosen = argv or list(BENCHMARKS)
    unknown = [name for name in chosen if name not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}", file=sys.stderr)
        return 2
    failed = []
    for position, name in enumerate(chosen, 1):
        print(f"\n=== [{position}/{len(chosen)}] bench.{name}", flush=True)
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", f"bench.{name}"], check=False)
        print(f"=== bench.{name}: exit {result.returncode} after {time.monotonic() - started:.0f}s", flush=True)
        if result.returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
