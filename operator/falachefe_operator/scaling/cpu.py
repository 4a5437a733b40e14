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

Both reads go through the operator's one asynchronous client
(``kubeapi.KubeApi``) on the event loop: cancelling a poll cancels its
requests, and nothing is left running in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
from kubernetes.utils import parse_quantity

from ..kubeapi import ApiError, KubeApi
from .observation import CpuSample, MetricUnavailable

METRICS_GROUP = "metrics.k8s.io"
METRICS_VERSION = "v1beta1"

#: The HPA's --horizontal-pod-autoscaler-cpu-initialization-period default.
CPU_INITIALIZATION_PERIOD = timedelta(minutes=5)
#: metrics-server's default resolution, when a sample does not say its window.
DEFAULT_METRIC_WINDOW = timedelta(seconds=15)


class CpuReader:
    def __init__(self, api: KubeApi, *, timeout_seconds: float = 10.0) -> None:
        self._api = api
        self._timeout = timeout_seconds

    async def read(self, namespace: str, selector: str) -> CpuSample | MetricUnavailable:
        """The pods' utilisation, or why it cannot be known (never raises for API trouble)."""
        params = {"labelSelector": selector}
        try:
            async with asyncio.timeout(self._timeout):
                (_, pods), (_, usage) = await asyncio.gather(
                    self._api.request("GET", f"/api/v1/namespaces/{namespace}/pods", params=params),
                    self._api.request(
                        "GET", f"/apis/{METRICS_GROUP}/{METRICS_VERSION}/namespaces/{namespace}/pods", params=params
                    ),
                )
        except ApiError as error:
            return MetricUnavailable("cpu", _api_error(error, namespace))
        except (aiohttp.ClientError, TimeoutError) as error:
            return MetricUnavailable("cpu", f"API server unreachable: {type(error).__name__}")
        return utilization(pods.get("items") or [], usage.get("items") or [])


def utilization(
    pods: list[Mapping[str, Any]], pod_metrics: list[Mapping[str, Any]], now: datetime | None = None
) -> CpuSample | MetricUnavailable:
    """The HPA's grouping and ratio, from the pods and their PodMetrics (both as the API returns them)."""
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
        metadata, status = pod.get("metadata") or {}, pod.get("status") or {}
        name = str(metadata.get("name", ""))
        if metadata.get("deletionTimestamp") or status.get("phase") in {"Succeeded", "Failed"}:
            continue
        if (
            _ready_since(status) is None
            or name not in usage_by_pod
            or _sampled_while_starting(status, window_start_by_pod.get(name), now)
        ):
            unaccounted += 1
            continue
        pod_request = Decimal(0)
        for container in (pod.get("spec") or {}).get("containers") or []:
            request = ((container.get("resources") or {}).get("requests") or {}).get("cpu")
            if request is None:
                return MetricUnavailable(
                    "cpu",
                    f"pod {name} container {container.get('name')} has no CPU request:"
                    " set resources.requests.cpu on the pool to scale on CPU",
                )
            pod_request += parse_quantity(request)
        if pod_request <= 0:
            return MetricUnavailable("cpu", f"pod {name} requests no CPU")
        usage += usage_by_pod[name]
        requests += pod_request
        ready_pods += 1
    ratio = float(usage / requests) if requests > 0 else 0.0
    return CpuSample(utilization=ratio, ready_pods=ready_pods, unaccounted_pods=unaccounted)


def _ready_since(status: Mapping[str, Any]) -> datetime | None:
    """When the pod became Ready (its condition's lastTransitionTime), or None if it is not."""
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Ready" and condition.get("status") == "True":
            return _timestamp(condition.get("lastTransitionTime")) or datetime.min.replace(tzinfo=UTC)
    return None


def _sampled_while_starting(status: Mapping[str, Any], window_start: datetime | None, now: datetime) -> bool:
    """Is this Ready pod's sample from before it was Ready, within its initialization period?"""
    started = _timestamp(status.get("startTime"))
    ready_since = _ready_since(status)
    if started is None or ready_since is None or window_start is None:
        return False
    return now - started < CPU_INITIALIZATION_PERIOD and window_start < ready_since


def _window_start(item: Mapping[str, Any]) -> datetime | None:
    """When a PodMetrics sample's measuring window began (its timestamp minus its window)."""
    timestamp = _timestamp(item.get("timestamp"))
    if timestamp is None:
        return None
    window = DEFAULT_METRIC_WINDOW
    raw_window = str(item.get("window") or "")
    if raw_window.endswith("s"):
        with contextlib.suppress(ValueError):
            window = timedelta(seconds=float(raw_window[:-1]))
    return timestamp - window


def _timestamp(raw: object) -> datetime | None:
    """An RFC 3339 time from the API (always UTC there), or None."""
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _api_error(error: ApiError, namespace: str) -> str:
    if error.status == 404:
        return f"{METRICS_GROUP}/{METRICS_VERSION} is not served: is metrics-server installed? ({error.reason})"
    if error.status == 403:
        return f"forbidden to list pods or pod metrics in {namespace}: check the operator's RBAC ({error.reason})"
    if error.status == 503:
        return f"{METRICS_GROUP} is registered but not answering (503 {error.reason}): check its APIService"
    return f"API error {error.status} {error.reason}"
