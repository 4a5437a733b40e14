"""The API server restarts while the operator is cut off from it: no change is lost, no burst of requests follows.

A control plane of this module's own (its API server is restarted). The
operator reaches it through a proxy the test makes hang, so what happens
meanwhile happens while every one of its watches is down: a pool resized,
an owned ConfigMap deleted, a worker pod deleted, a whole ``Falachefe``
deleted. Then the API server restarts: its watch cache starts again at
etcd's current revision, so a watch resumed from an older resource version
is answered ``410 Gone`` and Kopf lists again. A relist shows what exists,
never what vanished: the deletions must still reach the operator.

Once the operator is reconnected, the only client left is the operator
(the controller manager was stopped before the cut, and the test only GETs),
so the API server's own request counts, which restart at zero with it, are
the operator's: at most one relist per watch, one existence check per
vanished object, and the work the changes asked for.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from opkit import Operator, create_secrets, get, install_crd, sample, wait_condition

from falachefe_devstack import toolchain
from falachefe_devstack.kube import AUDIT_POLICY, ControlPlane, temporary_namespace
from falachefe_devstack.operator_identity import ACCOUNT, bind_operator_identity, drop_cluster_grants
from falachefe_devstack.pods import mark_pods_ready
from falachefe_devstack.tcp_proxy import HangingProxy
from falachefe_devstack.waiting import wait_for
from falachefe_operator import naming
from falachefe_operator.builders import OWNED_KINDS
from falachefe_operator.resource import GROUP, PLURAL, VERSION
from falachefe_runtime.config import WorkerKind

pytestmark = pytest.mark.slow

RESOURCES = 10
#: What one reconcile of a resource with two pools costs at most (three Secrets read, seven objects applied,
#: a scale, a status write, an Event).
RECONCILE_REQUESTS = 13


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory, tools: toolchain.Toolchain) -> Iterator[ControlPlane]:
    """This module's own control plane: restarting it disturbs no other test."""
    # Besides the default (reads of Secrets), the API server records every request of a service account: the
    # operator's requests are counted from that record, by the API server, not by the operator.
    policy = {**AUDIT_POLICY, "rules": [{"level": "Metadata", "userGroups": ["system:serviceaccounts"]}]}
    policy["rules"].extend(AUDIT_POLICY["rules"])
    plane = ControlPlane(tmp_path_factory.mktemp("kube-restarted"), tools, audit_policy=policy).start()
    yield plane
    plane.stop()


@pytest.fixture(scope="module")
def kube_api(kube: ControlPlane) -> k8s.ApiClient:
    return k8s_config.new_client_from_config(config_file=str(kube.kubeconfig))


@pytest.fixture(scope="module")
def crd_installed(kube: ControlPlane) -> None:
    install_crd(kube)


@pytest.fixture(scope="module")
def op_namespace(kube_api: k8s.ApiClient, crd_installed: None) -> Iterator[str]:
    with temporary_namespace(kube_api, "watch-restart") as name:
        yield name
        drop_cluster_grants(kube_api, name)


@pytest.fixture(scope="module")
def proxy(kube: ControlPlane) -> Iterator[HangingProxy]:
    server = HangingProxy("127.0.0.1", kube.apiserver_port)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def operator(
    kube_api: k8s.ApiClient, kube: ControlPlane, op_namespace: str, proxy: HangingProxy, tmp_path_factory: Any
) -> Iterator[Operator]:
    """The operator as its chart identity, through the proxy, logging Kopf's watch restarts (``--verbose``)."""
    workdir: Path = tmp_path_factory.mktemp("operator")
    kubeconfig = bind_operator_identity(kube_api, kube, op_namespace, workdir)
    config = yaml.safe_load(kubeconfig.read_text())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
    kubeconfig.write_text(yaml.safe_dump(config))
    process = Operator(kubeconfig, op_namespace, workdir, "--standalone", "--verbose").start()
    yield process
    process.stop()
    assert "Forbidden" not in process.log(), process.log()[-4000:]


def own_metric(operator: Operator, name: str, **labels: str) -> float:
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    return sum(
        value
        for key, value in operator.metrics().items()
        if (key == name or key.startswith(name + "{")) and all(label in key for label in wanted)
    )


def test_changes_made_while_the_watches_were_down_all_arrive_after_the_api_server_restarts(
    operator: Operator,
    kube: ControlPlane,
    kube_api: k8s.ApiClient,
    op_namespace: str,
    redis_url: str,
    proxy: HangingProxy,
) -> None:
    custom = k8s.CustomObjectsApi(kube_api)
    core = k8s.CoreV1Api(kube_api)
    apps = k8s.AppsV1Api(kube_api)
    names = [f"fleet-{index}" for index in range(RESOURCES)]
    for name in names:
        create_secrets(kube_api, op_namespace, name, redis_url)
        custom.create_namespaced_custom_object(GROUP, VERSION, op_namespace, PLURAL, sample(name, op_namespace))

    def auth_pods(name: str) -> list[Any]:
        selector = naming.selector_string(naming.pool_selector(name, WorkerKind.AUTH))
        return list(core.list_namespaced_pod(op_namespace, label_selector=selector).items)

    wait_for(lambda: all(auth_pods(name) for name in names), timeout=120, what="every auth pool's pod created")
    for name in names:
        mark_pods_ready(kube_api, op_namespace, naming.pool_selector(name, WorkerKind.AUTH))
    for name in names:
        wait_condition(kube_api, op_namespace, name, "Ready", "True", timeout=120)

    # Nothing else talks to the API server from here on (no kubelet, no scheduler; the test only GETs).
    kube.stop_component("kube-controller-manager")
    # fleet-3's pools are polled (their series are there, until the operator knows the resource is gone).
    assert own_metric(operator, "falachefe_operator_pool_max_replicas", falachefe="fleet-3") > 0

    # Every watch of the operator's goes silent; meanwhile, four changes.
    proxy.hang()
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, op_namespace, PLURAL, "fleet-0", {"spec": {"pools": {"auth": {"minReplicas": 2}}}}
    )
    core.delete_namespaced_config_map("fleet-1-config", op_namespace)
    vanished_pod = auth_pods("fleet-2")[0].metadata.name
    core.delete_namespaced_pod(vanished_pod, op_namespace, grace_period_seconds=0)
    custom.delete_namespaced_custom_object(GROUP, VERSION, op_namespace, PLURAL, "fleet-3")
    # (No garbage collector runs: fleet-3's objects stay, orphans of a deleted owner.)

    kube.restart_apiserver()
    restarted = datetime.now(UTC)
    proxy.resume()

    # The resize arrived: the pool's Deployment was sized up.
    wait_for(
        lambda: apps.read_namespaced_deployment("fleet-0-auth", op_namespace).spec.replicas == 2,
        timeout=90,
        interval=0.5,
        what="fleet-0's auth pool resized to its new minimum",
    )
    # The deleted ConfigMap was seen as drift and put back.
    wait_for(
        lambda: _exists(lambda: core.read_namespaced_config_map("fleet-1-config", op_namespace)),
        timeout=90,
        interval=0.5,
        what="fleet-1's ConfigMap re-created",
    )
    # The deleted Falachefe and the deleted pod were noticed although no DELETED event ever came.
    wait_for(
        lambda: own_metric(operator, "falachefe_operator_pool_max_replicas", falachefe="fleet-3") == 0,
        timeout=60,
        interval=0.5,
        what="fleet-3's pools no longer polled (their series dropped)",
    )
    wait_for(
        lambda: own_metric(operator, "falachefe_operator_relist_deletions_total", resource="pods") >= 1,
        timeout=60,
        interval=0.5,
        what="the deleted pod dropped from the operator's pod index",
    )
    assert own_metric(operator, "falachefe_operator_relist_deletions_total", resource=PLURAL) == 1
    assert own_metric(operator, "falachefe_operator_relist_deletions_total", resource="configmaps") == 1
    # It was the 410 path: the watches were answered Gone and listed again.
    log = operator.log()
    assert "Restarting the watch-stream" in log, log[-4000:]
    assert get(kube_api, op_namespace, "fleet-0")["status"]["observedGeneration"] == 2

    # The cost, as the API server recorded the operator's requests since its restart.
    spent = operator_requests(kube, op_namespace, since=restarted)
    lists = {key: count for (verb, key), count in spent.items() if verb == "list"}
    others = {(verb, key): count for (verb, key), count in spent.items() if verb not in {"list", "watch"}}
    print(f"\nthe operator's requests after the restart: lists {lists}; others {others}")
    # One relist per watch (each kind, in the one namespace)...
    for key in WATCHED:
        assert spent.get(("watch", key), 0) >= 1, spent
    # ...plus one existence check (a list filtered to one name) per object found missing: fleet-3, fleet-1's
    # ConfigMap and the pod.
    checks = {PLURAL: 1, "configmaps": 1, "pods": 1}
    for key in WATCHED:
        assert 1 <= lists.get(key, 0) <= 1 + checks.get(key, 0), (key, lists)
    # Beyond: the two reconciles the changes asked for (the resize, the ConfigMap's repair: 25 requests
    # measured), with room for a third; a reconcile of every resource after the relist would be 10 of them.
    assert sum(others.values()) <= 3 * RECONCILE_REQUESTS, others


WATCHED = {PLURAL, "pods", *(plural for _, _, plural in OWNED_KINDS)}


def operator_requests(kube: ControlPlane, namespace: str, *, since: datetime) -> dict[tuple[str, str], int]:
    """The operator's requests the API server finished (or, for a watch, started) after ``since``:
    {(verb, resource or resource/subresource): count}."""
    counts: dict[tuple[str, str], int] = {}
    for event in kube.audit_events(f"system:serviceaccount:{namespace}:{ACCOUNT}"):
        if event.get("stage") not in {"ResponseComplete", "ResponseStarted"}:
            continue
        if event["verb"] == "watch" and event["stage"] != "ResponseStarted":
            continue
        if event["verb"] != "watch" and event["stage"] != "ResponseComplete":
            continue
        if datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00")) < since:
            continue
        ref = event.get("objectRef") or {}
        resource = ref.get("resource", "") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        key = (event["verb"], resource)
        counts[key] = counts.get(key, 0) + 1
    return counts


def _exists(read: Any) -> bool:
    try:
        read()
    except k8s.ApiException as error:
        if error.status == 404:
            return False
        raise
    return True
