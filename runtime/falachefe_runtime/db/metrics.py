"""Prometheus metrics of the database layer.

Pool gauges are read from the live pools at scrape time by a collector, so
they are never stale and cost nothing between scrapes. Pools are summed by
role (``primary``/``replica``): a process normally has one of each. The
label is ``role``, not ``pool``: a worker's scrape is labelled with its
worker pool (auth, crew, admin), as the operator's series are.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

QUERY_DURATION = Histogram(
    "falachefe_db_query_duration_seconds",
    "Time a statement took, from sending it to having its result, by role (primary, replica) and query.",
    ["role", "query"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SLOW_QUERIES = Counter(
    "falachefe_db_slow_queries_total",
    "Statements that took longer than database.slow_query_threshold_s.",
    ["role", "query"],
)
QUERY_ERRORS = Counter(
    "falachefe_db_query_errors_total",
    "Statements that failed, by role, query and error class.",
    ["role", "query", "error"],
)
RETRIES = Counter(
    "falachefe_db_retries_total",
    "Operations repeated after their connection dropped, by role and phase (connect, acquire, begin, query).",
    ["role", "phase"],
)
REPLICA_FALLBACKS = Counter(
    "falachefe_db_replica_fallbacks_total",
    "Reads sent to the primary because the read replica could not be reached.",
)
ACQUIRE_WAIT = Histogram(
    "falachefe_db_pool_acquire_wait_seconds",
    "Time spent waiting for a pooled connection.",
    ["role"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


class PoolCollector(Collector):
    """Size, in-use and idle connections of every open pool, by role."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pools: dict[int, tuple[str, Any]] = {}

    def track(self, role: str, pool: Any) -> None:
        with self._lock:
            self._pools[id(pool)] = (role, pool)

    def forget(self, pool: Any) -> None:
        with self._lock:
            self._pools.pop(id(pool), None)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        with self._lock:
            pools = list(self._pools.values())
        totals: dict[str, dict[str, int]] = {}
        for role, pool in pools:
            size, idle = pool.get_size(), pool.get_idle_size()
            row = totals.setdefault(role, {"size": 0, "in_use": 0, "idle": 0, "max": 0})
            row["size"] += size
            row["idle"] += idle
            row["in_use"] += size - idle
            row["max"] += pool.get_max_size()
        families = {
            "size": GaugeMetricFamily("falachefe_db_pool_size", "Open connections in the pool.", labels=["role"]),
            "in_use": GaugeMetricFamily(
                "falachefe_db_pool_in_use", "Connections lent out of the pool.", labels=["role"]
            ),
            "idle": GaugeMetricFamily(
                "falachefe_db_pool_idle", "Open connections waiting in the pool.", labels=["role"]
            ),
            "max": GaugeMetricFamily(
                "falachefe_db_pool_max_size", "The most connections the pool may open.", labels=["role"]
            ),
        }
        for role, row in sorted(totals.items()):
            for field, family in families.items():
                family.add_metric([role], row[field])
        return list(families.values())


POOLS = PoolCollector()
REGISTRY.register(POOLS)
