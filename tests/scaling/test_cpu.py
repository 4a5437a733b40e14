"""CPU utilisation through the real API server: pods from the core API, usage from metrics.k8s.io.

metrics.k8s.io is served by ``falachefe_devstack.metrics_standin.MetricsServerStandIn`` behind a real
APIService, so the reader and the engine go through the aggregation layer
exactly as they would to metrics-server.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from prometheus_client import CollectorRegistry

from falachefe_devstack.kube import ControlPlane
from falachefe_devstack.metrics_standin import MetricsServerStandIn
from falachefe_operator.credentials import load_credentials
from falachefe_operator.kubeapi import KubeApi
from falachefe_operator.podindex import PodIndex
from falachefe_operator.scaling.cpu import CpuReader, PodMetricsCache, utilization
from falachefe_operator.scaling.engine import Autoscaler, PoolTarget
from falachefe_operator.scaling.metrics import ScalingMetrics
from falachefe_operator.scaling.observation import CpuSample, MetricUnavailable
from falachefe_operator.scaling.policy import RuleType, ScalingPolicy, ScalingRule, ScalingRules
from falachefe_operator.scaling.queue import QueueRef

from .cluster import (
    create_worker_deployment,
    operator_identity,
    pods,
    pool_labels,
    scale_of,
    selector,
    set_ready,
)

pytestmark = pytest.mark.slow

#: Scale as fast as the metrics say: the windows and rules are the decision tests' business.
EAGER = ScalingRules(0, (ScalingRule(RuleType.PODS, 100, 1),))


def test_pods_without_a_cpu_request_are_named() -> None:
    pod = {
        "metadata": {"name": "crew-7f9c"},
        "spec": {"containers": [{"name": "worker", "image": "x"}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    result = utilization([pod], [{"metadata": {"name": "crew-7f9c"}, "containers": [{"usage": {"cpu": "10m"}}]}])
    assert isinstance(result, MetricUnavailable)
    assert "pod crew-7f9c container worker has no CPU request" in result.message


def test_a_sample_whose_cpu_does_not_parse_leaves_its_pod_unmeasured() -> None:
    # Not an exception for the whole namespace's reading: the pod is one the HPA would not count either.
    pod = {
        "metadata": {"name": "crew-7f9c"},
        "spec": {"containers": [{"name": "worker", "resources": {"requests": {"cpu": "100m"}}}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    bogus = {"metadata": {"name": "crew-7f9c"}, "containers": [{"usage": {"cpu": "ten"}}]}
    result = utilization([pod], [bogus])
    assert result == CpuSample(utilization=0.0, ready_pods=0, unaccounted_pods=1)


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _ready_pod(name: str, started: datetime, ready_since: datetime) -> dict[str, Any]:
    """A pod as the API returns it."""
    return {
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "worker", "image": "x", "resources": {"requests": {"cpu": "500m"}}}]},
        "status": {
            "phase": "Running",
            "startTime": _rfc3339(started),
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": _rfc3339(ready_since)}],
        },
    }


def test_samples_taken_during_start_up_do_not_count() -> None:
    """A new pod's first sample includes its start-up work: like the HPA, it is not load."""
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    sample_at = now.isoformat().replace("+00:00", "Z")

    def metric(name: str, cpu: str) -> dict[str, Any]:
        return {
            "metadata": {"name": name},
            "timestamp": sample_at,
            "window": "15s",
            "containers": [{"usage": {"cpu": cpu}}],
        }

    settled = _ready_pod("settled", started=now - timedelta(minutes=2), ready_since=now - timedelta(seconds=60))
    fresh = _ready_pod("fresh", started=now - timedelta(seconds=20), ready_since=now - timedelta(seconds=5))
    old = _ready_pod("old", started=now - timedelta(minutes=10), ready_since=now - timedelta(seconds=5))
    result = utilization(
        [settled, fresh, old], [metric("settled", "100m"), metric("fresh", "1500m"), metric("old", "400m")], now
    )
    assert isinstance(result, CpuSample)
    # "fresh" became Ready 5 s ago: its 15 s window began while it was starting.
    # "old" flipped Ready recently too, but is past the 5-minute initialization period.
    assert (result.ready_pods, result.unaccounted_pods) == (2, 1)
    assert result.utilization == pytest.approx((0.1 + 0.4) / (0.5 + 0.5))


async def test_metrics_server_not_served(kube: ControlPlane, namespace: str) -> None:
    """No metrics-server registered (this test runs before the module registers the fake)."""
    api = KubeApi(load_credentials(str(kube.kubeconfig)))
    try:
        result = await CpuReader(api).read(namespace, "app=none")
    finally:
        await api.close()
    assert isinstance(result, MetricUnavailable)
    assert "metrics.k8s.io/v1beta1 is not served: is metrics-server installed?" in result.message


async def test_pool_scales_on_cpu_and_ignores_starting_pods(
    kube: ControlPlane,
    kube_api: k8s.ApiClient,
    namespace: str,
    redis_url: str,
    metrics_server: MetricsServerStandIn,
    tmp_path: Path,
) -> None:
    create_worker_deployment(kube_api, namespace, "demo-crew", "crew", replicas=2)
    labels = pool_labels("crew")
    first = pods(kube_api, namespace, "crew", 2)
    for pod in first:
        set_ready(kube_api, namespace, pod.metadata.name, True)
        metrics_server.set_usage(namespace, pod.metadata.name, labels, "900m")  # 90% of a 1-CPU request

    registry = CollectorRegistry()
    target = PoolTarget(
        namespace=namespace,
        falachefe="demo",
        pool="crew",
        deployment="demo-crew",
        policy=ScalingPolicy(
            min_replicas=1,
            max_replicas=10,
            target_cpu_utilization_percentage=50,
            scale_up=EAGER,
            scale_down=EAGER,
        ),
        queue=QueueRef("crewai-processing", redis_url),
        selector=selector(labels),
        concurrency=3,
    )
    async with operator_identity(kube, kube_api, namespace, tmp_path) as api:
        engine = Autoscaler(api, metrics=ScalingMetrics(registry))
        try:
            # 2 ready pods at 90% of their request, target 50%: ceil(2 * 90 / 50) = 4.
            outcome = await engine.step(target)
            assert outcome.metrics_available, outcome.message
            assert outcome.cpu_utilization == pytest.approx(0.9)
            assert (outcome.current, outcome.desired, outcome.scaled, outcome.direction) == (2, 4, True, "up")
            assert "cpu 90% of requests vs target 50% on 2 ready pod(s) -> 4" in outcome.reason
            assert scale_of(kube_api, namespace, "demo-crew") == 4

            # The two new pods are starting (not Ready) and burn CPU while they
            # do. Counted, they would ask for ceil(4 * 240% / 50%) = 20; they are
            # not counted, and the ready pods still want 4: no change.
            starting = [p for p in pods(kube_api, namespace, "crew", 4) if p.metadata.name not in _names(first)]
            for pod in starting:
                set_ready(kube_api, namespace, pod.metadata.name, False)
                metrics_server.set_usage(namespace, pod.metadata.name, labels, "3")
            outcome = await engine.step(target)
            assert outcome.cpu == CpuSample(utilization=pytest.approx(0.9), ready_pods=2, unaccounted_pods=2)
            assert (outcome.desired, outcome.scaled) == (4, False), outcome.reason
            assert scale_of(kube_api, namespace, "demo-crew") == 4

            # All four ready and nearly idle: ceil(4 * 10 / 50) = 1.
            for pod in starting:
                set_ready(kube_api, namespace, pod.metadata.name, True)
            for pod in [*first, *starting]:
                metrics_server.set_usage(namespace, pod.metadata.name, labels, "100m")
            outcome = await engine.step(target)
            assert outcome.cpu == CpuSample(utilization=pytest.approx(0.1), ready_pods=4, unaccounted_pods=0)
            assert (outcome.desired, outcome.scaled, outcome.direction) == (1, True, "down"), outcome.reason
            assert scale_of(kube_api, namespace, "demo-crew") == 1
        finally:
            await engine.aclose()

    sample = {"namespace": namespace, "falachefe": "demo", "pool": "crew"}
    assert registry.get_sample_value("falachefe_operator_pool_cpu_utilization_ratio", sample) == pytest.approx(0.1)
    assert registry.get_sample_value("falachefe_operator_pool_desired_replicas", sample) == 1
    assert registry.get_sample_value("falachefe_operator_pool_scale_actions_total", {**sample, "direction": "up"}) == 1
    assert (
        registry.get_sample_value("falachefe_operator_pool_scale_actions_total", {**sample, "direction": "down"}) == 1
    )
    # The engine asked the aggregated API for this pool's pods only.
    assert any(namespace in seen and "crew" in seen for seen in metrics_server.requests)


def _names(items: list[k8s.V1Pod]) -> set[str]:
    return {p.metadata.name for p in items}


class _Clock:
    """The cache's clock, moved by the test (wall time still passes as it does)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("sample_age", "fresh_for"),
    [
        (0.0, 15.0),  # sampled just now: the next sample lands a window (15 s) and a second later
        (10.0, 5.0),  # sampled 10 s ago: 6 s more, never under the 5 s floor
        (60.0, 5.0),  # a server whose samples are late: asked every 5 s, as every poll would
        (-120.0, 15.0),  # its clock two minutes ahead of ours: never longer than a window
    ],
)
async def test_a_metrics_reading_is_served_until_a_newer_sample_can_exist(
    kube: ControlPlane,
    kube_api: k8s.ApiClient,
    namespace: str,
    metrics_server: MetricsServerStandIn,
    tmp_path: Path,
    sample_age: float,
    fresh_for: float,
) -> None:
    labels = pool_labels("auth")
    metrics_server.set_usage(namespace, "auth-1", labels, "250m")
    metrics_server.sample_age = sample_age
    clock = _Clock()
    asked = len(metrics_server.requests)
    try:
        async with operator_identity(kube, kube_api, namespace, tmp_path) as api:
            cache = PodMetricsCache(api, all_namespaces=False, clock=clock)
            first = await cache.read(namespace)
            assert first["auth-1"].cpu == Decimal("0.25")
            # Timestamps are whole seconds, so the reading's life is within a second below this.
            clock.now = fresh_for - 1.05
            assert cache.fresh(namespace) is first
            assert await cache.read(namespace) is first
            assert len(metrics_server.requests) == asked + 1
            clock.now = fresh_for + 1.05
            assert cache.fresh(namespace) is None
            again = await cache.read(namespace)
            assert again is not first and again["auth-1"].cpu == Decimal("0.25")
            assert len(metrics_server.requests) == asked + 2
    finally:
        metrics_server.sample_age = 0.0
        metrics_server.forget(namespace, "auth-1")


async def test_a_pools_answer_is_worked_out_again_only_when_its_inputs_change(
    kube: ControlPlane,
    kube_api: k8s.ApiClient,
    namespace: str,
    metrics_server: MetricsServerStandIn,
    tmp_path: Path,
) -> None:
    """Kept while the pod index and the metrics reading stay; anew when either changes or a start-up ends."""
    labels = pool_labels("crew")
    pool = selector(labels)
    now = datetime.now(UTC)
    index = PodIndex()

    def seen(name: str, started: datetime, ready_since: datetime) -> None:
        pod = _ready_pod(name, started, ready_since)
        pod["metadata"].update(namespace=namespace, labels=labels)
        index.observe("MODIFIED", pod)

    settled = now - timedelta(minutes=30)
    seen("crew-1", settled, settled)
    # Became Ready 2 s ago, started 4 min 58 s ago: its sample (15 s window) is from its start-up
    # for 2 s more, then it counts.
    seen("crew-2", now - timedelta(minutes=5) + timedelta(seconds=2), now - timedelta(seconds=2))
    metrics_server.set_usage(namespace, "crew-1", labels, "100m")
    metrics_server.set_usage(namespace, "crew-2", labels, "300m")
    clock = _Clock()
    try:
        async with operator_identity(kube, kube_api, namespace, tmp_path) as api:
            reader = CpuReader(api, pods=index, metrics=PodMetricsCache(api, all_namespaces=False, clock=clock))
            first = await reader.read(namespace, pool)
            assert first == CpuSample(utilization=pytest.approx(0.2), ready_pods=1, unaccounted_pods=1)
            assert await reader.read(namespace, pool) is first  # nothing changed: the same answer, kept

            await asyncio.sleep(2.5)  # crew-2's initialization period is over: it counts now
            counted = await reader.read(namespace, pool)
            assert counted == CpuSample(utilization=pytest.approx(0.4), ready_pods=2, unaccounted_pods=0)
            assert await reader.read(namespace, pool) is counted

            index.observe("DELETED", {"metadata": {"namespace": namespace, "name": "crew-2"}})
            after_delete = await reader.read(namespace, pool)
            assert after_delete == CpuSample(utilization=pytest.approx(0.2), ready_pods=1, unaccounted_pods=0)

            metrics_server.set_usage(namespace, "crew-1", labels, "400m")
            assert await reader.read(namespace, pool) is after_delete  # the reading is still fresh
            clock.now = 30.0
            assert await reader.read(namespace, pool) == CpuSample(
                utilization=pytest.approx(0.8), ready_pods=1, unaccounted_pods=0
            )
    finally:
        metrics_server.forget(namespace, "crew-1")
        metrics_server.forget(namespace, "crew-2")
