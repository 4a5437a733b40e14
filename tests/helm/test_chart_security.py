"""The rendered chart passes the security policy for every value set; the policy itself catches what it should."""

from __future__ import annotations

from typing import Any

import pytest
from helmchart import NON_DEFAULT_VALUES, Helm
from policy import rbac_violations, service_account_violations, violations, workload_violations

VALUE_SETS: dict[str, dict[str, Any]] = {"default": {}, **NON_DEFAULT_VALUES}


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_rendered_chart_passes_the_policy(helm: Helm, value_set: str) -> None:
    manifests = helm.template(VALUE_SETS[value_set])
    assert any(m["kind"] == "Deployment" for m in manifests)
    assert violations(manifests) == []


def test_policy_flags_an_insecure_workload() -> None:
    """The policy is not vacuous: a root, privileged, unbounded pod breaks every rule."""
    deployment = {
        "kind": "Deployment",
        "metadata": {"name": "bad"},
        "spec": {
            "template": {
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
                            "ports": [{"name": "http", "containerPort": 80, "hostPort": 80}],
                        }
                    ],
                }
            }
        },
    }
    found = "\n".join(workload_violations([deployment]))
    for expected in (
        "hostNetwork is set",
        "volume root is a hostPath",
        "runAsNonRoot is not true",
        "runs as UID 0",
        "privileged",
        "allowPrivilegeEscalation is not false",
        "root filesystem is writable",
        "capabilities are not all dropped",
        "adds capabilities ['NET_ADMIN']",
        "seccompProfile is None",
        "resources.requests.cpu is not set",
        "resources.limits.memory is not set",
        "uses hostPort 80",
        "image 'busybox:latest' has neither a version tag nor a digest",
    ):
        assert expected in found


def test_policy_flags_broad_rbac() -> None:
    role = {
        "kind": "ClusterRole",
        "metadata": {"name": "too-much"},
        "rules": [
            {"apiGroups": ["*"], "resources": ["deployments"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]},
            {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]},
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "verbs": ["bind", "create"]},
        ],
    }
    binding = {
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "too-much"},
        "roleRef": {"kind": "ClusterRole", "name": "too-much"},
    }
    found = "\n".join(rbac_violations([role, binding]))
    assert "wildcard in apiGroups" in found
    assert "may ['list'] every Secret in the cluster" in found
    assert "grants ['pods/exec']" in found
    assert "escalating verbs ['bind']" in found
    assert "may change RBAC" in found
    # The same Secret rule in a namespaced Role is a different matter.
    namespaced = {**role, "kind": "Role", "rules": role["rules"][1:2]}
    assert rbac_violations([namespaced]) == []


def test_policy_flags_an_automounting_service_account() -> None:
    account = {"kind": "ServiceAccount", "metadata": {"name": "default-ish"}}
    assert service_account_violations([account]) == [
        "ServiceAccount/default-ish: automountServiceAccountToken is not false"
    ]
