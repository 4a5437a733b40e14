"""A stand-in for metrics-server, served through the real API server's aggregation layer.

No kubelet runs here, so nothing measures CPU; this small HTTPS server
answers ``metrics.k8s.io/v1beta1`` with the usage set per pod (by a test,
or by the demo's kubelet stand-in from what its worker processes really
use), and is registered the way metrics-server is registered: an APIService
``v1beta1.metrics.k8s.io`` pointing at a Service. The operator's code reads
``/apis/metrics.k8s.io/...`` from the API server as it would in a cluster,
and cannot tell.

Routing: there is no kube-proxy, and the API server runs with
``--enable-aggregator-routing=true``, so it dials the Service's Endpoints
directly. Endpoints may not hold a loopback address, so the server binds
the machine's own non-loopback IPv4 address and the Endpoints name it.
The certificate is self-signed (made with openssl) and the APIService says
``insecureSkipTLSVerify``, as metrics-server's own quick-start manifests do.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from kubernetes import client as k8s

from .background_http import BackgroundServer
from .waiting import wait_for

GROUP_VERSION = "metrics.k8s.io/v1beta1"
APISERVICE_NAME = "v1beta1.metrics.k8s.io"


def host_ip() -> str:
    """This machine's primary non-loopback IPv4 address (Endpoints refuse loopback)."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("10.255.255.255", 1))  # UDP: picks the outgoing interface, sends nothing
        address = probe.getsockname()[0]
        if not address.startswith("127."):
            return str(address)
    output = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=False).stdout
    for address in output.split():
        if "." in address and not address.startswith("127."):
            return address
    raise RuntimeError("no non-loopback IPv4 address: the aggregation layer cannot reach a test server")


@dataclass
class MetricsServerStandIn:
    """Serves PodMetrics for the usage set with ``set_usage``; runs on its own loop in a thread."""

    workdir: Path
    host: str = field(default_factory=host_ip)
    port: int = 0
    requests: list[str] = field(default_factory=list)
    #: How old the samples are when served (seconds; negative: a clock ahead of the API server's).
    sample_age: float = 0.0
    _usage: dict[tuple[str, str], tuple[dict[str, str], str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: BackgroundServer | None = None

    def set_usage(self, namespace: str, pod: str, labels: dict[str, str], cpu: str) -> None:
        with self._lock:
            self._usage[(namespace, pod)] = (labels, cpu)

    def forget(self, namespace: str, pod: str) -> None:
        with self._lock:
            self._usage.pop((namespace, pod), None)

    def start(self) -> MetricsServerStandIn:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cert, key = self.workdir / "tls.crt", self.workdir / "tls.key"
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
                *("-subj", "/CN=metrics-server", "-addext", f"subjectAltName=IP:{self.host}"),
                *("-keyout", str(key), "-out", str(cert)),
            ],
            check=True,
            capture_output=True,
        )
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(cert, key)
        app = web.Application()
        app.router.add_get("/apis/metrics.k8s.io/v1beta1", self._discovery)
        app.router.add_get("/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods", self._list)
        self._server = BackgroundServer(app, name="metrics-server-standin", host=self.host, ssl_context=tls)
        self.port = self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()

    async def _discovery(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": GROUP_VERSION,
                "resources": [
                    {
                        "name": "pods",
                        "singularName": "",
                        "namespaced": True,
                        "kind": "PodMetrics",
                        "verbs": ["get", "list"],
                    }
                ],
            }
        )

    async def _list(self, request: web.Request) -> web.Response:
        namespace = request.match_info["namespace"]
        selector = _parse_selector(request.query.get("labelSelector", ""))
        self.requests.append(f"{namespace}?{request.query_string}")
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        sampled = (datetime.now(UTC) - timedelta(seconds=self.sample_age)).strftime("%Y-%m-%dT%H:%M:%SZ")
        with self._lock:
            chosen = [
                (pod, labels, cpu)
                for (ns, pod), (labels, cpu) in self._usage.items()
                if ns == namespace and all(labels.get(k) == v for k, v in selector.items())
            ]
        items = [
            {
                "metadata": {"name": pod, "namespace": namespace, "labels": labels, "creationTimestamp": now},
                "timestamp": sampled,
                "window": "15s",
                "containers": [{"name": "worker", "usage": {"cpu": cpu, "memory": "64Mi"}}],
            }
            for pod, labels, cpu in chosen
        ]
        return web.json_response(
            {"kind": "PodMetricsList", "apiVersion": GROUP_VERSION, "metadata": {}, "items": items}
        )


def _parse_selector(selector: str) -> dict[str, str]:
    """Equality selectors (``a=b,c==d``), which is all the autoscaler sends."""
    pairs: dict[str, str] = {}
    for term in filter(None, selector.split(",")):
        key, _, value = term.replace("==", "=").partition("=")
        pairs[key.strip()] = value.strip()
    return pairs


@contextlib.contextmanager
def registered(api: k8s.ApiClient, server: MetricsServerStandIn) -> Iterator[str]:
    """Register ``server`` as metrics.k8s.io (Service, Endpoints, APIService); yields its namespace."""
    core = k8s.CoreV1Api(api)
    registration = k8s.ApiregistrationV1Api(api)
    namespace = f"metrics-standin-{uuid.uuid4().hex[:6]}"
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=namespace)))
    try:
        core.create_namespaced_service(
            namespace,
            k8s.V1Service(
                metadata=k8s.V1ObjectMeta(name="metrics-server"),
                spec=k8s.V1ServiceSpec(ports=[k8s.V1ServicePort(port=443, target_port=server.port)]),
            ),
        )
        core.create_namespaced_endpoints(
            namespace,
            k8s.V1Endpoints(
                metadata=k8s.V1ObjectMeta(name="metrics-server"),
                subsets=[
                    k8s.V1EndpointSubset(
                        addresses=[k8s.V1EndpointAddress(ip=server.host)],
                        ports=[k8s.CoreV1EndpointPort(port=server.port)],
                    )
                ],
            ),
        )
        registration.create_api_service(
            k8s.V1APIService(
                metadata=k8s.V1ObjectMeta(name=APISERVICE_NAME),
                spec=k8s.V1APIServiceSpec(
                    group="metrics.k8s.io",
                    version="v1beta1",
                    group_priority_minimum=100,
                    version_priority=100,
                    insecure_skip_tls_verify=True,
                    service=k8s.ApiregistrationV1ServiceReference(namespace=namespace, name="metrics-server", port=443),
                ),
            )
        )
        wait_for(lambda: _available(registration), timeout=60, interval=0.25, what="APIService Available")
        yield namespace
    finally:
        with contextlib.suppress(k8s.ApiException):
            registration.delete_api_service(APISERVICE_NAME)
        wait_for(lambda: _served(api) is False, timeout=30, interval=0.25, what="metrics.k8s.io gone")
        core.delete_namespace(namespace)


def _available(registration: k8s.ApiregistrationV1Api) -> Any:
    service = registration.read_api_service(APISERVICE_NAME)
    conditions = (service.status and service.status.conditions) or []
    return any(c.type == "Available" and c.status == "True" for c in conditions)


def _served(api: k8s.ApiClient) -> bool:
    try:
        api.call_api("/apis/metrics.k8s.io/v1beta1", "GET", auth_settings=["BearerToken"], _preload_content=False)
    except k8s.ApiException:
        return False
    return True
