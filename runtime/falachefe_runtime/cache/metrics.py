"""Prometheus metrics of the two-layer cache."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

HITS = Counter("falachefe_cache_hits_total", "Reads answered by a cache layer (l1, l2).", ["layer", "kind"])
MISSES = Counter("falachefe_cache_misses_total", "Reads a cache layer (l1, l2) could not answer.", ["layer", "kind"])
LOADS = Counter("falachefe_cache_loads_total", "Values computed by the loader (the database), by kind.", ["kind"])
BYPASSED = Counter(
    "falachefe_cache_bypassed_total",
    "Reads sent straight to the loader because Redis was unavailable, by kind.",
    ["kind"],
)
ERRORS = Counter("falachefe_cache_errors_total", "Failed Redis operations, by operation.", ["operation"])
INVALIDATIONS = Counter(
    "falachefe_cache_invalidations_total",
    "Invalidations by scope and origin (sent by this process, or received from another).",
    ["scope", "origin"],
)
L1_RESETS = Counter(
    "falachefe_cache_l1_resets_total",
    "Times the in-process layer was emptied because invalidations may have been missed.",
)
REDIS_UP = Gauge("falachefe_cache_redis_up", "1 while the cache's Redis answers, else 0.")
