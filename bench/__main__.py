"""``make bench``: every benchmark, one after the other, each in its own process.

Each prints its own table and ratios against a baseline measured in the
same run (see bench/README.md). ``python -m bench NAME ...`` runs only the
named ones; options after the names (``python -m bench operator_scale
--resources 1000``) go to them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

BENCHMARKS = (
    "autoscale_sim",
    "worker_throughput",
    "handoff_batching",
    "redis_wire",
    "queue_reads",
    "lookup_coalescing",
    "crew_overhead",
    "crew_phases",
    "db_pool",
    "cache_layers",
    "operator_reconcile",
    "operator_scale",
)


#: The harness (falachefe_devstack) is not installed: on the path as ``make bench`` puts it.
SCRIPTS = str(Path(__file__).resolve().parents[1] / "scripts")


def main(argv: list[str]) -> int:
    first_option = next((i for i, arg in enumerate(argv) if arg.startswith("-")), len(argv))
    names, options = argv[:first_option], argv[first_option:]
    chosen = names or list(BENCHMARKS)
    unknown = [name for name in chosen if name not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}", file=sys.stderr)
        return 2
    path = os.environ.get("PYTHONPATH", "")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (SCRIPTS, path)))}
    failed = []
    for position, name in enumerate(chosen, 1):
        print(f"\n=== [{position}/{len(chosen)}] bench.{name}", flush=True)
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", f"bench.{name}", *options], check=False, env=env)
        print(f"=== bench.{name}: exit {result.returncode} after {time.monotonic() - started:.0f}s", flush=True)
        if result.returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
