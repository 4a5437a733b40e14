"""Running the real Helm and kubectl against the chart and the local control plane."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from falachefe_devstack.helm import KUBE_VERSION, Helm, HelmError, Manifest
from falachefe_devstack.helm import OPERATOR_CHART as CHART
from falachefe_devstack.kube import ControlPlane, kubectl
from falachefe_operator import crd

REPO = Path(__file__).resolve().parents[2]

__all__ = ["CHART", "KUBE_VERSION", "Helm", "HelmError", "Manifest"]

#: One release per cluster owns the CRD (it is cluster-wide): the tests' releases leave it to ``apply_crd``,
#: but for the one that checks how the chart installs, upgrades and keeps it.
WITHOUT_CRDS: dict[str, Any] = {"crds": {"install": False}}


def apply_crd(kube: ControlPlane) -> None:
    """The repository's CRD, applied as a platform team that installs it outside Helm does."""
    kubectl(kube.kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", str(REPO / crd.CRD_PATH))
    kubectl(kube.kubeconfig, "wait", "--for=condition=Established", f"crd/{crd.CRD_NAME}", "--timeout=60s")


#: Value sets other than the defaults, each exercising a switch of the chart.
NON_DEFAULT_VALUES: dict[str, dict[str, Any]] = {
    "namespaced": {"watch": {"allNamespaces": False, "namespaces": ["team-a", "team-b"]}},
    "cluster-wide": {"watch": {"allNamespaces": True}},
    "monitoring": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "podMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},
        "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "Falachefe"}},
    },
    "pdb": {"podDisruptionBudget": {"enabled": True}, "replicaCount": 3},
    "single-standalone": {"replicaCount": 1, "leaderElection": {"enabled": False}},
    "scheduling": {
        "extraArgs": ["--verbose"],
        "extraEnv": [{"name": "TZ", "value": "UTC"}],
        "image": {"repository": "registry.example/falachefe", "digest": "sha256:" + "ab" * 32},
        "imagePullSecrets": [{"name": "registry"}],
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
        "affinity": {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "falachefe-operator"}},
                        },
                    }
                ]
            }
        },
        "podAnnotations": {"example.com/team": "platform"},
        "podLabels": {"example.com/cost-centre": "42"},
        "priorityClassName": "platform-critical",
    },
}


def objects_of(manifests: Sequence[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def one(manifests: Sequence[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [m for m in objects_of(manifests, kind) if name is None or m["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[m['metadata']['name'] for m in found]}"
    return found[0]


def workloads(manifests: Sequence[Manifest]) -> list[Manifest]:
    kinds = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod", "ReplicaSet"}
    return [m for m in manifests if m["kind"] in kinds]


def pod_spec(workload: Manifest) -> dict[str, Any]:
    if workload["kind"] == "Pod":
        return dict(workload["spec"])
    if workload["kind"] == "CronJob":
        return dict(workload["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    return dict(workload["spec"]["template"]["spec"])


def service_account_kubeconfig(kube: ControlPlane, service_account: str, namespace: str, path: Path) -> Path:
    """A kubeconfig holding a real, short-lived token of the ServiceAccount (TokenRequest)."""
    token = kubectl(
        kube.kubeconfig, "create", "token", service_account, "--namespace", namespace, "--duration", "1h"
    ).stdout.strip()
    assert token.count(".") == 2, "expected a JWT from the TokenRequest API"
    return kube.write_kubeconfig(path, f"system:serviceaccount:{namespace}:{service_account}", token, namespace)
