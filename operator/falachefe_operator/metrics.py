"""The operator's own Prometheus series (the autoscaler's live in ``scaling.metrics``).

Served on ``--metrics-port`` at ``/metrics`` from the default registry, next
to the autoscaler's per-pool series.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from falachefe_runtime.observability.build import build_info

BUILD_INFO = Gauge(
    "falachefe_operator_build_info",
    "Always 1; the labels say which version, source revision and Python the operator runs.",
    ("version", "revision", "python"),
)
BUILD_INFO.labels(**build_info()).set(1)
RECONCILES = Counter(
    "falachefe_operator_reconciles_total",
    "Passes that applied a resource's objects, by outcome (ok, problem, error).",
    ("outcome",),
)
RECONCILE_SECONDS = Histogram(
    "falachefe_operator_reconcile_duration_seconds",
    "Time to check secrets, apply every owned object and prune removed pools.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
DRIFT_CORRECTIONS = Counter(
    "falachefe_operator_drift_corrections_total",
    "Re-applies caused by someone else changing or deleting an owned object.",
    ("kind",),
)
STATUS_WRITES = Counter("falachefe_operator_status_writes_total", "Status subresource writes (only on change).")
RESOURCES = Gauge("falachefe_operator_resources", "Falachefe resources this operator serves.")
API_REQUESTS = Counter(
    "falachefe_operator_api_requests_total",
    "Kubernetes API requests made by the operator (its watches, reconcilers, autoscaler and leader election),"
    " by verb, group, resource and subresource as the API server counts them, and HTTP status"
    " (``error`` when no answer came).",
    ("verb", "group", "resource", "subresource", "code"),
)
API_SECONDS = Histogram(
    "falachefe_operator_api_request_duration_seconds",
    "Time from sending a Kubernetes API request to its response's headers (for a watch: until the stream opened).",
    ("verb", "group", "resource"),
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
RELIST_DELETIONS = Counter(
    "falachefe_operator_relist_deletions_total",
    "Objects found deleted after a watch was relisted (their DELETED event was never delivered), by kind.",
    ("resource",),
)
LEADER = Gauge("falachefe_operator_leader", "1 while this replica holds the leader Lease (or runs standalone).")
