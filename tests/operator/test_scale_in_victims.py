"""Scale-in removes idle pods first: the operator marks each pod's deletion cost from the jobs it holds.

The real operator (its chart identity: the RBAC rules file alone) scales a
crew pool of three pods down to one on the real API server; the real
ReplicaSet controller picks the pods to delete. No kubelet runs here, so
which pod holds which job is written into Redis as bullmq keeps it: each
active job's lock holds its worker's token, which names the pod
(``<pod>/<suffix>:<n>``, as the runtime's workers write it), and the test
plays the kubelet's part in making pods Ready.

The busiest pod is made the one the ReplicaSet controller would remove
first on its own: all are Ready, and it has been Ready for the shortest
time (the controller's ranking, after readiness: deletion cost, then time
Ready, then age). A control Deployment with the same readiness and no cost
shows the controller removing that pod; only the cost keeps it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from kubernetes import client as k8s
from opkit import Operator, apply, create_secrets, sample

from falachefe_devstack.kube import ControlPlane
from falachefe_devstack.waiting import wait_for
from falachefe_operator import naming
from falachefe_operator.scaling.deletion_cost import DELETION_COST, cost_changes, jobs_by_pod
from falachefe_runtime.config import WorkerKind

pytestmark = pytest.mark.slow

QUEUE = "crewai-processing"


def crew(min_replicas: int, max_replicas: int) -> dict[str, Any]:
    return {
        "minReplicas": min_replicas,
        "maxReplicas": max_replicas,
        "autoscaling": {
            "pollingIntervalSeconds": 1,
            "targetQueueDepthPerReplica": 3,
            "targetCPUUtilizationPercentage": 0,
            "behavior": {
                "scaleDown": {
                    "stabilizationWindowSeconds": 0,
                    "policies": [{"type": "Percent", "value": 100, "periodSeconds": 1}],
                }
            },
        },
    }


def test_jobs_per_pod_come_from_the_tokens_that_name_a_pod() -> None:
    held = jobs_by_pod(["app-crew-1/ab12:3", "app-crew-1/ab12:4", "app-crew-2/cd34:1", "0f9e8d:2", None])
    assert held == {"app-crew-1": 2, "app-crew-2": 1}
    pods = [
        {"metadata": {"name": "app-crew-1", "annotations": {DELETION_COST: "2"}}},
        {"metadata": {"name": "app-crew-2"}},
        {"metadata": {"name": "app-crew-3", "annotations": {DELETION_COST: "5"}}},
        {"metadata": {"name": "app-crew-4", "deletionTimestamp": "2026-01-01T00:00:00Z"}},
    ]
    assert cost_changes(pods, held) == {"app-crew-2": "1", "app-crew-3": "0"}


def test_scale_in_removes_the_idle_pods_and_keeps_the_busiest(
    operator: Operator, kube: ControlPlane, kube_api: k8s.ApiClient, op_namespace: str, redis_url: str
) -> None:
    create_secrets(kube_api, op_namespace, "victims", redis_url)
    pools = {"auth": {"minReplicas": 1, "maxReplicas": 1, "autoscaling": {"enabled": False}}, "crew": crew(3, 3)}
    apply(kube, sample("victims", op_namespace, pools=pools))
    core = k8s.CoreV1Api(kube_api)
    selector = naming.selector_string(naming.pool_selector("victims", WorkerKind.CREW))

    def pod_names() -> list[str]:
        pods = core.list_namespaced_pod(op_namespace, label_selector=selector).items
        return sorted(p.metadata.name for p in pods if not p.metadata.deletion_timestamp)

    def exactly(count: int) -> list[str] | None:
        names = pod_names()
        return names if len(names) == count else None

    idle, busy, busiest = wait_for(lambda: exactly(3), 60, 0.5, "3 crew pods")
    ready_since(core, op_namespace, {idle: HOUR_AGO, busy: HOUR_AGO, busiest: 0})
    store = redis.Redis.from_url(redis_url, decode_responses=True)
    jobs = {"j1": f"{busiest}/aa11:1", "j2": f"{busiest}/aa11:2", "j3": f"{busy}/bb22:1"}
    try:
        store.rpush(f"bull:{QUEUE}:active", *jobs)
        for job, token in jobs.items():
            store.set(f"bull:{QUEUE}:{job}:lock", token)
        # Three jobs in flight, three per replica: one pod is enough.
        apply(kube, sample("victims", op_namespace, pools={**pools, "crew": crew(1, 3)}))
        survivors = wait_for(lambda: exactly(1), 60, 0.5, "one crew pod")
    finally:
        store.delete(f"bull:{QUEUE}:active", *(f"bull:{QUEUE}:{job}:lock" for job in jobs))
        store.close()
    assert survivors == [busiest], (survivors, {"idle": idle, "busy": busy, "busiest": busiest})
    kept = core.read_namespaced_pod(busiest, op_namespace)
    assert kept.metadata.annotations[DELETION_COST] == "2"


def test_without_deletion_cost_the_replicaset_would_have_removed_the_pod_ready_for_the_shortest_time(
    kube_api: k8s.ApiClient, op_namespace: str
) -> None:
    """The control arm: the same three pods' readiness, no cost, scaled to one by hand."""
    apps = k8s.AppsV1Api(kube_api)
    core = k8s.CoreV1Api(kube_api)
    labels = {"app": "control-victims"}
    apps.create_namespaced_deployment(
        op_namespace,
        {
            "metadata": {"name": "control-victims"},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "worker", "image": "falachefe:1.0"}]},
                },
            },
        },
    )

    def pod_names() -> list[str] | None:
        pods = core.list_namespaced_pod(op_namespace, label_selector="app=control-victims").items
        names = sorted(p.metadata.name for p in pods if not p.metadata.deletion_timestamp)
        return names if len(names) == 3 else None

    first, second, newest_ready = wait_for(pod_names, 60, 0.5, "3 control pods")
    ready_since(core, op_namespace, {first: HOUR_AGO, second: HOUR_AGO, newest_ready: 0})
    wait_for(
        lambda: (apps.read_namespaced_deployment("control-victims", op_namespace).status.ready_replicas or 0) == 3,
        60,
        0.5,
        "the control Deployment's 3 pods Ready",
    )
    # One pod to remove, out of three: the one Ready for the shortest time, not a one-in-three chance.
    apps.patch_namespaced_deployment_scale("control-victims", op_namespace, {"spec": {"replicas": 2}})

    def survivors() -> list[str] | None:
        pods = core.list_namespaced_pod(op_namespace, label_selector="app=control-victims").items
        names = sorted(p.metadata.name for p in pods if not p.metadata.deletion_timestamp)
        return names if len(names) == 2 else None

    assert wait_for(survivors, 60, 0.5, "two control pods") == [first, second], newest_ready


HOUR_AGO = 3600


def ready_since(core: k8s.CoreV1Api, namespace: str, pods: dict[str, int]) -> None:
    """Play the kubelet: each pod Running and Ready, Ready since that many seconds ago."""
    now = datetime.now(UTC)
    for name, seconds in pods.items():
        since = (now - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")
        core.patch_namespaced_pod_status(
            name,
            namespace,
            {
                "status": {
                    "phase": "Running",
                    "conditions": [
                        {"type": "Ready", "status": "True", "lastTransitionTime": since},
                        {"type": "ContainersReady", "status": "True", "lastTransitionTime": since},
                    ],
                }
            },
        )
