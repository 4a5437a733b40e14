"""The operator process: restarts (clean and brutal), re-applying without changes, leader election, SIGTERM."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from opkit import Operator, apply, condition, create_secrets, get, owned, sample

from falachefe_devstack.kube import ControlPlane
from falachefe_devstack.waiting import wait_for
from falachefe_operator import naming
from falachefe_runtime.config import WorkerKind


def expected(name: str) -> set[str]:
    return {
        f"ConfigMap/{name}-config",
        f"Service/{name}-metrics",
        f"Deployment/{name}-auth",
        f"PodDisruptionBudget/{name}-auth",
        f"Deployment/{name}-crew",
        f"PodDisruptionBudget/{name}-crew",
    }


def converged(api: k8s.ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    resource = get(api, namespace, name)
    if (resource.get("status") or {}).get("observedGeneration") != resource["metadata"]["generation"]:
        return None
    objects = owned(api, namespace, resource["metadata"]["uid"])
    if set(objects) != expected(name):
        return None
    replicas = {key: o["spec"].get("replicas") for key, o in objects.items() if key.startswith("Deployment/")}
    if replicas != {f"Deployment/{name}-auth": 1, f"Deployment/{name}-crew": 0}:
        return None
    if any(o["spec"].get("paused") for key, o in objects.items() if key.startswith("Deployment/")):
        return None
    return resource


def versions(api: k8s.ApiClient, namespace: str, uid: str) -> dict[str, tuple[str, ...]]:
    """What moves when the operator writes an object.

    Controllers keep writing Deployments' and PDBs' status, which moves
    their resourceVersion; a spec change moves ``generation``, and any change
    the operator's apply makes moves the time of its managedFields entry.
    ConfigMaps and Services nobody else writes: their resourceVersion.
    """
    found = {}
    for key, o in owned(api, namespace, uid).items():
        metadata = o["metadata"]
        (entry,) = [
            e for e in metadata["managedFields"] if e["manager"] == naming.FIELD_MANAGER and e["operation"] == "Apply"
        ]
        stamp = (str(metadata.get("generation", "")), entry["time"])
        found[key] = (*stamp, metadata["resourceVersion"]) if "generation" not in metadata else stamp
    return found


@pytest.fixture
def start(operator_kubeconfig: Path, op_namespace: str, op_workdir: Path) -> Iterator[Any]:
    """Start operators in the module's namespace; whatever is left running is stopped afterwards."""
    started: list[Operator] = []

    def launch(*extra: str, name: str = "operator", wait: bool = True) -> Operator:
        process = Operator(operator_kubeconfig, op_namespace, op_workdir, *extra, name=name).start(wait=wait)
        started.append(process)
        return process

    yield launch
    for process in started:
        process.stop()
        assert "Forbidden" not in process.log(), process.log()[-4000:]


def test_a_restart_mid_reconcile_converges_with_nothing_duplicated(
    start: Any, kube: ControlPlane, kube_api: k8s.ApiClient, op_namespace: str, redis_url: str
) -> None:
    names = [f"burst-{i}" for i in range(6)]
    for name in names:
        create_secrets(kube_api, op_namespace, name, redis_url)
    operator = start("--standalone")
    for name in names:
        apply(kube, sample(name, op_namespace))
    # Kill it (no goodbye) as soon as it has started writing objects.
    apps = k8s.AppsV1Api(kube_api)
    wait_for(
        lambda: apps.list_namespaced_deployment(op_namespace, label_selector=naming.MANAGED_SELECTOR).items,
        timeout=60,
        interval=0.02,
        what="the first Deployment written",
    )
    operator.kill()
    partial = sum(converged(kube_api, op_namespace, name) is not None for name in names)

    start("--standalone", name="operator-again")
    for name in names:
        wait_for(lambda name=name: converged(kube_api, op_namespace, name), timeout=90, what=f"{name} converged")
    for name in names:
        uid = get(kube_api, op_namespace, name)["metadata"]["uid"]
        for pool in (WorkerKind.AUTH, WorkerKind.CREW):
            selector = naming.selector_string(naming.pool_selector(name, pool))
            replica_sets = k8s.AppsV1Api(kube_api).list_namespaced_replica_set(op_namespace, label_selector=selector)
            assert len(replica_sets.items) == 1, f"{name}/{pool}: a second rollout ({len(replica_sets.items)} RS)"
        assert set(owned(kube_api, op_namespace, uid)) == expected(name)
    print(f"{partial}/{len(names)} resources were complete when the first operator was killed")


def test_a_restarted_operator_reapplies_everything_and_changes_nothing(
    start: Any, kube: ControlPlane, kube_api: k8s.ApiClient, op_namespace: str, redis_url: str
) -> None:
    create_secrets(kube_api, op_namespace, "calm", redis_url)
    first = start("--standalone")
    apply(kube, sample("calm", op_namespace))
    resource = wait_for(lambda: converged(kube_api, op_namespace, "calm"), timeout=60, what="calm converged")
    wait_for(
        lambda: condition(get(kube_api, op_namespace, "calm"), "ScalingActive").get("status") == "True",
        timeout=30,
        what="the first autoscaler pass",
    )
    uid = resource["metadata"]["uid"]
    before = versions(kube_api, op_namespace, uid)
    resource = get(kube_api, op_namespace, "calm")
    transitions = {c["type"]: c["lastTransitionTime"] for c in resource["status"]["conditions"]}

    stopping = time.monotonic()
    assert first.stop() == 0, "SIGTERM: a clean exit"
    assert time.monotonic() - stopping < 10, "SIGTERM: a prompt exit"

    second = start("--standalone", name="operator-second")
    # The new process applies every object once (it cannot know they are already right)...
    wait_for(lambda: second.api_requests("PATCH") >= len(expected("calm")), timeout=60, what="the re-apply")
    wait_for(
        lambda: second.metrics().get('falachefe_operator_reconciles_total{outcome="ok"}', 0) >= 1,
        timeout=30,
        what="a reconcile counted",
    )
    # ...and server-side apply of identical objects writes nothing.
    assert versions(kube_api, op_namespace, uid) == before
    again = get(kube_api, op_namespace, "calm")
    assert {c["type"]: c["lastTransitionTime"] for c in again["status"]["conditions"]} == transitions


def test_two_replicas_elect_one_leader_and_the_standby_takes_over(
    start: Any, kube: ControlPlane, kube_api: k8s.ApiClient, op_namespace: str, redis_url: str
) -> None:
    lease_id = "falachefe-operator-test"
    first = start(f"--leader-election-id={lease_id}", name="replica-a")
    wait_for(lambda: (first.health() or {}).get("leader"), timeout=30, what="replica-a leading")
    second = start(f"--leader-election-id={lease_id}", name="replica-b")
    assert second.health() == {"status": "ok", "leader": False, "identity": second.health()["identity"]}

    lease = k8s.CoordinationV1Api(kube_api).read_namespaced_lease(lease_id, op_namespace)
    assert lease.spec.holder_identity == first.health()["identity"]

    # Only the leader acts.
    create_secrets(kube_api, op_namespace, "led", redis_url)
    apply(kube, sample("led", op_namespace))
    wait_for(lambda: converged(kube_api, op_namespace, "led"), timeout=60, what="led converged by the leader")
    assert second.api_requests("PATCH") == 0, "the standby wrote something"
    assert second.metrics()["falachefe_operator_leader"] == 0

    # The leader leaves cleanly (releases the Lease); the standby takes over well within the lease duration.
    assert first.stop() == 0
    wait_for(lambda: (second.health() or {}).get("leader"), timeout=10, what="replica-b leading")
    apply(kube, sample("led", op_namespace, image="falachefe:2.0"))
    wait_for(
        lambda: (
            k8s.AppsV1Api(kube_api)
            .read_namespaced_deployment("led-auth", op_namespace)
            .spec.template.spec.containers[0]
            .image
            == "falachefe:2.0"
        ),
        timeout=60,
        what="the new leader applying the next change",
    )
    lease = k8s.CoordinationV1Api(kube_api).read_namespaced_lease(lease_id, op_namespace)
    assert lease.spec.holder_identity == second.health()["identity"]
    assert lease.spec.lease_transitions >= 1
