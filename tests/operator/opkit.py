"""Helpers for the operator's tests against the real control plane: kubectl, the CRD, identities, pods."""

from __future__ import annotations

import base64
import json
import subprocess
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from falachefe_devstack.kube import ControlPlane, kubectl
from falachefe_devstack.process import ManagedProcess, free_port, program_path
from falachefe_devstack.waiting import wait_for
from falachefe_operator import crd, naming
from falachefe_operator.resource import GROUP, PLURAL, VERSION

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / crd.CRD_PATH
SAMPLE_FILE = REPO / "crds" / "samples" / "falachefe.yaml"


class Clock:
    """A monotonic clock the test moves by setting ``now``."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def install_crd(kube: ControlPlane) -> None:
    """The committed CRD, as a platform team (or the chart) installs it."""
    kubectl(kube.kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))

    def established() -> bool:
        found = kubectl(kube.kubeconfig, "get", f"crd/{crd.CRD_NAME}", "-o", "json", check=False)
        if found.returncode != 0:
            return False
        conditions = (json.loads(found.stdout).get("status") or {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    wait_for(established, timeout=60, what=f"CRD {crd.CRD_NAME} established")


def sample(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    """A small Falachefe: the auth and crew pools, secrets named after the resource (see ``create_secrets``).

    Migrations are off unless asked for (``migrations={"enabled": True}``):
    no kubelet runs the migration Job here, so a test that has them on plays
    its part (``finish_migration``).
    """
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Falachefe",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "image": "falachefe:1.0",
            "database": {"secretRef": {"name": f"{name}-db"}},
            "redis": {"secretRef": {"name": f"{name}-redis"}},
            "llm": {"model": "test-model"},
            "auth": {"otpSecretRef": {"name": f"{name}-otp"}},
            "pools": {
                "auth": {"minReplicas": 1, "maxReplicas": 4, "autoscaling": {"targetCPUUtilizationPercentage": 0}},
                "crew": {"minReplicas": 0, "maxReplicas": 3, "autoscaling": {"targetCPUUtilizationPercentage": 0}},
            },
            "migrations": {"enabled": False},
        },
    }
    body["spec"].update(spec)
    return body


def apply(
    kube: ControlPlane, manifest: dict[str, Any], *extra: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``kubectl apply`` as a person or a pipeline runs it (strict field validation, client-side apply)."""
    return kubectl(kube.kubeconfig, "apply", "-f", "-", *extra, input=yaml.safe_dump(manifest), check=check)


def create_secrets(api: k8s.ApiClient, namespace: str, name: str, redis_url: str) -> None:
    core = k8s.CoreV1Api(api)
    for secret, key, value in (
        (f"{name}-db", "dsn", "postgresql://u:p@db/x"),
        (f"{name}-redis", "url", redis_url),
        (f"{name}-otp", "otpSecret", "an HMAC key"),
    ):
        put_secret(core, namespace, secret, {key: value})


def put_secret(core: k8s.CoreV1Api, namespace: str, name: str, data: dict[str, str]) -> None:
    body = k8s.V1Secret(
        metadata=k8s.V1ObjectMeta(name=name),
        data={key: base64.b64encode(value.encode()).decode() for key, value in data.items()},
    )
    try:
        core.create_namespaced_secret(namespace, body)
    except ApiException as error:
        if error.status != 409:
            raise
        core.replace_namespaced_secret(name, namespace, body)


def get(api: k8s.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    return dict(k8s.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name))


def condition(resource: dict[str, Any], type_: str) -> dict[str, Any]:
    for entry in (resource.get("status") or {}).get("conditions") or []:
        if entry["type"] == type_:
            return dict(entry)
    return {}


def wait_condition(
    api: k8s.ApiClient,
    namespace: str,
    name: str,
    type_: str,
    status: str,
    reason: str | None = None,
    timeout: float = 60,
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        resource = get(api, namespace, name)
        found = condition(resource, type_)
        if found.get("status") == status and (reason is None or found.get("reason") == reason):
            return resource
        return None

    return wait_for(probe, timeout=timeout, interval=0.2, what=f"{name} {type_}={status} {reason or ''}")


def owned(api: k8s.ApiClient, namespace: str, uid: str) -> dict[str, dict[str, Any]]:
    """Every object in ``namespace`` whose controller is the resource ``uid``: {"Kind/name": object}."""
    client = k8s.ApiClient.sanitize_for_serialization
    listed: list[Any] = [
        *k8s.AppsV1Api(api).list_namespaced_deployment(namespace).items,
        *k8s.CoreV1Api(api).list_namespaced_config_map(namespace).items,
        *k8s.CoreV1Api(api).list_namespaced_service(namespace).items,
        *k8s.PolicyV1Api(api).list_namespaced_pod_disruption_budget(namespace).items,
    ]
    kinds = {
        k8s.V1Deployment: "Deployment",
        k8s.V1ConfigMap: "ConfigMap",
        k8s.V1Service: "Service",
        k8s.V1PodDisruptionBudget: "PodDisruptionBudget",
    }
    found = {}
    for item in listed:
        refs = item.metadata.owner_references or []
        if any(ref.uid == uid and ref.controller for ref in refs):
            found[f"{kinds[type(item)]}/{item.metadata.name}"] = client(api, item)
    return found


def finish_migration(
    api: k8s.ApiClient, namespace: str, name: str, *, exit_code: int = 0, message: str = "", timeout: float = 60
) -> str:
    """Play the kubelet for ``name``'s migration Job: its pending pod ran and ended with ``exit_code``.

    The termination message is what the container wrote (``migrate
    --termination-log``). Returns the Job's name.
    """
    core = k8s.CoreV1Api(api)
    selector = f"{naming.NAME_LABEL}={naming.APP_NAME}-migrate,{naming.INSTANCE_LABEL}={name}"

    def pending() -> Any:
        pods = core.list_namespaced_pod(namespace, label_selector=selector).items
        return next((pod for pod in pods if not pod.status or pod.status.phase in (None, "Pending")), None)

    pod = wait_for(pending, timeout=timeout, what=f"a pending migration pod of {name}")
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    container = pod.spec.containers[0]
    core.patch_namespaced_pod_status(
        pod.metadata.name,
        namespace,
        {
            "status": {
                "phase": "Succeeded" if exit_code == 0 else "Failed",
                "containerStatuses": [
                    {
                        "name": container.name,
                        "image": container.image,
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": {
                            "terminated": {
                                "exitCode": exit_code,
                                "reason": "Completed" if exit_code == 0 else "Error",
                                "message": message,
                                "startedAt": now,
                                "finishedAt": now,
                            }
                        },
                    }
                ],
            }
        },
    )
    return str(pod.metadata.labels["batch.kubernetes.io/job-name"])


# -- the operator's identity -------------------------------------------------------


# -- the operator process -----------------------------------------------------------


class Operator:
    """``falachefe-operator`` as a process, exactly as the chart runs it, with a given kubeconfig."""

    def __init__(self, kubeconfig: Path, namespace: str, workdir: Path, *extra: str, name: str = "operator") -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.workdir = workdir
        self.extra = extra
        self.name = name
        self.liveness_port = free_port()
        self.metrics_port = free_port()
        self.process: ManagedProcess | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self, *, wait: bool = True) -> Operator:
        argv = [
            program_path("falachefe-operator"),
            f"--namespace={self.namespace}",
            f"--liveness-port={self.liveness_port}",
            f"--metrics-port={self.metrics_port}",
            *self.extra,
        ]
        env = {"KUBECONFIG": str(self.kubeconfig), "POD_NAMESPACE": self.namespace}
        self.process = ManagedProcess(self.name, argv, self.log_path, env=env).start()
        if wait:
            self.process.wait_until(self.healthy, 60, "GET /healthz answers")
        return self

    def healthy(self) -> bool:
        return self.health() is not None

    def health(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=1) as response:
                return dict(json.loads(response.read()))
        except OSError:
            return None

    def metrics(self) -> dict[str, float]:
        """The operator's /metrics, as {"name{labels}": value}."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                samples[key] = float(value)
        return samples

    def api_requests(self, verb: str) -> float:
        """Requests the operator counted with this verb (as the API server names it: PATCH, LIST, WATCH...)."""
        return sum(
            value
            for key, value in self.metrics().items()
            if key.startswith("falachefe_operator_api_requests_total{") and f'verb="{verb}"' in key
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int | None:
        if self.process is None:
            return None
        self.process.stop(timeout=30)
        code = self.process.popen.returncode if self.process.popen else None
        self.process = None
        return code

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process = None
