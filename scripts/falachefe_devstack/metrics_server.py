"""metrics.k8s.io from the real metrics-server, registered the way its own manifests do it.

metrics-server runs on the node (:meth:`falachefe_devstack.node.Node.start`)
and scrapes the kubelet's ``/metrics/resource``; this module makes the
apiserver serve it: a Service without a selector in ``kube-system``, its
Endpoints at the node's address, and the ``v1beta1.metrics.k8s.io``
APIService. The apiserver runs outside the node, where ClusterIPs mean
nothing, so it dials the Endpoints (``--enable-aggregator-routing``).
metrics-server's certificate is self-signed, hence ``insecureSkipTLSVerify``,
as in metrics-server's own quick-start manifests.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config

from .kube import ControlPlane
from .node import Node
from .waiting import wait_for

APISERVICE_NAME = "v1beta1.metrics.k8s.io"
NAMESPACE = "kube-system"
SERVICE = "metrics-server"


def register_metrics_server(kube: ControlPlane, node: Node, timeout: float = 90) -> None:
    """Serve metrics.k8s.io from the node's metrics-server; wait until the apiserver says it is Available."""
    api = k8s_config.new_client_from_config(config_file=str(kube.kubeconfig))
    core = k8s.CoreV1Api(api)
    port = node.metrics_server_port
    core.create_namespaced_service(
        NAMESPACE,
        k8s.V1Service(
            metadata=k8s.V1ObjectMeta(name=SERVICE, labels={"k8s-app": SERVICE}),
            spec=k8s.V1ServiceSpec(ports=[k8s.V1ServicePort(name="https", port=443, target_port=port)]),
        ),
    )
    core.create_namespaced_endpoints(
        NAMESPACE,
        k8s.V1Endpoints(
            metadata=k8s.V1ObjectMeta(name=SERVICE, labels={"k8s-app": SERVICE}),
            subsets=[
                k8s.V1EndpointSubset(
                    addresses=[k8s.V1EndpointAddress(ip=node.network.node_address)],
                    ports=[k8s.CoreV1EndpointPort(name="https", port=port)],
                )
            ],
        ),
    )
    registration = k8s.ApiregistrationV1Api(api)
    registration.create_api_service(
        k8s.V1APIService(
            metadata=k8s.V1ObjectMeta(name=APISERVICE_NAME, labels={"k8s-app": SERVICE}),
            spec=k8s.V1APIServiceSpec(
                group="metrics.k8s.io",
                version="v1beta1",
                group_priority_minimum=100,
                version_priority=100,
                insecure_skip_tls_verify=True,
                service=k8s.ApiregistrationV1ServiceReference(namespace=NAMESPACE, name=SERVICE, port=443),
            ),
        )
    )
    wait_for(lambda: _available(registration), timeout=timeout, interval=0.25, what="metrics.k8s.io Available")


def node_metrics(kube: ControlPlane, node: Node) -> dict[str, Any] | None:
    """The node's NodeMetrics (CPU and memory now), or None while metrics-server has no two scrapes yet."""
    api = k8s_config.new_client_from_config(config_file=str(kube.kubeconfig))
    try:
        result: dict[str, Any] = k8s.CustomObjectsApi(api).get_cluster_custom_object(
            "metrics.k8s.io", "v1beta1", "nodes", node.name
        )
    except k8s.ApiException:
        return None
    return result


def _available(registration: k8s.ApiregistrationV1Api) -> bool:
    service = registration.read_api_service(APISERVICE_NAME)
    conditions = (service.status and service.status.conditions) or []
    return any(c.type == "Available" and c.status == "True" for c in conditions)
