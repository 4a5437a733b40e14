"""Worker Deployments, pod readiness and least-privilege identities on the test control plane.

There is no scheduler or kubelet: the Deployment controller creates pods
that never run. A test makes them Ready (or not) by patching their status
subresource, which is what a kubelet would do, and the ReplicaSet
controller then reports them in the Deployment's readyReplicas.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from falachefe_devstack.kube import ControlPlane
from falachefe_devstack.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
RBAC_RULES = REPO / "helm" / "falachefe-operator" / "files" / "rbac-rules.yaml"


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


@contextmanager
def operator_identity(
    kube: ControlPlane, admin: k8s.ApiClient, namespace: str, workdir: Path
) -> Iterator[k8s.ApiClient]:
    """An API client for a ServiceAccount granted exactly the chart's rules in ``namespace``."""
    rules = yaml.safe_load(RBAC_RULES.read_text())
    rbac = k8s.RbacAuthorizationV1Api(admin)
    core = k8s.CoreV1Api(admin)
    role = f"falachefe-autoscaler-test-{uuid.uuid4().hex[:6]}"
    rbac.create_cluster_role(k8s.V1ClusterRole(metadata=k8s.V1ObjectMeta(name=role), rules=rules))
    try:
        core.create_namespaced_service_account(
            namespace, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name="operator"))
        )
        core.create_namespaced_secret(
            namespace,
            k8s.V1Secret(
                metadata=k8s.V1ObjectMeta(
                    name="operator-token", annotations={"kubernetes.io/service-account.name": "operator"}
                ),
                type="kubernetes.io/service-account-token",
            ),
        )
        rbac.create_namespaced_role_binding(
            namespace,
            k8s.V1RoleBinding(
                metadata=k8s.V1ObjectMeta(name="operator"),
                role_ref=k8s.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=role),
                subjects=[k8s.RbacV1Subject(kind="ServiceAccount", name="operator", namespace=namespace)],
            ),
        )
        token = wait_for(
            lambda: (core.read_namespaced_secret("operator-token", namespace).data or {}).get("token"),
            timeout=30,
            what="the ServiceAccount token",
        )
        kubeconfig = kube.write_kubeconfig(
            workdir / "operator.kubeconfig",
            f"system:serviceaccount:{namespace}:operator",
            base64.b64decode(token).decode(),
        )
        yield k8s_config.new_client_from_config(config_file=str(kubeconfig))
    finally:
        rbac.delete_cluster_role(role)
