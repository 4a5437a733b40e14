"""The real Helm (built by :mod:`.toolchain`) against this repository's charts."""

from __future__ import annotations

import itertools
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import toolchain

REPO = Path(__file__).resolve().parents[2]
OPERATOR_CHART = REPO / "helm" / "falachefe-operator"
#: `helm template` assumes Kubernetes v1.20 without a cluster; the chart needs >= 1.28.
KUBE_VERSION = toolchain.KUBERNETES_VERSION

Manifest = dict[str, Any]


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
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / f"values-{next(_values_files)}.yaml"
        path.write_text(yaml.safe_dump(values))
        return ["--values", str(path)]

    def template(
        self,
        values: dict[str, Any] | None = None,
        release: str = "rel",
        namespace: str = "ops",
        chart: Path = OPERATOR_CHART,
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

    def lint(self, values: dict[str, Any] | None = None, chart: Path = OPERATOR_CHART) -> str:
        return self.run("lint", str(chart), "--strict", "--kube-version", KUBE_VERSION, *self.values_args(values))

    def install(
        self,
        release: str,
        namespace: str,
        values: dict[str, Any] | None = None,
        chart: Path = OPERATOR_CHART,
        flags: Sequence[str] = (),
    ) -> str:
        return self.run("install", release, str(chart), "--namespace", namespace, *self.values_args(values), *flags)

    def upgrade(
        self,
        release: str,
        namespace: str,
        values: dict[str, Any] | None = None,
        chart: Path = OPERATOR_CHART,
        flags: Sequence[str] = (),
    ) -> str:
        return self.run("upgrade", release, str(chart), "--namespace", namespace, *self.values_args(values), *flags)

    def uninstall(self, release: str, namespace: str) -> str:
        return self.run("uninstall", release, "--namespace", namespace, "--wait")

    def manifest(self, release: str, namespace: str) -> list[Manifest]:
        out = self.run("get", "manifest", release, "--namespace", namespace)
        return [doc for doc in yaml.safe_load_all(out) if doc]


def operator_values(image: str, namespaces: list[str], **overrides: Any) -> dict[str, Any]:
    """The operator chart's values for a locally built image (never pulled) watching ``namespaces``."""
    repository, _, tag = image.rpartition(":")
    values: dict[str, Any] = {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "watch": {"allNamespaces": False, "namespaces": namespaces},
        "replicaCount": 1,
        "leaderElection": {"enabled": False},
    }
    values.update(overrides)
    return values
