"""The operator installed by the chart, run as the chart's identity, behaves under a GitOps pipeline.

Pods cannot run here (no kubelet), so the operator runs as a local process
with exactly the command and arguments of the chart's Deployment, a real
token of the chart's ServiceAccount (TokenRequest) and nothing else: every
request it makes is authorised by the chart's RBAC alone.

A pipeline (Argo CD, Flux, `kubectl apply` in CI) re-applies the same
manifests over and over. Applying them again must change nothing, and
re-applying the Falachefe with a new image must not reset the replicas the
autoscaler chose.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from helmchart import WITHOUT_CRDS, Helm, one, service_account_kubeconfig
from kubernetes import client as k8s

from falachefe_devstack.kube import ControlPlane, kubectl, temporary_namespace
from falachefe_devstack.process import ManagedProcess, free_port, http_ok, program_path
from falachefe_devstack.waiting import wait_for

RELEASE = "fc"
SERVICE_ACCOUNT = "fc-falachefe-operator"
POD_NAME = "fc-falachefe-operator-7d9c5-x2x4q"
OWNED_KINDS = ("deployments", "configmaps", "services", "poddisruptionbudgets")


def sample(namespace: str, image: str = "falachefe:0.1.0", **annotations: str) -> dict[str, Any]:
    return {
        "apiVersion": "falachefe.io/v1alpha1",
        "kind": "Falachefe",
        "metadata": {"name": "shop", "namespace": namespace, "annotations": annotations},
        "spec": {
            "image": image,
            "database": {"secretRef": {"name": "shop-db"}},
            "redis": {"secretRef": {"name": "shop-redis"}},
            "auth": {"otpSecretRef": {"name": "shop-otp"}},
            # Nothing reads queue depth or CPU here: the replicas are whatever
            # the (simulated) autoscaler set, within min..max.
            "pools": {"auth": {"minReplicas": 1, "maxReplicas": 5, "autoscaling": {"enabled": False}}},
            # No kubelet runs a migration Job here (tests/operator/test_migration_jobs.py plays one).
            "migrations": {"enabled": False},
        },
    }


@dataclass
class Pipeline:
    """`kubectl apply` as a CI job would run it, with the admin's credentials."""

    kube: ControlPlane
    workdir: Path

    def apply(self, manifest: dict[str, Any]) -> str:
        path = self.workdir / "falachefe.yaml"
        path.write_text(yaml.safe_dump(manifest))
        return kubectl(self.kube.kubeconfig, "apply", "-f", str(path)).stdout.strip()


def shop_namespace(kube_api: k8s.ApiClient) -> Iterator[str]:
    """A team's namespace with the Secrets its Falachefe names."""
    core = k8s.CoreV1Api(kube_api)
    with temporary_namespace(kube_api, "shop") as name:
        for secret, key, value in (
            ("shop-db", "dsn", "postgresql://shop@db/shop"),
            ("shop-redis", "url", "redis://redis:6379/0"),
            ("shop-otp", "otpSecret", "an HMAC key"),
        ):
            core.create_namespaced_secret(
                name, k8s.V1Secret(metadata=k8s.V1ObjectMeta(name=secret), string_data={key: value})
            )
        yield name


@pytest.fixture
def workloads_namespace(kube_api: k8s.ApiClient) -> Iterator[str]:
    """Where the platform team's Falachefe lives: not the operator's namespace."""
    yield from shop_namespace(kube_api)


@pytest.fixture
def other_workloads_namespace(kube_api: k8s.ApiClient) -> Iterator[str]:
    yield from shop_namespace(kube_api)


@pytest.fixture
def start_operator(
    cluster_helm: Helm, kube: ControlPlane, namespace: str, tmp_path: Path
) -> Iterator[Callable[[dict[str, Any]], ManagedProcess]]:
    """Install the chart, then run its operator container's command locally as the chart's ServiceAccount."""
    started: list[ManagedProcess] = []

    def start(values: dict[str, Any]) -> ManagedProcess:
        health, metrics = free_port(), free_port()
        cluster_helm.install(
            RELEASE, namespace, {**WITHOUT_CRDS, **values, "ports": {"health": health, "metrics": metrics}}
        )
        deployment = one(cluster_helm.manifest(RELEASE, namespace), "Deployment")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        argv = [program_path(container["command"][0]), *container["command"][1:], *container["args"]]
        kubeconfig = service_account_kubeconfig(kube, SERVICE_ACCOUNT, namespace, tmp_path / "sa.kubeconfig")
        env = {"KUBECONFIG": str(kubeconfig)}
        # The downward-API variables of the chart's pod, resolved as the kubelet would.
        fields = {"metadata.name": POD_NAME, "metadata.namespace": namespace}
        for variable in container["env"]:
            env[variable["name"]] = variable.get("value") or fields[variable["valueFrom"]["fieldRef"]["fieldPath"]]
        process = ManagedProcess("falachefe-operator", argv, tmp_path / "operator.log", env=env).start()
        started.append(process)
        process.wait_until(lambda: http_ok(f"http://127.0.0.1:{health}/healthz"), 90, "GET /healthz answers 200")
        return process

    yield start
    for process in started:
        process.stop()
    cluster_helm.run("uninstall", RELEASE, "--namespace", namespace, "--ignore-not-found")


def owned_objects(kube: ControlPlane, namespace: str, owner_uid: str) -> dict[str, dict[str, Any]]:
    listed = json.loads(kubectl(kube.kubeconfig, "get", ",".join(OWNED_KINDS), "-n", namespace, "-o", "json").stdout)
    return {
        f"{o['kind']}/{o['metadata']['name']}": o
        for o in listed["items"]
        if any(ref["uid"] == owner_uid and ref.get("controller") for ref in o["metadata"].get("ownerReferences", []))
    }


def versions(objects: dict[str, dict[str, Any]]) -> dict[str, str]:
    """What changes when someone writes an object: its generation where it has one (controllers
    write the status of Deployments and PDBs, which does not count), else its resourceVersion."""
    return {key: str(o["metadata"].get("generation") or o["metadata"]["resourceVersion"]) for key, o in objects.items()}


def get_falachefe(kube: ControlPlane, namespace: str) -> dict[str, Any]:
    return dict(json.loads(kubectl(kube.kubeconfig, "get", "falachefe", "shop", "-n", namespace, "-o", "json").stdout))


def reconciled(kube: ControlPlane, namespace: str) -> dict[str, Any] | None:
    """The resource once the operator has seen its current generation."""
    resource = get_falachefe(kube, namespace)
    status = resource.get("status") or {}
    return resource if status.get("observedGeneration") == resource["metadata"]["generation"] else None


@pytest.mark.slow
def test_operator_as_the_chart_identity_reconciles_and_never_fights_the_pipeline(
    start_operator: Callable[[dict[str, Any]], ManagedProcess],
    kube: ControlPlane,
    namespace: str,
    workloads_namespace: str,
    tmp_path: Path,
) -> None:
    # Cluster-wide (the opt-in mode), so that the team's namespace is not the operator's.
    operator = start_operator({"replicaCount": 1, "watch": {"allNamespaces": True}})
    pipeline = Pipeline(kube, tmp_path)
    assert pipeline.apply(sample(workloads_namespace)).endswith("created")
    resource = wait_for(lambda: reconciled(kube, workloads_namespace), timeout=90, what="status.observedGeneration")
    uid = resource["metadata"]["uid"]
    expected = {
        "Deployment/shop-auth",
        "ConfigMap/shop-config",
        "Service/shop-metrics",
        "PodDisruptionBudget/shop-auth",
    }
    owned = wait_for(
        lambda: (found := owned_objects(kube, workloads_namespace, uid)) and expected <= set(found) and found,
        timeout=60,
        what="the owned objects",
    )
    assert {c["type"] for c in resource["status"]["conditions"]} >= {"Ready", "Progressing", "Degraded"}

    # The same manifest again: nothing to apply, the generation stays, the operator rewrites nothing.
    assert pipeline.apply(sample(workloads_namespace)).endswith("unchanged")
    # A pipeline's bookkeeping (a tracking annotation) is metadata, not spec: same generation,
    # and the operator's reconcile of it applies the same objects, so they do not change.
    tracked = sample(workloads_namespace, **{"argocd.argoproj.io/tracking-id": "shop:falachefe.io/Falachefe:shop"})
    assert pipeline.apply(tracked).endswith("configured")
    after = get_falachefe(kube, workloads_namespace)
    assert after["metadata"]["generation"] == resource["metadata"]["generation"]

    # The autoscaler scales the pool through the scale subresource...
    kubectl(kube.kubeconfig, "scale", "deployment/shop-auth", "--replicas=3", "-n", workloads_namespace)
    # ...and the pipeline then rolls out a new image with the same manifest otherwise.
    assert pipeline.apply(
        sample(workloads_namespace, image="falachefe:0.1.1", **tracked["metadata"]["annotations"])
    ).endswith("configured")
    wait_for(lambda: reconciled(kube, workloads_namespace), timeout=60, what="the new generation reconciled")

    def rolled_out() -> dict[str, Any] | None:
        deployment = owned_objects(kube, workloads_namespace, uid)["Deployment/shop-auth"]
        image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        return deployment if image == "falachefe:0.1.1" else None

    deployment = wait_for(rolled_out, timeout=60, what="the new image in the Deployment")
    assert deployment["spec"]["replicas"] == 3, "re-applying the Falachefe reset the autoscaler's replicas"

    # Only the Deployment's pod template changed: the ConfigMap, Service and PDB were never rewritten.
    now = versions(owned_objects(kube, workloads_namespace, uid))
    unchanged = {key: version for key, version in versions(owned).items() if key != "Deployment/shop-auth"}
    assert {key: now[key] for key in unchanged} == unchanged

    # Of the Falachefe itself the operator wrote the status and nothing else: every field it
    # manages was written through the status subresource; the spec and metadata are the pipeline's.
    shown = kubectl(
        kube.kubeconfig, "get", "falachefe", "shop", "-n", workloads_namespace, "-o", "json", "--show-managed-fields"
    )
    managed = json.loads(shown.stdout)["metadata"]["managedFields"]
    operator_writes = [entry for entry in managed if entry["manager"] != "kubectl-client-side-apply"]
    assert operator_writes, managed
    assert {entry.get("subresource") for entry in operator_writes} == {"status"}, operator_writes

    # It led through the chart's Lease, in the release namespace...
    lease = json.loads(kubectl(kube.kubeconfig, "get", "lease", SERVICE_ACCOUNT, "-n", namespace, "-o", "json").stdout)
    assert lease["spec"]["holderIdentity"]
    # ...and everything above ran with the chart's RBAC alone: the API server refused the operator nothing.
    assert_never_refused(operator)


def assert_never_refused(operator: ManagedProcess) -> None:
    log = operator.log_path.read_text()
    assert "Forbidden" not in log and " 403" not in log, log[-3000:]


@pytest.mark.slow
def test_namespaced_install_reconciles_its_namespaces_and_ignores_the_rest(
    start_operator: Callable[[dict[str, Any]], ManagedProcess],
    kube: ControlPlane,
    workloads_namespace: str,
    other_workloads_namespace: str,
    tmp_path: Path,
) -> None:
    operator = start_operator(
        {"replicaCount": 1, "watch": {"allNamespaces": False, "namespaces": [workloads_namespace]}}
    )
    pipeline = Pipeline(kube, tmp_path)
    pipeline.apply(sample(other_workloads_namespace))
    pipeline.apply(sample(workloads_namespace))
    resource = wait_for(lambda: reconciled(kube, workloads_namespace), timeout=90, what="status.observedGeneration")
    wait_for(
        lambda: "Deployment/shop-auth" in owned_objects(kube, workloads_namespace, resource["metadata"]["uid"]),
        timeout=60,
        what="the watched namespace's Deployment",
    )
    # The other namespace's resource was never touched: the operator may not even see it.
    ignored = get_falachefe(kube, other_workloads_namespace)
    assert "status" not in ignored
    assert owned_objects(kube, other_workloads_namespace, ignored["metadata"]["uid"]) == {}
    assert_never_refused(operator)


@pytest.mark.slow
def test_default_install_serves_its_namespace_and_receives_only_the_redis_url(
    start_operator: Callable[[dict[str, Any]], ManagedProcess],
    kube: ControlPlane,
    kube_api: k8s.ApiClient,
    namespace: str,
    workloads_namespace: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    """The chart's defaults, as the chart's identity: what the API server sent it is read from its audit log.

    The database, OTP and LLM Secrets are created with ``kubectl apply`` (their
    metadata then holds their values, in kubectl's last-applied annotation):
    the operator must receive none of them, only the Redis URL it scales on.
    """
    operator = start_operator({"replicaCount": 1})
    marker = uuid.uuid4().hex
    dsn, api_key = f"postgresql://shop:dsn-{marker}@db/shop", f"sk-llm-{marker}"
    pipeline = Pipeline(kube, tmp_path)
    otp_key = f"otp-{marker}"
    planted = (("shop-db", "dsn", dsn), ("shop-llm", "apiKey", api_key), ("shop-otp", "otpSecret", otp_key))
    for name, key, value in planted:
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace}}
        pipeline.apply({**secret, "stringData": {key: value}})
    k8s.CoreV1Api(kube_api).create_namespaced_secret(
        namespace, k8s.V1Secret(metadata=k8s.V1ObjectMeta(name="shop-redis"), string_data={"url": redis_url})
    )
    resource = sample(namespace)
    resource["spec"]["llm"] = {"model": "m", "apiKeySecretRef": {"name": "shop-llm"}}
    resource["spec"]["pools"]["auth"]["autoscaling"] = {"targetCPUUtilizationPercentage": 0}
    pipeline.apply(resource)
    pipeline.apply(sample(workloads_namespace))  # outside its scope: never served

    def scaling_active() -> dict[str, Any] | None:
        found = reconciled(kube, namespace)
        conditions = {c["type"]: c for c in ((found or {}).get("status") or {}).get("conditions", [])}
        return found if conditions.get("ScalingActive", {}).get("status") == "True" else None

    # Reconciled, and scaling on the queue depth read with the Redis URL.
    resource = wait_for(scaling_active, timeout=90, what="ScalingActive=True in the release namespace")
    degraded = {c["type"]: c for c in resource["status"]["conditions"]}["Degraded"]
    assert degraded["status"] == "False", degraded  # every Secret found
    assert "status" not in get_falachefe(kube, workloads_namespace)

    user = f"system:serviceaccount:{namespace}:{SERVICE_ACCOUNT}"
    reads = wait_for(lambda: kube.audit_events(user), timeout=10, what="the operator's Secret reads audited")
    by_secret: dict[str, set[str]] = {}
    for event in reads:
        assert event["verb"] == "get", event["requestURI"]  # never a list or a watch
        assert event["objectRef"]["namespace"] == namespace, event["requestURI"]
        kind = (event.get("responseObject") or {}).get("kind", "")
        by_secret.setdefault(event["objectRef"]["name"], set()).add(kind)
    assert by_secret["shop-redis"] == {"Secret"}
    # Of the others, whether they exist: a Table row without the object, never their data or metadata.
    assert by_secret["shop-db"] == by_secret["shop-llm"] == by_secret["shop-otp"] == {"Table"}
    received = json.dumps(reads)
    for value in (dsn, api_key, otp_key):
        for form in (value, base64.b64encode(value.encode()).decode(), marker):
            assert form not in received
    assert_never_refused(operator)
