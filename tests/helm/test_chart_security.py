"""checkov, run offline, on what we ship: the operator chart and the worker Deployments the operator builds.

One scan covers the chart rendered with every value set of the chart tests
and the workers built from the sample and from a spec using every option.
A finding is either fixed or justified in checkov-skips.yaml, and every
justification there must still be needed.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from helmchart import NON_DEFAULT_VALUES, Helm

from falachefe_devstack.process import program_path
from falachefe_operator import builders
from falachefe_operator.spec import FalachefeSpec

HERE = Path(__file__).parent
REPO = HERE.parents[1]
VALUE_SETS: dict[str, dict[str, Any]] = {"default": {}, **NON_DEFAULT_VALUES}
SKIPS: list[dict[str, Any]] = yaml.safe_load((HERE / "checkov-skips.yaml").read_text())

#: A spec with every option a platform team may set on the workers.
FULL_SPEC = {
    "image": "registry.example/falachefe@sha256:" + "ab" * 32,
    "imagePullPolicy": "Always",
    "imagePullSecrets": [{"name": "registry"}],
    "database": {"secretRef": {"name": "db"}, "replicaSecretRef": {"name": "db-ro", "key": "dsn"}},
    "redis": {"secretRef": {"name": "redis"}},
    "llm": {"apiKeySecretRef": {"name": "llm"}},
    "auth": {"otpSecretRef": {"name": "otp"}},
    "pools": {
        "auth": {
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "chat", "effect": "NoSchedule"}],
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "env": [{"name": "TZ", "value": "UTC"}],
        },
        "crew": {"resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "2Gi"}}},
        "admin": {"podAnnotations": {"example.com/team": "platform"}},
    },
}


@dataclass(frozen=True)
class Finding:
    where: str  # "chart" or "workers"
    source: str  # the scanned file: chart-<value set> or workers-<spec>
    check: str
    resource: str
    name: str

    def __str__(self) -> str:
        return f"{self.source}: {self.check} {self.name} ({self.resource})"


def checkov(directory: Path) -> list[dict[str, Any]]:
    """The failed checks of one offline checkov run over ``directory`` (Kubernetes manifests)."""
    done = subprocess.run(
        [
            program_path("checkov"),
            *("--directory", str(directory)),
            *("--framework", "kubernetes"),
            "--skip-download",  # offline: no policies, guides or mappings fetched
            "--quiet",
            *("--output", "json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr  # 1: some check failed
    reports = json.loads(done.stdout)
    failed: list[dict[str, Any]] = []
    for report in reports if isinstance(reports, list) else [reports]:
        failed += report["results"]["failed_checks"]
    return failed


def worker_manifests(spec: dict[str, Any]) -> list[dict[str, Any]]:
    parsed = FalachefeSpec.model_validate(spec)
    resource = builders.Resource("shop", "team-a", "uid", parsed, worker_image=parsed.image)
    return builders.desired_objects(resource)


@pytest.fixture(scope="module")
def findings(helm_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Finding]:
    scanned = tmp_path_factory.mktemp("checkov")
    helm = Helm(helm_binary, tmp_path_factory.mktemp("values"))
    for name, values in VALUE_SETS.items():
        (scanned / f"chart-{name}.yaml").write_text(yaml.safe_dump_all(helm.template(values)))
    sample = yaml.safe_load((REPO / "crds" / "samples" / "falachefe.yaml").read_text())["spec"]
    for name, spec in (("sample", sample), ("full", FULL_SPEC)):
        (scanned / f"workers-{name}.yaml").write_text(yaml.safe_dump_all(worker_manifests(spec)))
    return [
        Finding(
            where=Path(item["file_path"]).stem.split("-", 1)[0],
            source=Path(item["file_path"]).stem,
            check=item["check_id"],
            resource=item["resource"],
            name=item["check_name"],
        )
        for item in checkov(scanned)
    ]


def justified(finding: Finding) -> bool:
    return any(skip["check"] == finding.check and finding.where in skip["where"] for skip in SKIPS)


def test_every_finding_is_fixed_or_justified(findings: list[Finding]) -> None:
    assert {finding.source for finding in findings} >= {"chart-default", "workers-sample"}, "nothing scanned?"
    assert [str(finding) for finding in findings if not justified(finding)] == []


def test_every_justification_is_still_needed(findings: list[Finding]) -> None:
    for skip in SKIPS:
        assert skip["reason"].strip(), skip
        for where in skip["where"]:
            assert any(f.check == skip["check"] and f.where == where for f in findings), (
                f"{skip['check']} no longer fires on the {where}: remove it from checkov-skips.yaml"
            )


def test_checkov_flags_an_insecure_workload_and_broad_rbac(tmp_path: Path) -> None:
    """The scan is not vacuous: a root, privileged, host-networked pod and a wildcard role break its rules."""
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "bad", "namespace": "x"},
        "spec": {
            "selector": {"matchLabels": {"app": "bad"}},
            "template": {
                "metadata": {"labels": {"app": "bad"}},
                "spec": {
                    "hostNetwork": True,
                    "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
                    "containers": [
                        {
                            "name": "app",
                            "image": "busybox:latest",
                            "securityContext": {
                                "runAsUser": 0,
                                "privileged": True,
                                "capabilities": {"add": ["NET_ADMIN"]},
                            },
                            "env": [{"name": "DSN", "valueFrom": {"secretKeyRef": {"name": "db", "key": "dsn"}}}],
                        }
                    ],
                },
            },
        },
    }
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "too-much"},
        "rules": [
            {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "verbs": ["bind", "escalate"]},
        ],
    }
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump_all([deployment, role]))
    flagged = {item["check_id"] for item in checkov(tmp_path)}
    assert {
        "CKV_K8S_16",  # privileged
        "CKV_K8S_19",  # host network
        "CKV_K8S_20",  # allowPrivilegeEscalation
        "CKV_K8S_22",  # read-only root filesystem
        "CKV_K8S_35",  # a secret in an environment variable
        "CKV_K8S_40",  # a low UID
        "CKV_K8S_13",  # no memory limit
        "CKV_K8S_49",  # wildcards in a ClusterRole
    } <= flagged, sorted(flagged)
