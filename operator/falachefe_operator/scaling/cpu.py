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
import functools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp

from ..kubeapi import ApiError, KubeApi
from ..podindex import PodIndex, parse_selector
from ..quantity import parse_quantity
from .deadline import responsive_timeout
from .observation import CpuSample, MetricUnavailable

METRICS_GROUP = "metrics.k8s.io"
METRICS_VERSION = "v1beta1"

#: The HPA's --horizontal-pod-autoscaler-cpu-initialization-period default.
CPU_INITIALIZATION_PERIOD = timedelta(minutes=5)
#: metrics-server's default resolution, when a sample does not say its window.
DEFAULT_METRIC_WINDOW = timedelta(seconds=15)


class CpuReader:
    """Reads a pool's CPU utilisation; optionally from shared sources instead of two requests per poll.

    ``pods``: the operator's pod index (its pod watch); without it, or while
    it holds none of the pool's pods, they are listed. ``metrics``: a
    ``PodMetricsCache`` shared by every pool; without it, each read asks
    metrics.k8s.io for the pool's pods alone.
    """

    def __init__(
        self,
        api: KubeApi,
        *,
        timeout_seconds: float = 10.0,
        pods: PodIndex | None = None,
        metrics: PodMetricsCache | None = None,
    ) -> None:
        self._api = api
        self._timeout = timeout_seconds
        self._pods = pods
        self._metrics = metrics

    async def read(self, namespace: str, selector: str) -> CpuSample | MetricUnavailable:
        """The pods' utilisation, or why it cannot be known (never raises for API trouble)."""
        # Both shared sources at hand (the pod watch's index, a fresh metrics reading): no
        # request, so nothing to wait for or time out, and no task per source. This is every
        # poll but the one a namespace's metrics reading is due in.
        pods = self._indexed(namespace, selector)
        usage = self._metrics.fresh(namespace) if self._metrics is not None and pods else None
        if pods and usage is not None:
            return _pool_utilization(pods, usage)
        try:
            async with responsive_timeout(self._timeout):
                pods, usage = await asyncio.gather(
                    self._read_pods(namespace, selector), self._read_usage(namespace, selector)
                )
        except ApiError as error:
            return MetricUnavailable("cpu", _api_error(error, namespace))
        except (aiohttp.ClientError, TimeoutError) as error:
            return MetricUnavailable("cpu", f"API server unreachable: {type(error).__name__}")
        return _pool_utilization(pods, usage)

    def _indexed(self, namespace: str, selector: str) -> list[Mapping[str, Any]]:
        """The pool's pods from the pod watch's index; [] without one, or while it holds none of them."""
        if self._pods is None:
            return []
        return list(self._pods.select(namespace, parse_selector(selector)))

    async def _read_pods(self, namespace: str, selector: str) -> list[Mapping[str, Any]]:
        if indexed := self._indexed(namespace, selector):
            return indexed
        _, listed = await self._api.request(
            "GET", f"/api/v1/namespaces/{namespace}/pods", params={"labelSelector": selector}
        )
        return list(listed.get("items") or [])

    async def _read_usage(self, namespace: str, selector: str) -> Mapping[str, PodUsage]:
        """PodMetrics by pod name."""
        if self._metrics is not None:
            return await self._metrics.read(namespace)
        _, usage = await self._api.request(
            "GET",
            f"/apis/{METRICS_GROUP}/{METRICS_VERSION}/namespaces/{namespace}/pods",
            params={"labelSelector": selector},
        )
        return _usage_by_pod(usage.get("items") or [])


@dataclass
class _Reading:
    at: float
    items: dict[str, dict[str, PodUsage]] | None = None  # by namespace, then pod name
    error: BaseException | None = None


class PodMetricsCache:
    """metrics.k8s.io read once per scope per ``max_age_seconds``, shared by every pool in the scope.

    The scope is the whole cluster when the operator watches every
    namespace (one request for all its pods), else each namespace. A
    failed read is shared too, for the same time: a metrics server that is
    down is asked once per interval, not once per pool. metrics-server
    refreshes its samples every 15 s by default, so a few seconds of
    sharing lose nothing.
    """

    def __init__(
        self,
        api: KubeApi,
        *,
        all_namespaces: bool,
        max_age_seconds: float = 5.0,
        selector: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self._all = all_namespaces
        self._max_age = max_age_seconds
        self._selector = selector
        self._clock = clock
        self._readings: dict[str, _Reading] = {}
        self._inflight: dict[str, asyncio.Task[_Reading]] = {}

    async def read(self, namespace: str) -> Mapping[str, PodUsage]:
        """The PodMetrics of ``namespace``'s pods by name (raises the read's error, as a direct read would)."""
        scope = self._scope(namespace)
        reading = self._fresh_reading(scope)
        if reading is None:
            task = self._inflight.get(scope)
            if task is None:
                task = asyncio.create_task(self._fetch(scope))
                self._inflight[scope] = task
                task.add_done_callback(lambda _: self._inflight.pop(scope, None))
            reading = await asyncio.shield(task)
            self._readings[scope] = reading
        if reading.error is not None:
            raise reading.error
        return (reading.items or {}).get(namespace, {})

    def fresh(self, namespace: str) -> Mapping[str, PodUsage] | None:
        """What ``read`` would return without waiting, if a reading of the scope is fresh and succeeded; else None."""
        reading = self._fresh_reading(self._scope(namespace))
        if reading is None or reading.error is not None:
            return None
        return (reading.items or {}).get(namespace, {})

    def _scope(self, namespace: str) -> str:
        return "" if self._all else namespace

    def _fresh_reading(self, scope: str) -> _Reading | None:
        """The scope's last reading (a failure included) if younger than ``max_age_seconds``."""
        reading = self._readings.get(scope)
        return reading if reading is not None and self._clock() - reading.at < self._max_age else None

    async def _fetch(self, scope: str) -> _Reading:
        path = f"/apis/{METRICS_GROUP}/{METRICS_VERSION}" + (f"/namespaces/{scope}" if scope else "") + "/pods"
        params = {"labelSelector": self._selector} if self._selector else None
        try:
            _, body = await self._api.request("GET", path, params=params)
        except (ApiError, aiohttp.ClientError, TimeoutError) as error:
            return _Reading(self._clock(), error=error)
        # Parsed once per reading, not in every poll of every pool that reads it.
        by_namespace: dict[str, list[Mapping[str, Any]]] = {}
        for item in body.get("items") or []:
            by_namespace.setdefault(str((item.get("metadata") or {}).get("namespace", scope)), []).append(item)
        return _Reading(self._clock(), items={ns: _usage_by_pod(found) for ns, found in by_namespace.items()})


@dataclass(frozen=True, slots=True)
class PodUsage:
    """A pod's PodMetrics sample, parsed: its containers' CPU (cores) and when the sample's window began."""

    cpu: Decimal
    window_start: datetime | None


def _pod_usage(item: Mapping[str, Any]) -> PodUsage:
    containers = item.get("containers") or []
    cpu = sum((parse_quantity(c.get("usage", {}).get("cpu", "0")) for c in containers), Decimal(0))
    return PodUsage(cpu, _window_start(item))


def _usage_by_pod(pod_metrics: list[Mapping[str, Any]]) -> dict[str, PodUsage]:
    """PodMetrics by pod name; a sample whose CPU does not parse is left out (its pod counts as unmeasured)."""
    usage: dict[str, PodUsage] = {}
    for item in pod_metrics:
        name = (item.get("metadata") or {}).get("name")
        if name:
            with contextlib.suppress(ValueError):
                usage[str(name)] = _pod_usage(item)
    return usage


def _pool_utilization(pods: list[Mapping[str, Any]], usage: Mapping[str, PodUsage]) -> CpuSample | MetricUnavailable:
    # Looked up by the pool's pod names: a shared reading holds every pod of the namespace.
    return _utilization(pods, usage, datetime.now(UTC))


def utilization(
    pods: list[Mapping[str, Any]], pod_metrics: list[Mapping[str, Any]], now: datetime | None = None
) -> CpuSample | MetricUnavailable:
    """The HPA's grouping and ratio, from the pods and their PodMetrics (both as the API returns them)."""
    return _utilization(pods, _usage_by_pod(pod_metrics), now or datetime.now(UTC))


def _utilization(
    pods: list[Mapping[str, Any]], usage_by_pod: Mapping[str, PodUsage], now: datetime
) -> CpuSample | MetricUnavailable:
    usage = Decimal(0)
    requests = Decimal(0)
    ready_pods = 0
    unaccounted = 0
    for pod in pods:
        metadata, status = pod.get("metadata") or {}, pod.get("status") or {}
        name = str(metadata.get("name", ""))
        if metadata.get("deletionTimestamp") or status.get("phase") in {"Succeeded", "Failed"}:
            continue
        sample = usage_by_pod.get(name)
        if _ready_since(status) is None or sample is None or _sampled_while_starting(status, sample.window_start, now):
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
            pod_request += _request_quantity(request)
        if pod_request <= 0:
            return MetricUnavailable("cpu", f"pod {name} requests no CPU")
        usage += sample.cpu
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


#: A pod's CPU request, as every poll of its pool reads it (a handful of distinct values).
_request_quantity = functools.lru_cache(maxsize=1024)(parse_quantity)


def _timestamp(raw: object) -> datetime | None:
    """An RFC 3339 time from the API (always UTC there), or None."""
    if not raw:
        return None
    return _parsed_time(str(raw))


@functools.lru_cache(maxsize=16384)
def _parsed_time(raw: str) -> datetime | None:
    """A pod's start and Ready times are read on every poll of its pool: parsed once."""
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
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
