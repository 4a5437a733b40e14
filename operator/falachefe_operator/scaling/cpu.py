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
#: After a sample's window has passed, the time metrics-server takes to land the next one.
SCRAPE_SLACK_SECONDS = 1.0


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
        #: Per (namespace, selector), the last answer from the shared sources (``_from_shared``).
        self._answers: dict[tuple[str, str], _Answer] = {}

    async def read(self, namespace: str, selector: str) -> CpuSample | MetricUnavailable:
        """The pods' utilisation, or why it cannot be known (never raises for API trouble)."""
        # Both shared sources at hand (the pod watch's index, a fresh metrics reading): no
        # request, so nothing to wait for or time out, and no task per source. This is every
        # poll but the one a namespace's metrics reading is due in.
        shared = self._from_shared(namespace, selector)
        if shared is not None:
            return shared
        try:
            async with responsive_timeout(self._timeout):
                if self._metrics is not None:
                    # The namespace's reading is due: refreshed once for every pool waiting on it
                    # (or its error raised); then, pods in the index, answered and kept as above.
                    await self._metrics.read(namespace)
                    shared = self._from_shared(namespace, selector)
                    if shared is not None:
                        return shared
                pods, usage = await asyncio.gather(
                    self._read_pods(namespace, selector), self._read_usage(namespace, selector)
                )
        except ApiError as error:
            return MetricUnavailable("cpu", _api_error(error, namespace))
        except (aiohttp.ClientError, TimeoutError) as error:
            return MetricUnavailable("cpu", f"API server unreachable: {type(error).__name__}")
        return _pool_utilization(pods, usage)

    def forget(self, namespace: str, selector: str) -> None:
        """Drop what is kept for a pool that is gone."""
        self._answers.pop((namespace, selector), None)

    def _from_shared(self, namespace: str, selector: str) -> CpuSample | MetricUnavailable | None:
        """The answer from the pod index and a fresh metrics reading; None if either has nothing.

        The same pods (the index's namespace unchanged) and the same reading give the same
        answer until a pod's initialization period ends: that answer is kept and given
        again, not worked out anew (at rest, two polls in three of every pool).
        """
        if self._pods is None or self._metrics is None:
            return None
        usage = self._metrics.fresh(namespace)
        if usage is None:
            return None
        version = self._pods.version(namespace)
        now = datetime.now(UTC)
        kept = self._answers.get((namespace, selector))
        if (
            kept is not None
            and kept.usage is usage
            and kept.version == version
            and (kept.until is None or now < kept.until)
        ):
            return kept.result
        pods = self._indexed(namespace, selector)
        if not pods:
            return None
        result, until = _utilization_until(pods, usage, now)
        self._answers[(namespace, selector)] = _Answer(usage, version, until, result)
        return result

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


@dataclass(frozen=True, slots=True)
class _Answer:
    """A pool's utilisation from one metrics reading and one state of the pod index."""

    usage: Mapping[str, PodUsage]  # the reading's samples of the namespace (compared by identity)
    version: int  # the pod index's version of the namespace
    until: datetime | None  # when a pod's initialization period ends and the answer may change
    result: CpuSample | MetricUnavailable


@dataclass
class _Reading:
    #: Until when (the cache's clock) it is served without asking again.
    fresh_until: float
    items: dict[str, dict[str, PodUsage]] | None = None  # by namespace, then pod name
    error: BaseException | None = None


class PodMetricsCache:
    """metrics.k8s.io read once per scope while its samples are current, shared by every pool in the scope.

    The scope is the whole cluster when the operator watches every
    namespace (one request for all its pods), else each namespace. A
    failed read is shared too, for ``max_age_seconds``: a metrics server
    that is down is asked once per interval, not once per pool.

    A reading is served until metrics-server can have newer samples: it
    samples every kubelet once per resolution (15 s by default) and each
    PodMetrics says when (``timestamp``) and over what ``window``, so the
    newest sample's timestamp plus its window (plus a second for the
    scrape to land) is when asking again can find something new. Never
    less than ``max_age_seconds`` (a server whose samples are late, or a
    clock behind ours, is asked at that pace) nor more than one window
    ahead of now (a clock ahead of ours). Asking every 5 s, as every poll
    would, reads each sample three times over.
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
        """The scope's last reading (a failure included) while it is fresh."""
        reading = self._readings.get(scope)
        return reading if reading is not None and self._clock() < reading.fresh_until else None

    async def _fetch(self, scope: str) -> _Reading:
        path = f"/apis/{METRICS_GROUP}/{METRICS_VERSION}" + (f"/namespaces/{scope}" if scope else "") + "/pods"
        params = {"labelSelector": self._selector} if self._selector else None
        try:
            _, body = await self._api.request("GET", path, params=params)
        except (ApiError, aiohttp.ClientError, TimeoutError) as error:
            return _Reading(self._clock() + self._max_age, error=error)
        # Parsed once per reading, not in every poll of every pool that reads it.
        by_namespace: dict[str, list[Mapping[str, Any]]] = {}
        for item in body.get("items") or []:
            by_namespace.setdefault(str((item.get("metadata") or {}).get("namespace", scope)), []).append(item)
        items = {ns: _usage_by_pod(found) for ns, found in by_namespace.items()}
        return _Reading(self._clock() + self._served_for(items), items=items)

    def _served_for(self, items: Mapping[str, Mapping[str, PodUsage]]) -> float:
        """Seconds until metrics-server can have samples newer than these (see the class)."""
        samples = (usage.sampled for pods in items.values() for usage in pods.values() if usage.sampled)
        newest = max(samples, default=None)
        if newest is None:
            return self._max_age
        sampled_at, window = newest
        due = (sampled_at + window - datetime.now(UTC)).total_seconds() + SCRAPE_SLACK_SECONDS
        return max(self._max_age, min(due, window.total_seconds() + SCRAPE_SLACK_SECONDS))


@dataclass(frozen=True, slots=True)
class PodUsage:
    """A pod's PodMetrics sample, parsed: its containers' CPU (cores), and its timestamp and window if it says them."""

    cpu: Decimal
    sampled: tuple[datetime, timedelta] | None = None

    @property
    def window_start(self) -> datetime | None:
        """When the sample's measuring window began (its timestamp minus its window)."""
        return self.sampled[0] - self.sampled[1] if self.sampled else None


def _pod_usage(item: Mapping[str, Any]) -> PodUsage:
    containers = item.get("containers") or []
    cpu = sum((parse_quantity(c.get("usage", {}).get("cpu", "0")) for c in containers), Decimal(0))
    return PodUsage(cpu, _sampled(item))


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
    return _utilization_until(pods, usage, datetime.now(UTC))[0]


def utilization(
    pods: list[Mapping[str, Any]], pod_metrics: list[Mapping[str, Any]], now: datetime | None = None
) -> CpuSample | MetricUnavailable:
    """The HPA's grouping and ratio, from the pods and their PodMetrics (both as the API returns them)."""
    return _utilization_until(pods, _usage_by_pod(pod_metrics), now or datetime.now(UTC))[0]


def _utilization_until(
    pods: list[Mapping[str, Any]], usage_by_pod: Mapping[str, PodUsage], now: datetime
) -> tuple[CpuSample | MetricUnavailable, datetime | None]:
    """The utilisation, and until when the same pods and samples give it (None: for as long as they stay)."""
    until: datetime | None = None
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
        if _ready_since(status) is None or sample is None:
            unaccounted += 1
            continue
        starting_until = _starting_until(status, sample.window_start, now)
        if starting_until is not None:
            until = starting_until if until is None else min(until, starting_until)
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
                ), until
            pod_request += _request_quantity(request)
        if pod_request <= 0:
            return MetricUnavailable("cpu", f"pod {name} requests no CPU"), until
        usage += sample.cpu
        requests += pod_request
        ready_pods += 1
    ratio = float(usage / requests) if requests > 0 else 0.0
    return CpuSample(utilization=ratio, ready_pods=ready_pods, unaccounted_pods=unaccounted), until


def _ready_since(status: Mapping[str, Any]) -> datetime | None:
    """When the pod became Ready (its condition's lastTransitionTime), or None if it is not."""
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Ready" and condition.get("status") == "True":
            return _timestamp(condition.get("lastTransitionTime")) or datetime.min.replace(tzinfo=UTC)
    return None


def _starting_until(status: Mapping[str, Any], window_start: datetime | None, now: datetime) -> datetime | None:
    """If this Ready pod's sample is from before it was Ready, within its initialization period: when that ends.

    None: the sample counts.
    """
    started = _timestamp(status.get("startTime"))
    ready_since = _ready_since(status)
    if started is None or ready_since is None or window_start is None:
        return None
    ends = started + CPU_INITIALIZATION_PERIOD
    return ends if now < ends and window_start < ready_since else None


def _sampled(item: Mapping[str, Any]) -> tuple[datetime, timedelta] | None:
    """A PodMetrics sample's timestamp and measuring window, or None without a timestamp."""
    timestamp = _timestamp(item.get("timestamp"))
    if timestamp is None:
        return None
    window = DEFAULT_METRIC_WINDOW
    raw_window = str(item.get("window") or "")
    if raw_window.endswith("s"):
        with contextlib.suppress(ValueError):
            window = timedelta(seconds=float(raw_window[:-1]))
    return timestamp, window


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
