"""A static security policy over rendered manifests: what trivy's or kube-score's config scan would flag.

No such scanner installs from PyPI and runs offline here, so the rules a
platform team's admission policy (Pod Security "restricted", the usual
RBAC audits) enforces are written down as code. Each check returns
violations as "Kind/name: what is wrong" lines; an empty list passes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from helmchart import Manifest, pod_spec, workloads

#: Verbs that hand out more than the role holds.
ESCALATING_VERBS = {"escalate", "bind", "impersonate"}
#: Resources that are shells or keys to the cluster.
DANGEROUS_RESOURCES = {"pods/exec", "pods/attach", "pods/portforward", "nodes/proxy", "serviceaccounts/token"}
READ_ALL_SECRETS = {"list", "watch"}


def workload_violations(manifests: Sequence[Manifest]) -> list[str]:
    found: list[str] = []
    for workload in workloads(manifests):
        name = f"{workload['kind']}/{workload['metadata']['name']}"
        spec = pod_spec(workload)
        pod_context = spec.get("securityContext") or {}
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(flag):
                found.append(f"{name}: {flag} is set")
        for volume in spec.get("volumes") or []:
            if "hostPath" in volume:
                found.append(f"{name}: volume {volume['name']} is a hostPath")
        for container in [*(spec.get("initContainers") or []), *spec["containers"]]:
            found += [f"{name}/{container['name']}: {v}" for v in _container_violations(container, pod_context)]
    return found


def _container_violations(container: dict[str, Any], pod_context: dict[str, Any]) -> Iterable[str]:
    context = container.get("securityContext") or {}

    def effective(key: str) -> Any:
        return context.get(key, pod_context.get(key))

    if effective("runAsNonRoot") is not True:
        yield "runAsNonRoot is not true"
    if effective("runAsUser") == 0:
        yield "runs as UID 0"
    if context.get("privileged"):
        yield "privileged"
    if context.get("allowPrivilegeEscalation") is not False:
        yield "allowPrivilegeEscalation is not false"
    if context.get("readOnlyRootFilesystem") is not True:
        yield "root filesystem is writable"
    capabilities = context.get("capabilities") or {}
    if "ALL" not in (capabilities.get("drop") or []):
        yield "capabilities are not all dropped"
    if capabilities.get("add"):
        yield f"adds capabilities {capabilities['add']}"
    seccomp = (effective("seccompProfile") or {}).get("type")
    if seccomp not in ("RuntimeDefault", "Localhost"):
        yield f"seccompProfile is {seccomp!r}, not RuntimeDefault"
    resources = container.get("resources") or {}
    for section, key in (("requests", "cpu"), ("requests", "memory"), ("limits", "cpu"), ("limits", "memory")):
        if key not in (resources.get(section) or {}):
            yield f"resources.{section}.{key} is not set"
    for port in container.get("ports") or []:
        if port.get("hostPort"):
            yield f"port {port.get('name')} uses hostPort {port['hostPort']}"
    image = str(container.get("image", ""))
    if "@sha256:" not in image and (":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")):
        yield f"image {image!r} has neither a version tag nor a digest"


def rbac_violations(manifests: Sequence[Manifest]) -> list[str]:
    """Wildcards, escalation, shells, RBAC writes, and reading every Secret in the cluster."""
    found: list[str] = []
    cluster_bound = {
        m["roleRef"]["name"]
        for m in manifests
        if m["kind"] == "ClusterRoleBinding" and m["roleRef"]["kind"] == "ClusterRole"
    }
    for role in manifests:
        if role["kind"] not in ("ClusterRole", "Role"):
            continue
        name = f"{role['kind']}/{role['metadata']['name']}"
        cluster_wide = role["kind"] == "ClusterRole" and role["metadata"]["name"] in cluster_bound
        for rule in role.get("rules") or []:
            groups, resources, verbs = (set(rule.get(k) or []) for k in ("apiGroups", "resources", "verbs"))
            for field, values in (("apiGroups", groups), ("resources", resources), ("verbs", verbs)):
                if "*" in values:
                    found.append(f"{name}: wildcard in {field}")
            if verbs & ESCALATING_VERBS:
                found.append(f"{name}: escalating verbs {sorted(verbs & ESCALATING_VERBS)}")
            if resources & DANGEROUS_RESOURCES:
                found.append(f"{name}: grants {sorted(resources & DANGEROUS_RESOURCES)}")
            if "rbac.authorization.k8s.io" in groups and verbs - {"get", "list", "watch"}:
                found.append(f"{name}: may change RBAC")
            if rule.get("nonResourceURLs"):
                found.append(f"{name}: grants non-resource URLs {rule['nonResourceURLs']}")
            if cluster_wide and "" in groups and "secrets" in resources and verbs & READ_ALL_SECRETS:
                found.append(f"{name}: may {sorted(verbs & READ_ALL_SECRETS)} every Secret in the cluster")
    return found


def service_account_violations(manifests: Sequence[Manifest]) -> list[str]:
    """A ServiceAccount's token is mounted only where a pod asks for it."""
    return [
        f"ServiceAccount/{m['metadata']['name']}: automountServiceAccountToken is not false"
        for m in manifests
        if m["kind"] == "ServiceAccount" and m.get("automountServiceAccountToken") is not False
    ]


def violations(manifests: Sequence[Manifest]) -> list[str]:
    return [*workload_violations(manifests), *rbac_violations(manifests), *service_account_violations(manifests)]
