"""`helm lint` and `helm template` for the default and non-default values; the schema refuses bad values."""

from __future__ import annotations

import json
import re
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from helmchart import CHART, NON_DEFAULT_VALUES, REPO, Helm, HelmError, Manifest, objects_of, one

from falachefe_devstack.operator_identity import operator_rules

VALUE_SETS: dict[str, dict[str, Any]] = {"default": {}, **NON_DEFAULT_VALUES}
STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
)


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_lint_passes(helm: Helm, value_set: str) -> None:
    out = helm.lint(VALUE_SETS[value_set])
    assert "1 chart(s) linted, 0 chart(s) failed" in out


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_every_object_carries_the_standard_labels(helm: Helm, value_set: str) -> None:
    manifests = helm.template(VALUE_SETS[value_set])
    for manifest in manifests:
        labels = manifest["metadata"]["labels"]
        missing = [label for label in STANDARD_LABELS if label not in labels]
        assert not missing, f"{manifest['kind']}/{manifest['metadata']['name']} lacks {missing}"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/part-of"] == "falachefe"
    pod_labels = one(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert all(label in pod_labels for label in STANDARD_LABELS)


def test_default_render(helm: Helm) -> None:
    manifests = helm.template(release="rel", namespace="ops")
    kinds = sorted(m["kind"] for m in manifests)
    assert kinds == sorted(
        ["CustomResourceDefinition", "ServiceAccount", "Deployment", "Service"]
        + ["ClusterRole"] * 3  # the operator's cluster-scoped one (reading CRDs) and the view/edit aggregates
        + ["ClusterRoleBinding"]
        + ["Role", "RoleBinding"] * 2  # the operator's rules in the release namespace, and leader election
    )
    deployment = one(manifests, "Deployment")
    assert deployment["metadata"]["namespace"] == "ops"
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == one(manifests, "ServiceAccount")["metadata"]["name"] == "rel-falachefe-operator"
    (container,) = pod["containers"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert container["image"] == f"falachefe:{chart['appVersion']}"
    assert container["command"] == ["falachefe-operator"]
    assert container["args"] == [
        "--namespace=ops",
        "--liveness-port=8080",
        "--metrics-port=9090",
        "--leader-election-id=rel-falachefe-operator",
    ]
    assert {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}} in container["env"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]
    assert pod["securityContext"]["runAsUser"] == container["securityContext"]["runAsUser"] == 10001

    service = one(manifests, "Service")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}]
    assert objects_of(manifests, "PodDisruptionBudget") == []
    assert objects_of(manifests, "ServiceMonitor") == []


def _granted_rules(manifests: list[Manifest], service_account: str) -> dict[str, list[dict[str, Any]]]:
    """Where each rule bound to the ServiceAccount applies: "cluster" or a namespace."""
    roles = {(m["kind"], m["metadata"].get("namespace"), m["metadata"]["name"]): m for m in manifests}
    granted: dict[str, list[dict[str, Any]]] = {}
    for binding in manifests:
        if binding["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        if not any(s["kind"] == "ServiceAccount" and s["name"] == service_account for s in binding["subjects"]):
            continue
        ref = binding["roleRef"]
        namespace = binding["metadata"].get("namespace")
        role = roles[(ref["kind"], None if ref["kind"] == "ClusterRole" else namespace, ref["name"])]
        scope = "cluster" if binding["kind"] == "ClusterRoleBinding" else namespace
        granted.setdefault(scope, []).extend(role["rules"])
    return granted


def _canonical(rules: list[dict[str, Any]]) -> list[str]:
    return sorted(json.dumps(rule, sort_keys=True) for rule in rules)


def _rule_sets() -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """The rules file split as the chart splits it: cluster-scoped, leader election, the rest."""
    rules = operator_rules()
    cluster_scoped = [r for r in rules if {"customresourcedefinitions", "namespaces"} & set(r["resources"])]
    election = [r for r in rules if "coordination.k8s.io" in r["apiGroups"]]
    namespaced = [r for r in rules if r not in cluster_scoped and r not in election]
    return cluster_scoped, election, namespaced


def test_default_mode_grants_the_rules_in_the_release_namespace_only(helm: Helm) -> None:
    """The default serves the release namespace: no namespaced object (no Secret) anywhere else."""
    manifests = helm.template(release="rel", namespace="ops")
    granted = _granted_rules(manifests, "rel-falachefe-operator")
    assert set(granted) == {"cluster", "ops"}
    cluster_scoped, election, namespaced = _rule_sets()
    assert _canonical(granted["cluster"]) == _canonical(cluster_scoped)
    assert _canonical(granted["ops"]) == _canonical(namespaced + election)
    assert not [r for r in granted["cluster"] if "secrets" in r["resources"]]
    args = one(manifests, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [arg for arg in args if arg.startswith("--namespace") or arg == "--all-namespaces"] == ["--namespace=ops"]


def test_cluster_wide_mode_grants_exactly_the_rules_file(helm: Helm) -> None:
    manifests = helm.template(NON_DEFAULT_VALUES["cluster-wide"], release="rel", namespace="ops")
    granted = _granted_rules(manifests, "rel-falachefe-operator")
    assert set(granted) <= {"cluster", "ops"}
    assert _canonical(granted["cluster"] + granted.get("ops", [])) == _canonical(operator_rules())
    # The Lease is the one thing granted only in the release namespace.
    assert {g for rule in granted.get("ops", []) for g in rule["apiGroups"]} == {"coordination.k8s.io"}


def test_namespaced_mode_grants_the_rules_only_in_the_watched_namespaces(helm: Helm) -> None:
    manifests = helm.template(NON_DEFAULT_VALUES["namespaced"], release="rel", namespace="ops")
    granted = _granted_rules(manifests, "rel-falachefe-operator")
    assert set(granted) == {"cluster", "team-a", "team-b", "ops"}
    cluster_scoped, election, namespaced = _rule_sets()
    # Cluster-wide, only what is cluster-scoped (reading CRDs): no namespaced object anywhere.
    assert _canonical(granted["cluster"]) == _canonical(cluster_scoped)
    assert _canonical(granted["team-a"]) == _canonical(granted["team-b"]) == _canonical(namespaced)
    assert _canonical(granted["ops"]) == _canonical(election)
    args = one(manifests, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["--namespace=team-a", "--namespace=team-b"]
    assert "--all-namespaces" not in args


def test_service_monitor_scrapes_the_metrics_service(helm: Helm) -> None:
    manifests = helm.template(NON_DEFAULT_VALUES["monitoring"], namespace="ops")
    monitor = one(manifests, "ServiceMonitor")
    service = one(manifests, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["ops"]}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"


def test_pod_disruption_budget_covers_the_operator_pods(helm: Helm) -> None:
    manifests = helm.template(NON_DEFAULT_VALUES["pdb"])
    budget = one(manifests, "PodDisruptionBudget")
    deployment = one(manifests, "Deployment")
    assert budget["apiVersion"] == "policy/v1"
    assert budget["spec"] == {"maxUnavailable": 1, "selector": deployment["spec"]["selector"]}
    assert deployment["spec"]["replicas"] == 3


def test_single_replica_without_leader_election_runs_standalone(helm: Helm) -> None:
    manifests = helm.template(NON_DEFAULT_VALUES["single-standalone"])
    deployment = one(manifests, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--standalone" in args
    assert not [arg for arg in args if arg.startswith("--leader-election")]
    assert not any(m["metadata"]["name"].endswith("-leader-election") for m in manifests)
    # No Lease: an upgrade stops the old operator before the new one starts, never both acting at once.
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert "strategy" not in one(helm.template(), "Deployment")["spec"]


def test_scheduling_and_extras_reach_the_pod(helm: Helm) -> None:
    values = NON_DEFAULT_VALUES["scheduling"]
    deployment = one(helm.template(values), "Deployment")
    template = deployment["spec"]["template"]
    pod = template["spec"]
    (container,) = pod["containers"]
    assert container["image"] == f"registry.example/falachefe@{values['image']['digest']}"
    assert container["args"][-1] == "--verbose"
    assert {"name": "TZ", "value": "UTC"} in container["env"]
    assert pod["imagePullSecrets"] == [{"name": "registry"}]
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName"):
        assert pod[key] == values[key]
    assert template["metadata"]["annotations"] == values["podAnnotations"]
    assert template["metadata"]["labels"]["example.com/cost-centre"] == "42"
    # Extra pod labels never leak into the selector (it is immutable).
    assert "example.com/cost-centre" not in deployment["spec"]["selector"]["matchLabels"]


INVALID_VALUES = {
    "typo at the top": ({"replicas": 3}, "additional properties 'replicas' not allowed"),
    "typo nested": (
        {"resources": {"requests": {"cpou": "1"}}},
        "at '/resources/requests': additional properties 'cpou'",
    ),
    "bad enum": ({"image": {"pullPolicy": "Sometimes"}}, "at '/image/pullPolicy': value must be one of"),
    "no replicas": ({"replicaCount": 0}, "at '/replicaCount'"),
    "wrong type": ({"leaderElection": {"enabled": "yes"}}, "at '/leaderElection/enabled'"),
    "bad namespace": (
        {"watch": {"allNamespaces": False, "namespaces": ["Team_A"]}},
        "at '/watch/namespaces/0'",
    ),
    "bad digest": ({"image": {"repository": "x", "digest": "latest"}}, "at '/image/digest'"),
    "bad port": ({"ports": {"health": 0, "metrics": 9090}}, "at '/ports/health'"),
    "namespaces while watching all": (
        {"watch": {"allNamespaces": True, "namespaces": ["a"]}},
        "set watch.allNamespaces=false",
    ),
    "replicas without leader election": (
        {"leaderElection": {"enabled": False}},
        "replicaCount > 1 needs leaderElection.enabled=true",
    ),
    "monitor without service": (
        {"serviceMonitor": {"enabled": True}, "metrics": {"service": {"enabled": False}}},
        "serviceMonitor.enabled needs metrics.service.enabled",
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID_VALUES))
def test_invalid_values_are_refused_with_a_clear_message(helm: Helm, case: str) -> None:
    values, message = INVALID_VALUES[case]
    with pytest.raises(HelmError) as refused:
        helm.template(values)
    assert message in str(refused.value)


def test_a_rules_file_mixing_scopes_is_refused(helm: Helm, tmp_path: Path) -> None:
    """The chart splits rules by scope; a rule it cannot place is an error, not a silent grant."""
    chart = tmp_path / "falachefe-operator"
    shutil.copytree(CHART, chart)
    mixed = [{"apiGroups": [""], "resources": ["namespaces", "configmaps"], "verbs": ["list"]}]
    (chart / "files" / "rbac-rules.yaml").write_text(yaml.safe_dump(mixed))
    with pytest.raises(HelmError, match="must not mix cluster-scoped and namespaced resources"):
        helm.template(chart=chart)


def test_versions_agree() -> None:
    """The chart deploys the image of the version the project builds."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    dockerfile_version = re.search(r"^ARG VERSION=(\S+)$", (REPO / "Dockerfile").read_text(), re.M)
    assert dockerfile_version is not None
    assert chart["appVersion"] == project["version"] == dockerfile_version.group(1)
    assert chart["apiVersion"] == "v2"
    assert chart["kubeVersion"] == ">=1.28.0-0"
