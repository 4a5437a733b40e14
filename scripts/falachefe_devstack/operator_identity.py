"""The operator's least-privilege identity, as tests and benchmarks run it.

The chart grants the operator the rules in
``helm/falachefe-operator/files/rbac-rules.yaml`` and nothing else; running
the operator (or the autoscaler engine) as a ServiceAccount bound to exactly
those rules is how a test proves the chart's RBAC is enough and no more.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from .kube import ControlPlane

REPO = Path(__file__).resolve().parents[2]
RBAC_RULES_FILE = REPO / "helm" / "falachefe-operator" / "files" / "rbac-rules.yaml"
#: Rules on these go to a ClusterRole; the rest to a Role in the watched namespace.
CLUSTER_SCOPED = {"customresourcedefinitions", "namespaces", "nodes", "clusterroles"}
ACCOUNT = "falachefe-operator"


def operator_rules() -> list[dict[str, Any]]:
    """The operator's PolicyRules, as the chart renders them."""
    rules = yaml.safe_load(RBAC_RULES_FILE.read_text())
    assert isinstance(rules, list), f"{RBAC_RULES_FILE} must be a YAML list of PolicyRules"
    return rules


def bind_operator_identity(api: k8s.ApiClient, kube: ControlPlane, namespace: str, workdir: Path) -> Path:
    """A ServiceAccount granted exactly the chart's rules (namespaced ones in ``namespace``), and its kubeconfig."""
    rbac = k8s.RbacAuthorizationV1Api(api)
    core = k8s.CoreV1Api(api)
    core.create_namespaced_service_account(namespace, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name=ACCOUNT)))
    subject = k8s.RbacV1Subject(kind="ServiceAccount", name=ACCOUNT, namespace=namespace)
    rules = operator_rules()
    cluster_rules = [r for r in rules if set(r["resources"]) & CLUSTER_SCOPED]
    namespaced_rules = [r for r in rules if r not in cluster_rules]
    role = _role_name(namespace)
    rbac.create_namespaced_role(namespace, {"metadata": {"name": role}, "rules": namespaced_rules})
    rbac.create_namespaced_role_binding(
        namespace,
        k8s.V1RoleBinding(
            metadata=k8s.V1ObjectMeta(name=role),
            role_ref=k8s.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name=role),
            subjects=[subject],
        ),
    )
    drop_cluster_grants(api, namespace)
    rbac.create_cluster_role({"metadata": {"name": role}, "rules": cluster_rules})
    rbac.create_cluster_role_binding(
        k8s.V1ClusterRoleBinding(
            metadata=k8s.V1ObjectMeta(name=role),
            role_ref=k8s.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=role),
            subjects=[subject],
        )
    )
    token = core.create_namespaced_service_account_token(
        ACCOUNT, namespace, k8s.AuthenticationV1TokenRequest(spec=k8s.V1TokenRequestSpec(audiences=[]))
    ).status.token
    return kube.write_kubeconfig(workdir / "operator.kubeconfig", f"system:serviceaccount:{namespace}:{ACCOUNT}", token)


def drop_cluster_grants(api: k8s.ApiClient, namespace: str) -> None:
    """Remove the cluster-scoped half of an identity (the namespace's deletion takes the rest)."""
    rbac = k8s.RbacAuthorizationV1Api(api)
    name = _role_name(namespace)
    for delete in (rbac.delete_cluster_role_binding, rbac.delete_cluster_role):
        try:
            delete(name)
        except ApiException as error:
            if error.status != 404:
                raise


def _role_name(namespace: str) -> str:
    return f"falachefe-operator-{namespace}"
