"""The operator's steady state costs the API server next to nothing, counted by the API server itself.

Many resources, autoscaling on (queue and CPU, metrics.k8s.io served by the
stand-in behind a real APIService), pods Ready with CPU samples: once all
are reconciled, one minute of polling every 5 s must stay within the budget
of one request per resource per minute beyond the watches. The count is the
API server's own ``apiserver_request_total`` (no client of ours is trusted
to count itself), over every resource the operator touches; nothing else
writes those here during the minute (no kubelet, and the test sends nothing).
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest
from kubernetes import client as k8s
from opkit import Operator, create_secrets, sample
from prometheus_client.parser import text_string_to_metric_families

from falachefe_devstack.apiserver_metrics import requests_by_resource
from falachefe_devstack.kube import ControlPlane
from falachefe_devstack.metrics_standin import MetricsServerStandIn
from falachefe_devstack.pods import mark_pods_ready
from falachefe_devstack.waiting import wait_for
from falachefe_operator import naming
from falachefe_operator.resource import GROUP, PLURAL, VERSION
from falachefe_operator.status import LIVE_STATUS_SECONDS
from falachefe_runtime.config import WorkerKind

pytestmark = pytest.mark.slow

RESOURCES = 20
POLL_SECONDS = 5
#: What the operator reads or writes (``group/resource``); leases (leader election) are its own budget.
#: (Not services: the API server's own endpoint reconciler reads the ``kubernetes`` Service every few seconds.)
#: metrics.k8s.io reads are counted by the stand-in that serves them: the aggregator does not label them.
OPERATOR_RESOURCES = {
    "/pods",
    "/events",
    "/secrets",
    "/configmaps",
    "apps/deployments",
    "policy/poddisruptionbudgets",
    "batch/jobs",
    "metrics.k8s.io/pods",
    f"{GROUP}/{PLURAL}",
}


def own_counts(operator: Operator) -> tuple[dict[str, float], dict[str, float]]:
    """The operator's own count of its requests (``falachefe_operator_api_requests_total``), non-watch and watch,
    by ``group/resource``."""
    text = _get(f"http://127.0.0.1:{operator.metrics_port}/metrics")
    requests: dict[str, float] = {}
    watches: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "falachefe_operator_api_requests":
            continue
        for point in family.samples:
            if not point.name.endswith("_total"):
                continue
            labels = point.labels
            counts = watches if labels["verb"] == "WATCH" else requests
            key = f"{labels['group']}/{labels['resource']}"
            counts[key] = counts.get(key, 0.0) + point.value
    return requests, watches


def polls(operator: Operator) -> float:
    """Autoscaler polls the operator made (its per-pool poll counters, summed)."""
    text = _get(f"http://127.0.0.1:{operator.metrics_port}/metrics")
    return sum(
        point.value
        for family in text_string_to_metric_families(text)
        if family.name == "falachefe_operator_pool_autoscale_polls"
        for point in family.samples
        if point.name.endswith("_total")
    )


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def test_a_minute_of_polling_many_resources_stays_within_one_request_per_resource(
    operator: Operator,
    kube: ControlPlane,
    kube_api: k8s.ApiClient,
    op_namespace: str,
    redis_url: str,
    metrics_server: MetricsServerStandIn,
    tmp_path: Path,
) -> None:
    custom = k8s.CustomObjectsApi(kube_api)
    for index in range(RESOURCES):
        name = f"fleet-{index}"
        create_secrets(kube_api, op_namespace, name, redis_url)
        body = sample(name, op_namespace)
        # Both pools scale on the queue and CPU (the default 70%), polled every 5 s.
        for pool in body["spec"]["pools"].values():
            pool["minReplicas"] = 1
            pool["autoscaling"] = {"pollingIntervalSeconds": POLL_SECONDS}
        custom.create_namespaced_custom_object(GROUP, VERSION, op_namespace, PLURAL, body)

    # Every pool's pods Ready and sampled (a kubelet's and metrics-server's part).
    core = k8s.CoreV1Api(kube_api)

    def pods_ready() -> bool:
        for index in range(RESOURCES):
            for kind in (WorkerKind.AUTH, WorkerKind.CREW):
                mark_pods_ready(kube_api, op_namespace, naming.pool_selector(f"fleet-{index}", kind))
        pods = core.list_namespaced_pod(op_namespace, label_selector=naming.MANAGED_SELECTOR).items
        return sum(1 for pod in pods if pod.status.phase == "Running") == 2 * RESOURCES

    wait_for(pods_ready, timeout=120, interval=1, what="every pool's pod created and Ready")
    for pod in core.list_namespaced_pod(op_namespace, label_selector=naming.MANAGED_SELECTOR).items:
        metrics_server.set_usage(op_namespace, pod.metadata.name, pod.metadata.labels, "50m")

    def all_scaling() -> bool:
        items = custom.list_namespaced_custom_object(GROUP, VERSION, op_namespace, PLURAL)["items"]
        active = [
            c
            for item in items
            for c in (item.get("status") or {}).get("conditions") or []
            if c["type"] == "ScalingActive" and c["status"] == "True"
        ]
        return len(active) == RESOURCES

    wait_for(all_scaling, timeout=120, interval=1, what="every resource reconciled and autoscaling on metrics")
    # The last Events of the start, and the live figures its statuses held back, are written.
    time.sleep(LIVE_STATUS_SECONDS + 2 * POLL_SECONDS)

    before, polls_before, reads_before = requests_by_resource(kube), polls(operator), len(metrics_server.requests)
    own_before, _ = own_counts(operator)
    started = time.monotonic()
    time.sleep(60)
    after, polls_after, reads_after = requests_by_resource(kube), polls(operator), len(metrics_server.requests)
    own_after, own_watches = own_counts(operator)
    minutes = (time.monotonic() - started) / 60

    spent = {
        key: after.get(key, 0.0) - before.get(key, 0.0)
        for key in OPERATOR_RESOURCES
        if after.get(key, 0.0) > before.get(key, 0.0)
    }
    made = polls_after - polls_before
    if reads_after > reads_before:
        spent["metrics.k8s.io/pods"] = reads_after - reads_before
    per_resource = sum(spent.values()) / RESOURCES / minutes
    print(f"\n{made:.0f} polls in {minutes:.2f} min; API requests: {spent}; {per_resource:.2f} per resource per minute")
    # The pools were polled on time (2 pools x 12 a minute each, with slack for a busy machine)...
    assert made >= 0.75 * RESOURCES * 2 * (60 / POLL_SECONDS) * minutes, made
    # ...metrics were read (the CPU path ran)...
    assert spent.get("metrics.k8s.io/pods", 0) >= 1, spent
    # ...each pool's replicas came from the watch: not one GET of a Deployment...
    assert "apps/deployments" not in spent, spent
    # ...and the whole minute cost at most one request per resource.
    assert per_resource <= 1.0, spent

    # The operator's own request metrics agree with the API server's count (give or take a request finishing
    # between the two scrapes), metrics.k8s.io reads included: nothing it sends goes uncounted...
    own = {key: own_after.get(key, 0.0) - own_before.get(key, 0.0) for key in OPERATOR_RESOURCES}
    for key in OPERATOR_RESOURCES:
        assert abs(own[key] - spent.get(key, 0.0)) <= 2, (key, own, spent)
    # ...and that includes Kopf's watches, which run over the operator's one client.
    for key in (f"{GROUP}/{PLURAL}", "apps/deployments", "/pods"):
        assert own_watches.get(key, 0) >= 1, own_watches
