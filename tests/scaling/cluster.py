"""Worker Deployments, pod readiness and least-privilege identities on the test control plane.

There is no scheduler or kubelet: the Deployment controller creates pods
that never run. A test makes them Ready (or not) by patching their status
subresource, which is what a kubelet would do, and the ReplicaSet
controller then reports them in the Deployment's readyReplicas.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from kubernetes import client as k8s

from falachefe_devstack.kube import ControlPlane
from falachefe_devstack.operator_identity import bind_operator_identity, drop_cluster_grants
from falachefe_devstack.waiting import wait_for
from falachefe_operator.credentials import load_credentials
from falachefe_operator.kubeapi import KubeApi


def pool_labels(pool: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "falachefe-worker", "falachefe.io/pool": pool}


def selector(labels: dict[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in labels.items())


def create_worker_deployment(api: k8s.ApiClient, namespace: str, name: str, pool: str, replicas: int) -> None:
    labels = pool_labels(pool)
    k8s.AppsV1Api(api).create_namespaced_deployment(
        namespace,
        k8s.V1Deployment(
            metadata=k8s.V1ObjectMeta(name=name, labels=labels),
            spec=k8s.V1DeploymentSpec(
                replicas=replicas,
                selector=k8s.V1LabelSelector(match_labels=labels),
                template=k8s.V1PodTemplateSpec(
                    metadata=k8s.V1ObjectMeta(labels=labels),
                    spec=k8s.V1PodSpec(
                        containers=[
                            k8s.V1Container(
                                name="worker",
                                image="falachefe/runtime:test",
                                command=["falachefe-runtime", "worker", "--pool", pool],
                                resources=k8s.V1ResourceRequirements(requests={"cpu": "1", "memory": "128Mi"}),
                            )
                        ]
                    ),
                ),
            ),
        ),
    )


def scale_of(api: k8s.ApiClient, namespace: str, name: str) -> int:
    return int(k8s.AppsV1Api(api).read_namespaced_deployment_scale(name, namespace).spec.replicas or 0)


def pods(api: k8s.ApiClient, namespace: str, pool: str, count: int) -> list[Any]:
    """The pool's pods, once the Deployment controller has created ``count`` of them."""

    def listed() -> list[Any] | None:
        items = k8s.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector(pool_labels(pool))).items
        live = [p for p in items if p.metadata.deletion_timestamp is None]
        return live if len(live) == count else None

    return sorted(wait_for(listed, timeout=60, what=f"{count} pods of {pool}"), key=lambda p: p.metadata.name)


def set_ready(api: k8s.ApiClient, namespace: str, pod: str, ready: bool) -> None:
    """What the kubelet would report: Running, and Ready or not."""
    status = "True" if ready else "False"
    k8s.CoreV1Api(api).patch_namespaced_pod_status(
        pod,
        namespace,
        {
            "status": {
                "phase": "Running",
                "conditions": [
                    {"type": "Ready", "status": status},
                    {"type": "ContainersReady", "status": status},
                ],
            }
        },
    )


@asynccontextmanager
async def operator_identity(
    kube: ControlPlane, admin: k8s.ApiClient, namespace: str, workdir: Path
) -> AsyncIterator[KubeApi]:
    """The operator's API client, as a ServiceAccount granted exactly the chart's rules in ``namespace``."""
    kubeconfig = bind_operator_identity(admin, kube, namespace, workdir)
    api = KubeApi(load_credentials(str(kubeconfig)))
    try:
        yield api
    finally:
        await api.close()
        drop_cluster_grants(admin, namespace)
