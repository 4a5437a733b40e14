"""Running the real Helm and kubectl against the chart and the local control plane."""

from __future__ import annotations

import itertools
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from falachefe_devstack import toolchain
from falachefe_devstack.kube import ControlPlane, kubectl

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "falachefe-operator"
#: `helm template` assumes Kubernetes v1.20 without a cluster; the chart needs >= 1.28.
KUBE_VERSION = toolchain.KUBERNETES_VERSION

Manifest = dict[str, Any]

#: Value sets other than the defaults, each exercising a switch of the chart.
NON_DEFAULT_VALUES: dict[str, dict[str, Any]] = {
    "namespaced": {"watch": {"allNamespaces": False, "namespaces": ["team-a", "team-b"]}},
    "monitoring": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
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


class HelmError(RuntimeError):
    """Helm exited non-zero; the message is its stderr."""


_values_files = itertools.count(1)


@dataclass
class Helm:
    """The helm binary; ``chart`` defaults to the operator chart (the falachefe chart's tests pass theirs)."""

    binary: Path
    workdir: Path
    kubeconfig: Path | None = None

    def run(self, *args: str, timeout: float = 180.0) -> str:
        argv = [str(self.binary), *args]
        if self.kubeconfig is not None:
            argv += ["--kubeconfig", str(self.kubeconfig)]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise HelmError(result.stderr.strip() or result.stdout.strip())
        return result.stdout

    def values_args(self, values: dict[str, Any] | None) -> list[str]:
        """Values go in a file, as a platform team's would: no --set quoting surprises."""
        if not values:
            return []
        path = self.workdir / f"values-{next(_values_files)}.yaml"
        path.write_text(yaml.safe_dump(values))
        return ["--values", str(path)]

    def template(
        self, values: dict[str, Any] | None = None, release: str = "rel", namespace: str = "ops", chart: Path = CHART
    ) -> list[Manifest]:
        out = self.run(
            "template",
            release,
            str(chart),
            "--namespace",
            namespace,
            "--kube-version",
            KUBE_VERSION,
            *self.values_args(values),
        )
        return [doc for doc in yaml.safe_load_all(out) if doc]

    def lint(self, values: dict[str, Any] | None = None, chart: Path = CHART) -> str:
        return self.run("lint", str(chart), "--strict", "--kube-version", KUBE_VERSION, *self.values_args(values))

    def install(self, release: str, namespace: str, values: dict[str, Any] | None = None, chart: Path = CHART) -> str:
        return self.run("install", release, str(chart), "--namespace", namespace, *self.values_args(values))

    def upgrade(self, release: str, namespace: str, values: dict[str, Any] | None = None, chart: Path = CHART) -> str:
        return self.run("upgrade", release, str(chart), "--namespace", namespace, *self.values_args(values))

    def uninstall(self, release: str, namespace: str) -> str:
        return self.run("uninstall", release, "--namespace", namespace, "--wait")

    def manifest(self, release: str, namespace: str) -> list[Manifest]:
        out = self.run("get", "manifest", release, "--namespace", namespace)
        return [doc for doc in yaml.safe_load_all(out) if doc]


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
