"""The operator end to end: a real API server with RBAC, the operator as its chart identity (see conftest).

No kubelet runs here: pods are created by the real controllers but never
start, so a test that needs workers Ready plays the kubelet's part and
marks the pods Ready (``mark_pods_ready``); the real ReplicaSet and
Deployment controllers turn that into the Deployment's availability.
"""

from __future__ import annotations

from typing import Any

import redis
from kubernetes import client as k8s
from opkit import (
    Operator,
    apply,
    condition,
    create_secrets,
    get,
    kubectl,
    owned,
    put_secret,
    sample,
    wait_condition,
)

from falachefe_devstack.kube import ControlPlane
from falachefe_devstack.pods import mark_pods_ready
from falachefe_devstack.process import free_port
from falachefe_devstack.waiting import wait_for
from falachefe_operator import naming
from falachefe_runtime.config import WorkerKind


def keys(name: str, *pools: str) -> set[str]:
    found = {f"ConfigMap/{name}-config", f"Service/{name}-metrics"}
    for pool in pools:
        found |= {f"Deployment/{name}-{pool}", f"PodDisruptionBudget/{name}-{pool}"}
    return found


def reconciled(api: k8s.ApiClient, namespace: str, name: str, *pools: str) -> dict[str, Any]:
    """Wait until the current generation is observed and exactly the expected objects exist."""

    def probe() -> dict[str, Any] | None:
        resource = get(api, namespace, name)
        if (resource.get("status") or {}).get("observedGeneration") != resource["metadata"]["generation"]:
            return None
        objects = owned(api, namespace, resource["metadata"]["uid"])
        return resource if set(objects) == keys(name, *pools) else None

    return wait_for(probe, timeout=60, interval=0.2, what=f"{name} reconciled with pools {pools}")


def deployment(api: k8s.ApiClient, namespace: str, name: str) -> k8s.V1Deployment:
    return k8s.AppsV1Api(api).read_namespaced_deployment(name, namespace)


def worker_env(dep: k8s.V1Deployment) -> dict[str, str]:
    return {e.name: e.value for e in dep.spec.template.spec.containers[0].env if e.value is not None}


def events(api: k8s.ApiClient, namespace: str, name: str) -> list[k8s.CoreV1Event]:
    listed = k8s.CoreV1Api(api).list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}")
    return [e for e in listed.items if e.involved_object.kind == "Falachefe"]


def wait_event(
    api: k8s.ApiClient, namespace: str, name: str, reason: str, *words: str, type_: str = "Normal"
) -> k8s.CoreV1Event:
    """Wait for an Event about the resource with ``type_`` and ``reason`` whose message holds each of ``words``."""

    def probe() -> k8s.CoreV1Event | None:
        return next(
            (
                e
                for e in events(api, namespace, name)
                if e.type == type_ and e.reason == reason and all(word in (e.message or "") for word in words)
            ),
            None,
        )

    return wait_for(probe, timeout=30, what=f"a {type_} {reason} Event about {name} saying {words}")


def test_a_sample_reconciles_into_owned_objects_and_becomes_ready(
    operator: Operator, kube: ControlPlane, kube_api: k8s.ApiClient, op_namespace: str, redis_url: str
) -> None:
    create_secrets(kube_api, op_namespace, "shop", redis_url)
    apply(kube, sample("shop", op_namespace))
    resource = reconciled(kube_api, op_namespace, "shop", "auth", "crew")
    objects = owned(kube_api, op_namespace, resource["metadata"]["uid"])
    for obj in objects.values():
        assert obj["metadata"]["labels"][naming.MANAGED_BY_LABEL] == naming.MANAGED_BY
    assert objects["Deployment/shop-crew"]["spec"]["replicas"] == 0, "minReplicas 0 starts no worker"
    assert objects["Deployment/shop-auth"]["spec"]["replicas"] == 1
    assert not resource["metadata"].get("finalizers"), "no finalizer: deleting never waits for the operator"
    # The operator writes the status and nothing else of the resource (no annotation, no label).
    managers = {(e["manager"], e.get("subresource")) for e in resource["metadata"]["managedFields"]}
    assert managers == {("kubectl-client-side-apply", None), (naming.FIELD_MANAGER, "status")}

    wait_condition(kube_api, op_namespace, "shop", "Ready", "False", "WorkersNotReady")
    wait_for(
        lambda: mark_pods_ready(kube_api, op_namespace, naming.pool_selector("shop", WorkerKind.AUTH)),
        timeout=30,
        what="the auth pool's pod created",
    )
    ready = wait_condition(kube_api, op_namespace, "shop", "Ready", "True", "WorkersReady")
    assert condition(ready, "Progressing")["status"] == "False"
    assert condition(ready, "Degraded")["reason"] == "AsExpected"
    assert condition(ready, "ScalingActive")["status"] == "True"
    assert ready["status"]["workers"] == "1/1"
    assert ready["status"]["pools"]["auth"]["readyReplicas"] == 1
    assert ready["status"]["queueDepth"] == 0

    table = kubectl(kube.kubeconfig, "get", "falachefe", "shop", "-n", op_namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "REASON", "WORKERS", "QUEUE", "AGE"]
    assert table[1].split()[:5] == ["shop", "True", "WorkersReady", "1/1", "0"]
    wide = kubectl(kube.kubeconfig, "get", "fc", "shop", "-n", op_namespace, "-o", "wide").stdout.splitlines()
    assert wide[0].split()[6:] == ["POOLS", "SCALING", "IMAGE", "PAUSED"]
    assert "auth 1/1 q0, crew 0/0 q0" in wide[1]
    assert "falachefe:1.0" in wide[1]

    wait_event(kube_api, op_namespace, "shop", "Reconciled")


def test_spec_changes_roll_out_and_a_removed_pool_is_deleted(
    operator: Operator, kube: ControlPlane, kube_api: k8s.ApiClient, op_namespace: str, redis_url: str
) -> None:
    create_secrets(kube_api, op_namespace, "grow", redis_url)
    manifest = sample("grow", op_namespace)
    apply(kube, manifest)
    reconciled(kube_api, op_namespace, "grow", "auth", "crew")
    before = deployment(kube_api, op_namespace, "grow-auth").spec.template.metadata.annotations

    manifest["spec"]["image"] = "falachefe:2.0"
    manifest["spec"]["pools"]["auth"]["concurrency"] = 7
    manifest["spec"]["pools"]["admin"] = {"autoscaling": {"enabled": False}}
    del manifest["spec"]["pools"]["crew"]
    manifest["spec"]["logLevel"] = "DEBUG"
    apply(kube, manifest)
    reconciled(kube_api, op_namespace, "grow", "auth", "admin")

    auth = deployment(kube_api, op_namespace, "grow-auth")
    assert auth.spec.template.spec.containers[0].image == "falachefe:2.0"
    assert worker_env(auth)["FALACHEFE_WORKER__CONCURRENCY"] == "7"
    after = auth.spec.template.metadata.annotations
    assert after[naming.CONFIG_HASH_ANNOTATION] != before[naming.CONFIG_HASH_ANNOTATION], "a config change rolls pods"
    admin = deployment(kube_api, op_namespace, "grow-admin")
    assert worker_env(admin)["FALACHEFE_WORKER__QUEUE"] == "admin-tasks"
    assert admin.spec.replicas == 1
    config = k8s.CoreV1Api(kube_api).read_namespaced_config_map("grow-config", op_namespace).data["config.yaml"]
    assert "log_level: DEBUG" in config

    wait_event(kube_api, op_namespace, "grow", "Deleted", "Deployment grow-crew")


def test_hand_edits_are_put_back_and_replicas_are_left_alone(
    operator: Operator, kube: ControlPlane, kube_api: k8s.ApiClient, op_namespace: str, redis_url: str
) -> None:
    create_secrets(kube_api, op_namespace, "drift", redis_url)
    manifest = sample("drift", op_namespace)
    manifest["spec"]["pools"]["auth"] = {"minReplicas": 1, "maxReplicas": 5, "autoscaling": {"enabled": False}}
    apply(kube, manifest)
    reconciled(kube_api, op_namespace, "drift", "auth", "crew")

    # Someone changes the image by hand: the operator owns that field and puts it back.
    kubectl(kube.kubeconfig, "set", "image", "deployment/drift-auth", "worker=evil:latest", "-n", op_namespace)
    wait_for(
        lambda: (
            deployment(kube_api, op_namespace, "drift-auth").spec.template.spec.containers[0].image == "falachefe:1.0"
        ),
        timeout=30,
        what="the hand-edited image put back",
    )
    # Someone deletes the ConfigMap: it comes back.
    k8s.CoreV1Api(kube_api).delete_namespaced_config_map("drift-config", op_namespace)
    wait_for(
        lambda: (
            "drift-config"
            in {c.metadata.name for c in k8s.CoreV1Api(kube_api).list_namespaced_config_map(op_namespace).items}
        ),
        timeout=30,
        what="the deleted ConfigMap recreated",
    )
    # Someone (the autoscaler, a person) scales within bounds; the next reconcile keeps it.
    kubectl(kube.kubeconfig, "scale", "deployment/drift-auth", "--replicas=3", "-n", op_namespace)
    manifest["spec"]["image"] = "falachefe:1.1"
    apply(kube, manifest)
    wait_for(
        lambda: (
            deployment(kube_api, op_namespace, "drift-auth").spec.template.spec.containers[0].image == "falachefe:1.1"
        ),
        timeout=30,
        what="the new image applied",
    )
    assert deployment(kube_api, op_namespace, "drift-auth").spec.replicas == 3
    # Outside the bounds of a pool without autoscaling, it is brought back within them.
    kubectl(kube.kubeconfig, "scale", "deployment/drift-auth", "--replicas=9", "-n", op_namespace)
    manifest["spec"]["image"] = "falachefe:1.2"
    apply(kube, manifest)
    wait_for(
        lambda: deployment(kube_api, op_namespace, "drift-auth").spec.replicas == 5,
        timeout=30,
        what="replicas clamped to maxReplicas",
    )
    wait_event(kube_api, op_namespace, "drift", "DriftCorrected")


def test_the_autoscaler_scales_on_queue_depth_reports_it_and_keeps_its_replicas_across_reconciles(
    operator: Operator, kube: ControlPlane, kube_api: k8s.ApiClient, op_namespace: str, redis_url: str
) -> None:
    create_secrets(kube_api, op_namespace, "busy", redis_url)
    manifest = sample("busy", op_namespace)
    manifest["spec"]["pools"]["auth"] = {
        "minReplicas": 1,
        "maxReplicas": 4,
        "autoscaling": {
            "pollingIntervalSeconds": 1,
            "targetQueueDepthPerReplica": 5,
            "targetCPUUtilizationPercentage": 0,
        },
    }
    apply(kube, manifest)
    reconciled(kube_api, op_namespace, "busy", "auth", "crew")

    # 40 jobs waiting on the auth queue, the way bullmq keeps them.
    queue = redis.Redis.from_url(redis_url)
    queue.lpush("bull:whatsapp-processing:wait", *range(40))
    queue.close()
    wait_for(
        lambda: deployment(kube_api, op_namespace, "busy-auth").spec.replicas == 4,
        timeout=30,
        what="the auth pool scaled to maxReplicas",
    )
    resource = wait_for(
        lambda: (r := get(kube_api, op_namespace, "busy"))["status"]["pools"]["auth"].get("desiredReplicas") == 4 and r,
        timeout=30,
        what="the status shows the decision",
    )
    auth = resource["status"]["pools"]["auth"]
    assert auth["queueDepth"] == 40
    assert auth["lastScaleTime"] and auth["lastScaleReason"]
    # With the numbers behind it.
    wait_event(kube_api, op_namespace, "busy", "Scaled", "pool auth: 1 -> 4 replicas", "queue depth 40")

    # A new image is applied; the autoscaler's replicas stay.
    manifest["spec"]["image"] = "falachefe:1.1"
    apply(kube, manifest)
    wait_for(
        lambda: (
            deployment(kube_api, op_namespace, "busy-auth").spec.template.spec.containers[0].image == "falachefe:1.1"
        ),
        timeout=30,
        what="the new image applied",
    )
    assert deployment(kube_api, op_namespace, "busy-auth").spec.replicas == 4


def test_a_missing_secret_is_a_condition_that_clears_when_the_secret_appears(
    operator: Operator, kube: ControlPlane, kube_api: k8s.ApiClient, op_namespace: str, redis_url: str
) -> None:
    core = k8s.CoreV1Api(kube_api)
    put_secret(core, op_namespace, "lost-db", {"dsn": "postgresql://u:p@db/x"})
    put_secret(core, op_namespace, "lost-otp", {"otpSecret": "an HMAC key"})
    apply(kube, sample("lost", op_namespace))
    degraded = wait_condition(kube_api, op_namespace, "lost", "Degraded", "True", "SecretNotFound")
    message = condition(degraded, "Degraded")["message"]
    assert f"Secret {op_namespace}/lost-redis not found (spec.redis.secretRef.name)" in message
    assert condition(degraded, "Ready")["reason"] == "SecretNotFound"
    assert condition(degraded, "ScalingActive")["reason"] == "MetricsUnavailable"
    wait_event(kube_api, op_namespace, "lost", "SecretNotFound", type_="Warning")

    # A key that is not there is as bad as a Secret that is not there.
    put_secret(core, op_namespace, "lost-redis", {"uri": redis_url})
    wait_condition(kube_api, op_namespace, "lost", "Degraded", "True", "SecretKeyNotFound")

    put_secret(core, op_namespace, "lost-redis", {"url": redis_url})
    recovered = wait_condition(kube_api, op_namespace, "lost", "Degraded", "False", "AsExpected")
    assert condition(recovered, "Ready")["reason"] != "SecretNotFound"
    wait_condition(kube_api, op_namespace, "lost", "ScalingActive", "True")


def test_a_redis_url_whose_password_breaks_parsers_degrades_naming_the_key_and_showing_no_piece_of_it(
    operator: Operator, kube: ControlPlane, kube_api: k8s.ApiClient, op_namespace: str, redis_url: str
) -> None:
    address = redis_url.removeprefix("redis://")
    create_secrets(kube_api, op_namespace, "pasted", f"redis://:Zq/Wv#Xj?Pk@{address}")
    apply(kube, sample("pasted", op_namespace))
    degraded = wait_condition(kube_api, op_namespace, "pasted", "Degraded", "True", "SecretInvalid")
    assert (
        f"Secret {op_namespace}/pasted-redis key 'url' (spec.redis.secretRef): the Redis URL its user or password"
        " holds '/', '?' or '#' unescaped" in condition(degraded, "Degraded")["message"]
    )
    event = wait_event(kube_api, op_namespace, "pasted", "SecretInvalid", "percent-encode", type_="Warning")
    shown = str(get(kube_api, op_namespace, "pasted")) + str(
        [e.message for e in events(kube_api, op_namespace, "pasted")]
    )
    assert event.message and not [piece for piece in ("Zq", "Wv", "Xj", "Pk") if piece in shown], shown

    # Percent-encoded, the same password is fine.
    put_secret(k8s.CoreV1Api(kube_api), op_namespace, "pasted-redis", {"url": f"redis://:Zq%2FWv%23Xj%3FPk@{address}"})
    wait_condition(kube_api, op_namespace, "pasted", "Degraded", "False", "AsExpected")


def test_an_unreachable_redis_holds_the_size_and_recovers(
    operator: Operator, kube: ControlPlane, kube_api: k8s.ApiClient, op_namespace: str, redis_url: str
) -> None:
    nowhere = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    create_secrets(kube_api, op_namespace, "dark", nowhere)
    apply(kube, sample("dark", op_namespace))
    dark = wait_condition(kube_api, op_namespace, "dark", "ScalingActive", "False", "MetricsUnavailable")
    message = condition(dark, "ScalingActive")["message"]
    assert "queue" in message and "127.0.0.1" in message
    assert "s3cret" not in str(dark), "the Redis password must not reach the status"
    assert deployment(kube_api, op_namespace, "dark-auth").spec.replicas == 1

    put_secret(k8s.CoreV1Api(kube_api), op_namespace, "dark-redis", {"url": redis_url})
    wait_condition(kube_api, op_namespace, "dark", "ScalingActive", "True", timeout=60)


def test_a_paused_resource_is_left_alone_and_says_so(
    operator: Operator, kube: ControlPlane, kube_api: k8s.ApiClient, op_namespace: str, redis_url: str
) -> None:
    create_secrets(kube_api, op_namespace, "nap", redis_url)
    manifest = sample("nap", op_namespace)
    apply(kube, manifest)
    reconciled(kube_api, op_namespace, "nap", "auth", "crew")

    manifest["spec"]["paused"] = True
    manifest["spec"]["image"] = "falachefe:9.9"
    apply(kube, manifest)
    paused = wait_condition(kube_api, op_namespace, "nap", "ScalingActive", "False", "Paused")
    assert condition(paused, "Ready")["reason"] == "Paused"
    assert "spec.paused" in condition(paused, "Ready")["message"]
    assert condition(paused, "Progressing")["reason"] == "Paused"
    assert paused["status"]["observedGeneration"] == paused["metadata"]["generation"]
    # The pass that wrote "Paused" for the new generation applied nothing of it.
    assert deployment(kube_api, op_namespace, "nap-auth").spec.template.spec.containers[0].image == "falachefe:1.0"

    manifest["spec"]["paused"] = False
    apply(kube, manifest)
    wait_for(
        lambda: (
            deployment(kube_api, op_namespace, "nap-auth").spec.template.spec.containers[0].image == "falachefe:9.9"
        ),
        timeout=30,
        what="the spec applied once unpaused",
    )
    wait_condition(kube_api, op_namespace, "nap", "ScalingActive", "True")


def test_deleting_the_resource_deletes_what_it_owns(
    operator: Operator, kube: ControlPlane, kube_api: k8s.ApiClient, op_namespace: str, redis_url: str
) -> None:
    create_secrets(kube_api, op_namespace, "gone", redis_url)
    apply(kube, sample("gone", op_namespace))
    resource = reconciled(kube_api, op_namespace, "gone", "auth", "crew")
    kubectl(kube.kubeconfig, "delete", "falachefe", "gone", "-n", op_namespace, "--wait=true", "--timeout=30s")
    wait_for(
        lambda: not owned(kube_api, op_namespace, resource["metadata"]["uid"]),
        timeout=60,
        what="the garbage collector removing the owned objects",
    )
