"""The local control plane is a real one: schema and CEL validation, controllers, GC, RBAC."""

from __future__ import annotations

import json

import pytest
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from falachefe_devstack.kube import ControlPlane, kubectl
from falachefe_devstack.waiting import wait_for

WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.stack.test"},
    "spec": {
        "group": "stack.test",
        "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {
                                    "min": {"type": "integer"},
                                    "max": {"type": "integer"},
                                },
                                "x-kubernetes-validations": [
                                    {"rule": "self.min <= self.max", "message": "min must not exceed max"}
                                ],
                            }
                        },
                    }
                },
            }
        ],
    },
}


def test_version_is_stamped(kube: ControlPlane) -> None:
    out = kubectl(kube.kubeconfig, "version", "-o", "json").stdout
    assert json.loads(out)["serverVersion"]["gitVersion"].startswith("v1.32.")


def test_cel_rule_rejects_invalid_object(kube_api: k8s.ApiClient, namespace: str) -> None:
    extensions = k8s.ApiextensionsV1Api(kube_api)
    try:
        extensions.create_custom_resource_definition(WIDGET_CRD)
    except ApiException as error:
        if error.status != 409:
            raise
    custom = k8s.CustomObjectsApi(kube_api)

    def established() -> bool:
        crd = extensions.read_custom_resource_definition("widgets.stack.test")
        return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])

    wait_for(established, what="CRD established")

    def widget(name: str, low: int, high: int) -> dict[str, object]:
        return {
            "apiVersion": "stack.test/v1",
            "kind": "Widget",
            "metadata": {"name": name},
            "spec": {"min": low, "max": high},
        }

    created = wait_for(lambda: _try_create(custom, namespace, widget("good", 1, 2)), what="valid widget accepted")
    assert created["spec"] == {"min": 1, "max": 2}
    with pytest.raises(ApiException) as rejected:
        custom.create_namespaced_custom_object("stack.test", "v1", namespace, "widgets", widget("bad", 3, 2))
    assert rejected.value.status == 422
    assert "min must not exceed max" in rejected.value.body


def _try_create(custom: k8s.CustomObjectsApi, namespace: str, body: dict[str, object]) -> dict[str, object] | None:
    """Create, tolerating the few hundred ms after Established when the API is not served yet."""
    try:
        result: dict[str, object] = custom.create_namespaced_custom_object(
            "stack.test", "v1", namespace, "widgets", body
        )
        return result
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def test_deployment_produces_replicaset(kube_api: k8s.ApiClient, namespace: str) -> None:
    apps = k8s.AppsV1Api(kube_api)
    labels = {"app": "web"}
    apps.create_namespaced_deployment(
        namespace,
        k8s.V1Deployment(
            metadata=k8s.V1ObjectMeta(name="web"),
            spec=k8s.V1DeploymentSpec(
                replicas=2,
                selector=k8s.V1LabelSelector(match_labels=labels),
                template=k8s.V1PodTemplateSpec(
                    metadata=k8s.V1ObjectMeta(labels=labels),
                    spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="web", image="example.invalid/web:1")]),
                ),
            ),
        ),
    )
    replica_sets = wait_for(
        lambda: apps.list_namespaced_replica_set(namespace).items, what="ReplicaSet created by the controller"
    )
    assert replica_sets[0].metadata.owner_references[0].name == "web"
    pods = wait_for(
        lambda: len(k8s.CoreV1Api(kube_api).list_namespaced_pod(namespace).items) == 2, what="2 pods created"
    )
    assert pods


def test_garbage_collector_deletes_dependents(kube_api: k8s.ApiClient, namespace: str) -> None:
    core = k8s.CoreV1Api(kube_api)
    owner = core.create_namespaced_config_map(namespace, k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="owner")))
    core.create_namespaced_config_map(
        namespace,
        k8s.V1ConfigMap(
            metadata=k8s.V1ObjectMeta(
                name="dependent",
                owner_references=[
                    k8s.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid)
                ],
            )
        ),
    )
    core.delete_namespaced_config_map("owner", namespace)

    def dependent_gone() -> bool:
        names = {cm.metadata.name for cm in core.list_namespaced_config_map(namespace).items}
        return "dependent" not in names

    assert wait_for(dependent_gone, timeout=60, what="dependent garbage-collected")


def test_restricted_user_is_forbidden(kube: ControlPlane, namespace: str) -> None:
    result = kubectl(kube.restricted_kubeconfig, "-n", namespace, "create", "configmap", "x", check=False)
    assert result.returncode != 0
    assert "forbidden" in result.stderr.lower()
    assert 'User "restricted" cannot create resource "configmaps"' in result.stderr
    # The same verb as admin succeeds: the denial is RBAC, not a broken cluster.
    kubectl(kube.kubeconfig, "-n", namespace, "create", "configmap", "x")
