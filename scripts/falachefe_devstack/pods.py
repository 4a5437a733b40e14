"""Playing the kubelet's part on a control plane without nodes: pods become Running and Ready.

With no kubelet, the ReplicaSet controller's pods stay Pending forever; a
test or benchmark that needs Ready pods (the operator's Ready condition,
its CPU reading, which counts only ready pods) patches their status as a
kubelet would. Raw JSON in and out: a benchmark marks thousands of pods,
and the client's model classes would cost more CPU than the operator.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from kubernetes import client as k8s


def list_pods(api: k8s.ApiClient, namespace: str, selector: dict[str, str]) -> list[dict[str, Any]]:
    """The pods of ``selector`` (equality terms), as the API server sends them."""
    selected = ",".join(f"{key}={value}" for key, value in sorted(selector.items()))
    response = k8s.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selected, _preload_content=False)
    return list(json.loads(response.data)["items"])


def mark_ready(api: k8s.ApiClient, pods: Iterable[dict[str, Any]]) -> int:
    """Every pending pod of ``pods`` becomes Running and Ready; how many were marked."""
    core = k8s.CoreV1Api(api)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    status = {
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
            ],
        }
    }
    marked = 0
    for pod in pods:
        metadata = pod["metadata"]
        if metadata.get("deletionTimestamp") or (pod.get("status") or {}).get("phase") == "Running":
            continue
        core.patch_namespaced_pod_status(metadata["name"], metadata["namespace"], status, _preload_content=False)
        marked += 1
    return marked


def mark_pods_ready(api: k8s.ApiClient, namespace: str, selector: dict[str, str]) -> int:
    """Every pending pod of ``selector`` becomes Running and Ready; how many were marked."""
    return mark_ready(api, list_pods(api, namespace, selector))
