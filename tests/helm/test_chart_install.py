"""`helm install`, `upgrade` and `uninstall` against the local control plane, and what the chart's identity may do."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helmchart import WITHOUT_CRDS, Helm, Manifest, service_account_kubeconfig
from kubernetes import client as k8s

from falachefe_devstack.kube import ControlPlane, kubectl, temporary_namespace
from falachefe_devstack.waiting import wait_for
from falachefe_operator import crd

RELEASE = "fc"
SERVICE_ACCOUNT = "fc-falachefe-operator"


def live_objects(kube: ControlPlane, manifests: list[Manifest], path: Path) -> dict[str, dict[str, Any]]:
    """The release's objects as the API server has them, by "Kind/namespace/name"."""
    path.write_text(yaml.safe_dump_all(manifests))
    listed = json.loads(kubectl(kube.kubeconfig, "get", "-f", str(path), "-o", "json").stdout)
    items = listed["items"] if listed.get("kind") == "List" else [listed]
    return {f"{o['kind']}/{o['metadata'].get('namespace', '')}/{o['metadata']['name']}": o for o in items}


def absent(kube: ControlPlane, kind: str, name: str, namespace: str | None = None) -> bool:
    args = ["get", kind, name, "--ignore-not-found", "-o", "name"]
    if namespace:
        args += ["--namespace", namespace]
    return kubectl(kube.kubeconfig, *args).stdout.strip() == ""


def can_i(kubeconfig: Path, verb: str, resource: str, namespace: str | None = None) -> bool:
    """`kubectl auth can-i` as that identity; "deployments.apps/scale" asks about the subresource."""
    resource, _, subresource = resource.partition("/")
    args = ["auth", "can-i", verb, resource]
    args += [f"--subresource={subresource}"] if subresource else []
    args += ["--namespace", namespace] if namespace else ["--all-namespaces"]
    result = kubectl(kubeconfig, *args, check=False)
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), result.stderr
    return answer == "yes"


@pytest.fixture
def release(cluster_helm: Helm, namespace: str) -> Iterator[str]:
    """The release's name; whatever the test leaves installed is uninstalled (ClusterRoles outlive namespaces)."""
    yield RELEASE
    cluster_helm.run("uninstall", RELEASE, "--namespace", namespace, "--ignore-not-found")


@pytest.fixture
def other_namespace(kube_api: k8s.ApiClient) -> Iterator[str]:
    """A second namespace, for what the operator may (or may not) do outside its own."""
    with temporary_namespace(kube_api, "elsewhere") as name:
        yield name


@pytest.mark.slow
def test_install_upgrade_and_uninstall(
    cluster_helm: Helm,
    kube: ControlPlane,
    namespace: str,
    other_namespace: str,
    release: str,
    tmp_path: Path,
) -> None:
    # The default values: this release installs (here: takes over, as from chart 0.1.0) and upgrades the CRD.
    notes = cluster_helm.install(release, namespace, flags=("--take-ownership",))
    assert f"installed as {SERVICE_ACCOUNT} in namespace {namespace}" in notes
    assert f"It watches the namespace {namespace} for Falachefe resources" in notes
    assert f"It may read Secrets by name (never list or watch them) in {namespace} only" in notes
    assert f"http://{SERVICE_ACCOUNT}-metrics.{namespace}.svc:9090/metrics" in notes
    installed = cluster_helm.manifest(release, namespace)
    live = live_objects(kube, installed, tmp_path / "installed.yaml")
    assert set(live) == {f"{m['kind']}/{m['metadata'].get('namespace', '')}/{m['metadata']['name']}" for m in installed}
    owned = live[f"CustomResourceDefinition//{crd.CRD_NAME}"]["metadata"]
    assert owned["annotations"]["meta.helm.sh/release-name"] == release
    assert owned["annotations"]["helm.sh/resource-policy"] == "keep"
    deployment = live[f"Deployment/{namespace}/{SERVICE_ACCOUNT}"]
    assert deployment["spec"]["replicas"] == 2
    # By default the rules live in a Role in the release namespace; cluster-wide, only reading CRDs.
    assert f"Role/{namespace}/{SERVICE_ACCOUNT}" in live
    cluster_role_bindings = [key for key in live if key.startswith("ClusterRoleBinding/")]
    assert len(cluster_role_bindings) == 1 and cluster_role_bindings[0].endswith("-cluster")

    # The same values again: Helm finds nothing to change, so nothing changes.
    cluster_helm.upgrade(release, namespace)
    again = live_objects(kube, installed, tmp_path / "again.yaml")
    assert {k: o["metadata"]["resourceVersion"] for k, o in again.items()} == {
        k: o["metadata"]["resourceVersion"] for k, o in live.items()
    }

    # Changed values: watch two namespaces, three replicas, a PDB, an extra flag.
    changed = {
        "replicaCount": 3,
        "watch": {"allNamespaces": False, "namespaces": [namespace, other_namespace]},
        "podDisruptionBudget": {"enabled": True},
        "extraArgs": ["--verbose"],
        "resources": {"requests": {"cpu": "200m", "memory": "300Mi"}, "limits": {"cpu": "2", "memory": "600Mi"}},
    }
    cluster_helm.upgrade(release, namespace, changed)
    upgraded = live_objects(kube, cluster_helm.manifest(release, namespace), tmp_path / "upgraded.yaml")
    deployment = upgraded[f"Deployment/{namespace}/{SERVICE_ACCOUNT}"]
    assert deployment["spec"]["replicas"] == 3
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"][:2] == [f"--namespace={namespace}", f"--namespace={other_namespace}"]
    assert container["args"][-1] == "--verbose"
    assert container["resources"]["limits"]["memory"] == "600Mi"
    assert f"PodDisruptionBudget/{namespace}/{SERVICE_ACCOUNT}" in upgraded
    assert f"Role/{other_namespace}/{SERVICE_ACCOUNT}" in upgraded
    assert [key for key in upgraded if key.startswith("ClusterRoleBinding/")] == cluster_role_bindings

    # Every namespace: the rules go cluster-wide, the per-namespace Roles go.
    cluster_helm.upgrade(release, namespace, {**changed, "watch": {"allNamespaces": True}})
    everywhere = live_objects(kube, cluster_helm.manifest(release, namespace), tmp_path / "everywhere.yaml")
    (container,) = everywhere[f"Deployment/{namespace}/{SERVICE_ACCOUNT}"]["spec"]["template"]["spec"]["containers"]
    assert container["args"][0] == "--all-namespaces"
    assert len([key for key in everywhere if key.startswith("ClusterRoleBinding/")]) == 2
    for role in (f"{namespace}/{SERVICE_ACCOUNT}", f"{other_namespace}/{SERVICE_ACCOUNT}"):
        assert f"Role/{role}" not in everywhere
        wait_for(lambda role=role: absent(kube, "role", *reversed(role.split("/"))), timeout=30, what=f"Role {role}")
    upgraded = everywhere

    cluster_helm.uninstall(release, namespace)
    # Helm keeps the CRD (helm.sh/resource-policy: keep): deleting it would delete every Falachefe.
    kept = upgraded.pop(f"CustomResourceDefinition//{crd.CRD_NAME}")
    assert kept["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    for key in upgraded:
        kind, object_namespace, name = key.split("/")
        wait_for(
            lambda kind=kind, name=name, ns=object_namespace: absent(kube, kind, name, ns or None),
            timeout=60,
            what=f"{key} deleted",
        )
    assert not absent(kube, "customresourcedefinition", crd.CRD_NAME)


@pytest.mark.slow
def test_the_operator_identity_may_do_its_job_and_nothing_more(
    cluster_helm: Helm,
    kube: ControlPlane,
    kube_api: k8s.ApiClient,
    namespace: str,
    other_namespace: str,
    release: str,
    tmp_path: Path,
) -> None:
    """The default install: the operator's job in the release namespace, nothing outside it."""
    cluster_helm.install(release, namespace, WITHOUT_CRDS)
    operator = service_account_kubeconfig(kube, SERVICE_ACCOUNT, namespace, tmp_path / "operator.kubeconfig")

    # Its job, in the namespace it serves: watch Falachefes, write their status, own worker objects.
    assert can_i(operator, "watch", "falachefes.falachefe.io", namespace)
    assert can_i(operator, "patch", "falachefes.falachefe.io/status", namespace)
    for resource in ("deployments.apps", "configmaps", "services", "poddisruptionbudgets.policy"):
        assert can_i(operator, "create", resource, namespace), resource
        assert can_i(operator, "patch", resource, namespace), resource
    assert can_i(operator, "patch", "deployments.apps/scale", namespace)
    assert can_i(operator, "create", "events", namespace)
    assert can_i(operator, "get", "secrets", namespace)  # the Redis URL of the Falachefes there
    assert can_i(operator, "list", "customresourcedefinitions.apiextensions.k8s.io")
    # The Lease only where it lives.
    assert can_i(operator, "update", "leases.coordination.k8s.io", namespace)
    assert not can_i(operator, "update", "leases.coordination.k8s.io", other_namespace)

    # Nothing outside it: no Secret, no workload, no Falachefe.
    for verb, resource in (
        ("get", "secrets"),
        ("patch", "deployments.apps"),
        ("create", "configmaps"),
        ("watch", "falachefes.falachefe.io"),
        ("patch", "falachefes.falachefe.io/status"),
        ("create", "events"),
    ):
        assert not can_i(operator, verb, resource, other_namespace), (verb, resource)
    assert not can_i(operator, "get", "secrets", "kube-system")
    # And nothing more anywhere.
    assert not can_i(operator, "delete", "falachefes.falachefe.io", namespace)
    assert not can_i(operator, "list", "secrets", namespace)
    assert not can_i(operator, "watch", "secrets", namespace)
    assert not can_i(operator, "list", "secrets")
    assert not can_i(operator, "list", "namespaces")
    assert not can_i(operator, "delete", "namespaces")
    assert not can_i(operator, "create", "pods", namespace)
    assert not can_i(operator, "create", "pods/exec", namespace)
    assert not can_i(operator, "create", "clusterroles.rbac.authorization.k8s.io")
    assert not can_i(operator, "create", "rolebindings.rbac.authorization.k8s.io", namespace)
    assert not can_i(operator, "impersonate", "serviceaccounts", namespace)
    assert not can_i(operator, "get", "nodes")

    # And the API server says so on real calls, with the real token: a Secret outside its scope is refused.
    k8s.CoreV1Api(kube_api).create_namespaced_secret(
        other_namespace, k8s.V1Secret(metadata=k8s.V1ObjectMeta(name="theirs"), string_data={"dsn": "postgres://x"})
    )
    user = f"system:serviceaccount:{namespace}:{SERVICE_ACCOUNT}"
    denied = kubectl(operator, "get", "secret", "theirs", "--namespace", other_namespace, check=False)
    assert denied.returncode != 0
    assert f'User "{user}" cannot get resource "secrets" in API group "" in the namespace "{other_namespace}"' in (
        denied.stderr
    )
    denied = kubectl(operator, "get", "secrets", "--namespace", namespace, check=False)
    assert f'User "{user}" cannot list resource "secrets"' in denied.stderr
    denied = kubectl(operator, "delete", "namespace", other_namespace, check=False)
    assert denied.returncode != 0
    assert 'cannot delete resource "namespaces"' in denied.stderr
    allowed = kubectl(operator, "get", "deployments", "--namespace", namespace, check=False)
    assert allowed.returncode == 0, allowed.stderr
    refused = kubectl(operator, "get", "deployments", "--namespace", other_namespace, check=False)
    assert 'cannot list resource "deployments"' in refused.stderr


@pytest.mark.slow
def test_all_namespaces_mode_may_read_any_secret_by_name_and_list_none(
    cluster_helm: Helm, kube: ControlPlane, namespace: str, other_namespace: str, release: str, tmp_path: Path
) -> None:
    """What the chart's README says of the opt-in cluster-wide mode, checked."""
    notes = cluster_helm.install(release, namespace, {**WITHOUT_CRDS, "watch": {"allNamespaces": True}})
    assert "It watches every namespace" in notes
    assert "It may read any Secret of the cluster by name" in notes
    operator = service_account_kubeconfig(kube, SERVICE_ACCOUNT, namespace, tmp_path / "operator.kubeconfig")
    assert can_i(operator, "patch", "deployments.apps", other_namespace)
    assert can_i(operator, "get", "secrets", other_namespace)
    assert can_i(operator, "get", "secrets", "kube-system")
    assert not can_i(operator, "list", "secrets")
    assert not can_i(operator, "watch", "secrets", other_namespace)
    assert not can_i(operator, "update", "leases.coordination.k8s.io", other_namespace)


@pytest.mark.slow
def test_namespaced_mode_confines_the_operator_to_its_namespaces(
    cluster_helm: Helm,
    kube: ControlPlane,
    namespace: str,
    other_namespace: str,
    release: str,
    tmp_path: Path,
) -> None:
    cluster_helm.install(
        release, namespace, {**WITHOUT_CRDS, "watch": {"allNamespaces": False, "namespaces": [namespace]}}
    )
    operator = service_account_kubeconfig(kube, SERVICE_ACCOUNT, namespace, tmp_path / "operator.kubeconfig")
    assert can_i(operator, "patch", "deployments.apps", namespace)
    assert can_i(operator, "watch", "falachefes.falachefe.io", namespace)
    assert not can_i(operator, "list", "deployments.apps", other_namespace)
    assert not can_i(operator, "watch", "falachefes.falachefe.io", other_namespace)
    assert not can_i(operator, "watch", "falachefes.falachefe.io")
    assert not can_i(operator, "delete", "namespaces")
    denied = kubectl(operator, "get", "configmaps", "--namespace", other_namespace, check=False)
    assert 'cannot list resource "configmaps"' in denied.stderr
