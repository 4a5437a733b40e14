"""CPU utilisation of a pool's pods against their requests, as the HPA computes it.

Two reads, made concurrently: the pods (their CPU requests and Ready
condition) from the core API, and their usage from ``metrics.k8s.io``
(metrics-server, or any other server registered behind that APIService).
Utilisation is sum(usage) / sum(requests) over the pods that are Ready and
have a usage sample; pods that are starting, or Ready but not yet sampled,
are reported as unaccounted rather than idle. Terminating and finished pods
are left out altogether.

Start-up is busy (imports, pool warm-up), so like the HPA's CPU
initialization period: during a pod's first five minutes, a sample whose
window began before the pod became Ready measures its start-up, not its
load, and the pod counts as starting. Without this, every new pod would
look overloaded and trigger the next scale-up.

The ``kubernetes`` client is synchronous, so both calls run in threads and
the event loop (Kopf's) never blocks on the API server.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from kubernetes.utils import parse_quantity
from urllib3.exceptions import HTTPError

from .observation import CpuSample, MetricUnavailable

METRICS_GROUP = "metrics.k8s.io"
METRICS_VERSION = "v1beta1"

#: The HPA's --horizontal-pod-autoscaler-cpu-initialization-period default.
CPU_INITIALIZATION_PERIOD = timedelta(minutes=5)
#: metrics-server's default resolution, when a sample does not say its window.
DEFAULT_METRIC_WINDOW = timedelta(seconds=15)


class CpuReader:
    def __init__(self, api: k8s.ApiClient, *, timeout_seconds: float = 10.0) -> None:
        self._core = k8s.CoreV1Api(api)
        self._custom = k8s.CustomObjectsApi(api)
        self._timeout = timeout_seconds

    async def read(self, namespace: str, selector: str) -> CpuSample | MetricUnavailable:
        """The pods' utilisation, or why it cannot be known (never raises for API trouble)."""
        try:
            pods, usage = await asyncio.gather(
                asyncio.to_thread(
                    self._core.list_namespaced_pod,
                    namespace,
                    label_selector=selector,
                    _request_timeout=self._timeout,
                ),
                asyncio.to_thread(
                    self._custom.list_namespaced_custom_object,
                    METRICS_GROUP,
                    METRICS_VERSION,
                    namespace,
                    "pods",
                    label_selector=selector,
                    _request_timeout=self._timeout,
                ),
            )
        except ApiException as error:
            return MetricUnavailable("cpu", _api_error(error, namespace))
        except (HTTPError, OSError, TimeoutError) as error:
            return MetricUnavailable("cpu", f"API server unreachable: {type(error).__name__}: {error}")
        return utilization(pods.items, usage.get("items", []))


def utilization(
    pods: list[Any], pod_metrics: list[dict[str, Any]], now: datetime | None = None
) -> CpuSample | MetricUnavailable:
    """The HPA's grouping and ratio, from the pods (V1Pod) and their PodMetrics."""
    now = now or datetime.now(UTC)
    usage_by_pod: dict[str, Decimal] = {}
    window_start_by_pod: dict[str, datetime] = {}
    for item in pod_metrics:
        name = item.get("metadata", {}).get("name")
        containers = item.get("containers") or []
        if name:
            usage_by_pod[name] = sum(
                (parse_quantity(c.get("usage", {}).get("cpu", "0")) for c in containers), Decimal(0)
            )
            window_start = _window_start(item)
            if window_start is not None:
                window_start_by_pod[name] = window_start

    usage = Decimal(0)
    requests = Decimal(0)
    ready_pods = 0
    unaccounted = 0
    for pod in pods:
        if pod.metadata.deletion_timestamp is not None or (pod.status and pod.status.phase in {"Succeeded", "Failed"}):
            continue
        if (
            not _is_ready(pod)
            or pod.metadata.name not in usage_by_pod
            or _sampled_while_starting(pod, window_start_by_pod.get(pod.metadata.name), now)
        ):
            unaccounted += 1
            continue
        pod_request = Decimal(0)
        for container in pod.spec.containers:
            request = ((container.resources and container.resources.requests) or {}).get("cpu")
            if request is None:
                return MetricUnavailable(
                    "cpu",
                    f"pod {pod.metadata.name} container {container.name} has no CPU request:"
                    " set resources.requests.cpu on the pool to scale on CPU",
                )
            pod_request += parse_quantity(request)
        if pod_request <= 0:
            return MetricUnavailable("cpu", f"pod {pod.metadata.name} requests no CPU")
        usage += usage_by_pod[pod.metadata.name]
        requests += pod_request
        ready_pods += 1
    ratio = float(usage / requests) if requests > 0 else 0.0
    return CpuSample(utilization=ratio, ready_pods=ready_pods, unaccounted_pods=unaccounted)


def _is_ready(pod: Any) -> bool:
    return _ready_since(pod) is not None


def _ready_since(pod: Any) -> datetime | None:
    """When the pod became Ready (its condition's lastTransitionTime), or None if it is not."""
    conditions = (pod.status and pod.status.conditions) or []
    for condition in conditions:
        if condition.type == "Ready" and condition.status == "True":
            return _aware(condition.last_transition_time) or datetime.min.replace(tzinfo=UTC)
    return None


def _sampled_while_starting(pod: Any, window_start: datetime | None, now: datetime) -> bool:
    """Is this Ready pod's sample from before it was Ready, within its initialization period?"""
    started = _aware(pod.status.start_time) if pod.status else None
    ready_since = _ready_since(pod)
    if started is None or ready_since is None or window_start is None:
        return False
    return now - started < CPU_INITIALIZATION_PERIOD and window_start < ready_since


def _window_start(item: dict[str, Any]) -> datetime | None:
    """When a PodMetrics sample's measuring window began (its timestamp minus its window)."""
    raw = item.get("timestamp")
    if not raw:
        return None
    try:
        timestamp = datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
    except ValueError:
        return None
    window = DEFAULT_METRIC_WINDOW
    raw_window = str(item.get("window") or "")
    if raw_window.endswith("s"):
        with contextlib.suppress(ValueError):
            window = timedelta(seconds=float(raw_window[:-1]))
    return timestamp.replace(tzinfo=timestamp.tzinfo or UTC) - window


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _api_error(error: ApiException, namespace: str) -> str:
    if error.status == 404:
        return f"{METRICS_GROUP}/{METRICS_VERSION} is not served: is metrics-server installed? ({error.reason})"
    if error.status == 403:
        return f"forbidden to list pods or pod metrics in {namespace}: check the operator's RBAC ({error.reason})"
    if error.status == 503:
        return f"{METRICS_GROUP} is registered but not answering (503 {error.reason}): check its APIService"
    return f"API error {error.status} {error.reason}"
