"""Helpers for the end-to-end tests on the real node: one test's Falachefe world, messages and replies."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s

from falachefe_devstack.kube import kubectl
from falachefe_devstack.llm_standin import FakeOpenAI
from falachefe_devstack.seed import Tenant, process_message_job
from falachefe_devstack.stack import LocalStack
from falachefe_devstack.waiting import Timeout, wait_for
from falachefe_operator.resource import GROUP, PLURAL, VERSION
from falachefe_runtime.payloads import PROCESS_MESSAGE, OutboundMessage
from falachefe_runtime.queues import OUTBOUND_QUEUE, WHATSAPP_QUEUE, Queues

#: The session's operator release (every namespace), installed by conftest's ``operator_release``.
OPERATOR_NAMESPACE = "falachefe-system"
OPERATOR_RELEASE = "falachefe-operator"

#: Small pools without autoscaling: enough to see every behaviour on two cores.
SMALL_POOLS: dict[str, dict[str, Any]] = {
    "auth": {
        "minReplicas": 1,
        "maxReplicas": 2,
        "resources": {"requests": {"cpu": "100m", "memory": "192Mi"}},
        "autoscaling": {"enabled": False},
    },
    "crew": {
        "minReplicas": 1,
        "maxReplicas": 2,
        "resources": {"requests": {"cpu": "100m", "memory": "384Mi"}},
        "autoscaling": {"enabled": False},
    },
}


@dataclass
class App:
    """One test's Falachefe world: a namespace, its Secrets, a migrated database with a tenant, a Redis db."""

    namespace: str
    dsn: str
    redis_url: str
    tenant: Tenant
    queues: Queues
    stack: LocalStack
    api: k8s.ApiClient
    llm: FakeOpenAI

    def falachefe(self, name: str = "app", **spec: Any) -> dict[str, Any]:
        """A Falachefe running the image under test, every Secret wired, the pools given in ``spec``."""
        assert self.stack.image is not None
        body: dict[str, Any] = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Falachefe",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": {
                "image": self.stack.image,
                "imagePullPolicy": "Never",
                "database": {"secretRef": {"name": "falachefe-db"}},
                "redis": {"secretRef": {"name": "falachefe-redis"}},
                "llm": {
                    "model": "fake-model",
                    "baseURL": self.llm.base_url,
                    "apiKeySecretRef": {"name": "falachefe-llm"},
                },
                "auth": {"otpSecretRef": {"name": "falachefe-otp"}},
                "pools": {},
            },
        }
        body["spec"].update(spec)
        return body

    def apply(self, manifest: dict[str, Any]) -> None:
        assert self.stack.kube is not None
        kubectl(self.stack.kube.kubeconfig, "apply", "-f", "-", input=yaml.safe_dump(manifest))

    def get(self, name: str = "app") -> dict[str, Any]:
        return dict(
            k8s.CustomObjectsApi(self.api).get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        )

    def wait_ready(self, name: str = "app", timeout: float = 240) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            resource = self.get(name)
            conditions = (resource.get("status") or {}).get("conditions") or []
            return resource if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions) else None

        try:
            return wait_for(ready, timeout=timeout, interval=1.0, what=f"Falachefe {name} Ready")
        except Timeout as timeout_error:
            raise Timeout(f"{timeout_error}\n{self.diagnose(name)}") from None

    def diagnose(self, name: str = "app") -> str:
        """What a person would look at: the resource's conditions, the pods, the end of their logs."""
        assert self.stack.kube is not None
        conditions = (self.get(name).get("status") or {}).get("conditions") or []
        lines = [f"{c['type']}={c['status']} {c.get('reason')}: {c.get('message')}" for c in conditions]
        lines.append(kubectl(self.stack.kube.kubeconfig, "get", "pods", "-n", self.namespace, "-o", "wide").stdout)
        for pod in self.pods(""):
            logs = kubectl(
                self.stack.kube.kubeconfig, "logs", "-n", self.namespace, pod.metadata.name, "--tail=15", check=False
            )
            lines.append(f"--- {pod.metadata.name}\n{logs.stdout}{logs.stderr}")
        return "\n".join(lines)

    def pods(self, selector: str) -> list[k8s.V1Pod]:
        return list(k8s.CoreV1Api(self.api).list_namespaced_pod(self.namespace, label_selector=selector).items)


def write_pod_logs(app: App, selector: str, directory: Path) -> None:
    """Keep the pods' logs beside the test's temporary files (for a failure's post-mortem)."""
    assert app.stack.kube is not None
    directory.mkdir(parents=True, exist_ok=True)
    for pod in app.pods(selector):
        logs = kubectl(app.stack.kube.kubeconfig, "logs", "-n", app.namespace, pod.metadata.name, check=False)
        (directory / f"{pod.metadata.name}.log").write_text(logs.stdout + logs.stderr)


async def replies(queues: Queues) -> dict[str, OutboundMessage]:
    """The messages workers handed to the WhatsApp sender (nobody consumes them here), by the message they answer."""
    jobs = await queues.queue(OUTBOUND_QUEUE).getJobs(["wait"], 0, -1, True)
    found: dict[str, OutboundMessage] = {}
    for job in jobs:
        message = OutboundMessage.model_validate(job.data)
        if message.reply_to is not None:
            assert message.reply_to not in found, f"{message.reply_to} answered twice"
            found[message.reply_to] = message
    return found


async def send_messages(app: App, count: int, text: str = "Vocês abrem no domingo?") -> list[str]:
    """``count`` WhatsApp messages on the real ``whatsapp-processing`` queue; their provider ids."""
    sent = []
    for i in range(count):
        message_id, job = process_message_job(app.tenant, i, f"{text} ({i})")
        await app.queues.enqueue(WHATSAPP_QUEUE, PROCESS_MESSAGE, job)
        sent.append(message_id)
    return sent
