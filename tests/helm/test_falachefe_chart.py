"""The falachefe chart: one Falachefe from values, its schema generated from the CRD, idempotent under Helm."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from helmchart import REPO, Helm, HelmError, apply_crd

from falachefe_devstack.kube import ControlPlane, kubectl

WORKLOAD_CHART = REPO / "helm" / "falachefe"


def render(helm: Helm, values: dict[str, Any] | None = None) -> dict[str, Any]:
    (resource,) = helm.template(values, release="shop", namespace="apps", chart=WORKLOAD_CHART)
    return resource


def test_lint_and_render(helm: Helm) -> None:
    assert "0 chart(s) failed" in helm.lint(chart=WORKLOAD_CHART)
    resource = render(helm)
    defaults = yaml.safe_load((WORKLOAD_CHART / "values.yaml").read_text())
    assert resource["apiVersion"] == "falachefe.io/v1alpha1"
    assert resource["kind"] == "Falachefe"
    assert resource["metadata"]["name"] == "shop"
    assert resource["metadata"]["namespace"] == "apps"
    assert resource["spec"] == defaults["spec"]
    named = render(helm, {"name": "checkout", "labels": {"team": "payments"}, "annotations": {"owner": "ana"}})
    assert named["metadata"]["name"] == "checkout"
    assert named["metadata"]["labels"]["team"] == "payments"
    assert named["metadata"]["annotations"] == {"owner": "ana"}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"spec": {"pools": {"auth": {"minReplica": 2}}}}, "at '/spec/pools/auth': additional properties 'minReplica'"),
        ({"spec": {"pools": {"autth": {}}}}, "at '/spec/pools': additional properties 'autth' not allowed"),
        ({"spec": {"pools": {"auth": {"concurrency": -1}}}}, "at '/spec/pools/auth/concurrency': minimum"),
        ({"spec": {"imagePullPolicy": "Sometimes"}}, "at '/spec/imagePullPolicy'"),
        ({"spec": {"databse": {}}}, "additional properties 'databse' not allowed"),
    ],
    ids=["typo in a pool", "unknown pool", "negative concurrency", "bad enum", "typo at the top"],
)
def test_a_typo_in_the_spec_is_refused_before_it_reaches_the_cluster(
    helm: Helm, values: dict[str, Any], message: str
) -> None:
    """The API server would prune an unknown field silently; the chart's schema refuses it instead."""
    with pytest.raises(HelmError) as refused:
        render(helm, values)
    assert message in str(refused.value)


@pytest.fixture
def falachefe_crd(kube: ControlPlane) -> None:
    """The CRD as the operator chart installs it (Helm does not install CRDs of another chart)."""
    apply_crd(kube)


@pytest.fixture
def workload_helm(cluster_helm: Helm, namespace: str) -> Iterator[Helm]:
    yield cluster_helm
    cluster_helm.run("uninstall", "shop", "--namespace", namespace, "--ignore-not-found")


@pytest.mark.slow
@pytest.mark.usefixtures("falachefe_crd")
def test_helm_upgrade_with_the_same_values_changes_nothing(
    workload_helm: Helm, kube: ControlPlane, namespace: str
) -> None:
    workload_helm.install("shop", namespace, chart=WORKLOAD_CHART)

    def current() -> dict[str, Any]:
        out = kubectl(kube.kubeconfig, "get", "falachefe", "shop", "-n", namespace, "-o", "json").stdout
        return dict(json.loads(out)["metadata"])

    before = current()
    workload_helm.upgrade("shop", namespace, chart=WORKLOAD_CHART)
    after = current()
    assert (after["generation"], after["resourceVersion"]) == (before["generation"], before["resourceVersion"])
    # A real change of the spec is a new generation.
    workload_helm.upgrade("shop", namespace, {"spec": {"image": "falachefe:0.1.1"}}, chart=WORKLOAD_CHART)
    assert current()["generation"] == before["generation"] + 1


@pytest.mark.slow
@pytest.mark.usefixtures("falachefe_crd")
def test_what_only_cel_can_say_is_refused_by_the_api_server(workload_helm: Helm, namespace: str) -> None:
    values = {"spec": {"pools": {"auth": {"minReplicas": 5, "maxReplicas": 2}}}}
    with pytest.raises(HelmError) as refused:
        workload_helm.install("shop", namespace, values, chart=WORKLOAD_CHART)
    assert "minReplicas must not exceed maxReplicas" in str(refused.value)
