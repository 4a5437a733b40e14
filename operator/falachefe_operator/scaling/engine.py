"""The autoscaler's loop body: one pool, one poll, per ``step()``.

The operator's per-resource daemon calls ``Autoscaler.step`` for each pool
every polling interval and writes the returned ``StepOutcome`` into the
resource's status and Events; the engine keeps each pool's history (the
stabilization windows and rate limits need it) between calls.

A step:

1. takes the Deployment as the operator's watch last showed it (a GET only
   when the watch has not shown it yet): ``spec.replicas`` is the current
   size (what its scale subresource reports), ``status.readyReplicas`` the
   ready one;
2. reads the queue counts (Redis) and, if the policy targets CPU and a pod
   is Ready, the pods' utilisation (the pod watch's index and
   metrics.k8s.io, read once per namespace or cluster per interval and
   shared), concurrently;
3. decides (``decision.decide``, pure);
4. before lowering the size, sets each pod's ``pod-deletion-cost`` to the
   jobs it holds, so the ReplicaSet controller removes idle pods first
   (``deletion_cost``);
5. when the decision differs from the current size, writes ``spec.replicas``
   through the Deployment's *scale subresource* as a compare-and-swap (a
   JSON patch that tests the size read in 1), so a concurrent resize (a
   person's ``kubectl scale``) makes the write fail and the next poll
   decides again on fresh numbers, while status churn does not. The operator's server-side
   apply leaves ``replicas`` alone after creation, so the two never fight.

Nothing here raises for a metric source or the API server being down: the
outcome says so, and the pool keeps its size. Every request goes through the
operator's one asynchronous client (``kubeapi.KubeApi``), so cancelling a
step (the operator lost its leadership) cancels its requests: no scale is
left to be sent later from a thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from ..kubeapi import ApiError, KubeApi
from ..podindex import PodIndex
from .cpu import CpuReader, PodMetricsCache
from .deadline import responsive_timeout
from .decision import Decision, decide
from .deletion_cost import mark_busy_pods
from .history import History
from .metrics import ScalingMetrics, default_metrics
from .observation import CpuSample, MetricUnavailable, Observation, QueueCounts
from .outages import Failing, Transition, track
from .policy import ScalingPolicy
from .queue import QueueReader, QueueRef

#: What a request to the API server may fail with: reported, never raised.
_API_TROUBLE = (ApiError, aiohttp.ClientError, TimeoutError)
JSON_PATCH = "application/json-patch+json"
#: Polls in a row a metric source must fail before its outage is announced
#: (a Warning Event, and a Normal one when it is back): 10-15 s at the
#: default interval. The pool holds its size from the first failed poll.
OUTAGE_POLLS = 3


@dataclass(frozen=True)
class PoolTarget:
    """One worker pool to scale, as the operator knows it from the resource's spec."""

    namespace: str
    falachefe: str  # the custom resource's name
    pool: str  # the pool's key in spec.pools (auth, crew, ...)
    deployment: str
    policy: ScalingPolicy
    queue: QueueRef
    selector: str  # the pool's pods, e.g. "app.kubernetes.io/instance=x,falachefe.io/pool=auth"
    concurrency: int  # jobs one replica runs at once

    @property
    def labels(self) -> tuple[str, str, str]:
        return (self.namespace, self.falachefe, self.pool)


@dataclass(frozen=True)
class StepOutcome:
    """What one poll saw and did, for the resource's status and Events.

    ``current``, ``ready`` and ``desired`` are None only when the Deployment
    itself could not be read (``message`` says why).
    """

    current: int | None
    ready: int | None
    desired: int | None
    scaled: bool
    direction: str | None  # "up", "down", or None
    reason: str
    metrics_available: bool
    message: str = ""  # unavailable sources and errors, "" when all went well
    queue: QueueCounts | None = None
    cpu: CpuSample | None = None
    decision: Decision | None = field(default=None, repr=False)
    #: Metric sources that stopped answering, or answered again, in this poll.
    transitions: tuple[Transition, ...] = ()

    @property
    def queue_depth(self) -> int | None:
        return self.queue.backlog if self.queue is not None else None

    @property
    def cpu_utilization(self) -> float | None:
        return self.cpu.utilization if self.cpu is not None and self.cpu.ready_pods > 0 else None


class Autoscaler:
    """Holds every pool's history; ``step`` scales one pool once."""

    def __init__(
        self,
        api: KubeApi,
        *,
        metrics: ScalingMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        timeout_seconds: float = 10.0,
        pods: PodIndex | None = None,
        pod_metrics: PodMetricsCache | None = None,
    ) -> None:
        self._api = api
        self._queues = QueueReader(timeout_seconds=min(timeout_seconds, 3.0))
        self._cpu = CpuReader(api, timeout_seconds=timeout_seconds, pods=pods, metrics=pod_metrics)
        self._metrics = metrics if metrics is not None else default_metrics()
        self._clock = clock
        self._timeout = timeout_seconds
        self._histories: dict[tuple[str, str, str], History] = {}
        #: Per pool, the metric sources down and since when (this engine's clock).
        self._outages: dict[tuple[str, str, str], dict[str, Failing]] = {}
        self._locks: dict[tuple[str, str, str], asyncio.Lock] = {}

    async def step(self, target: PoolTarget, deployment: Mapping[str, Any] | None = None) -> StepOutcome:
        """Read, decide and (maybe) scale ``target`` once. Never raises for I/O trouble.

        ``deployment``: the pool's Deployment as the caller's watch shows it
        (``spec.replicas``, ``status.readyReplicas``); None to have it read.
        A stale one costs nothing but a poll: the scale is a compare-and-swap
        on the replicas it was decided from.
        """
        lock = self._locks.setdefault(target.labels, asyncio.Lock())
        async with lock:
            self._metrics.polled(target.labels)
            with self._metrics.step_seconds.time():
                return await self._step(target, deployment)

    def forget(self, target: PoolTarget) -> None:
        """Drop a pool's history and series (its resource or pool was deleted)."""
        self._histories.pop(target.labels, None)
        self._outages.pop(target.labels, None)
        self._locks.pop(target.labels, None)
        self._cpu.forget(target.namespace, target.selector)
        self._metrics.forget(target.labels)

    async def aclose(self) -> None:
        await self._queues.aclose()

    async def _step(self, target: PoolTarget, watched: Mapping[str, Any] | None) -> StepOutcome:
        where = f"Deployment {target.namespace}/{target.deployment}"
        try:
            deployment = watched if watched is not None else await self._read_deployment(target)
        except _API_TROUBLE as error:
            self._metrics.child(self._metrics.step_errors, target.labels).inc()
            message = f"{where} unreadable: {_describe(error)}"
            return StepOutcome(None, None, None, False, None, message, metrics_available=False, message=message)
        current = int((deployment.get("spec") or {}).get("replicas", 1))
        ready = int((deployment.get("status") or {}).get("readyReplicas", 0))

        observation, answered = await self._observe(target, current, ready)
        now = self._clock()
        self._outages[target.labels], transitions = track(
            self._outages.get(target.labels, {}),
            unavailable=observation.unavailable,
            answered=answered,
            now=now,
            threshold=OUTAGE_POLLS,
        )
        decision = decide(target.policy, observation, self._histories.get(target.labels, History()), now)
        history = decision.history
        messages = [str(u) for u in observation.unavailable]
        scaled = False
        if decision.desired_replicas < current:
            unmarked = await mark_busy_pods(
                self._api,
                self._queues,
                namespace=target.namespace,
                selector=target.selector,
                queue=target.queue,
                timeout=self._timeout,
            )
            if unmarked is not None:
                messages.append(f"{where}: {unmarked}")
        if decision.desired_replicas != current:
            problem = await self._scale(target, current, decision.desired_replicas)
            if problem is None:
                scaled = True
                history = history.scaled(now, current, decision.desired_replicas)
                self._metrics.child(self._metrics.scale_actions, (*target.labels, decision.direction or "")).inc()
            else:
                self._metrics.child(self._metrics.step_errors, target.labels).inc()
                messages.append(f"{where}: scale to {decision.desired_replicas} failed: {problem}")
        self._histories[target.labels] = history
        self._metrics.observe(target.labels, observation, decision, target.policy)
        return StepOutcome(
            current=current,
            ready=ready,
            desired=decision.desired_replicas,
            scaled=scaled,
            direction=decision.direction,
            reason=decision.reason,
            metrics_available=not observation.unavailable,
            message="; ".join(messages),
            queue=observation.queue,
            cpu=observation.cpu,
            decision=decision,
            transitions=transitions,
        )

    async def _observe(self, target: PoolTarget, current: int, ready: int) -> tuple[Observation, list[str]]:
        """What the sources said, and which of them answered."""
        # Sent off first and awaited last: the two reads run concurrently with no task for either
        # (the CPU read, from the pod index and a shared metrics reading, most often awaits nothing).
        queue_read = self._queues.submit(target.queue)
        cpu_result: CpuSample | MetricUnavailable | None
        if target.policy.target_cpu_utilization_percentage is None:
            cpu_result = None
        elif current == 0:
            # No pods, nothing to measure; not a missing metric.
            cpu_result = CpuSample(0.0, 0)
        elif ready == 0:
            # None Ready yet (the Deployment's status): utilisation counts Ready pods only, so
            # there is nothing to measure, and each pod counts as starting, as a read would find.
            # No request per poll while a pool starts (its pods may not even exist yet).
            cpu_result = CpuSample(0.0, 0, unaccounted_pods=current)
        else:
            try:
                cpu_result = await self._cpu.read(target.namespace, target.selector)
            except BaseException:
                queue_read.cancel()  # this step is abandoned; its batch answers only the reads still waiting
                raise
        queue_result = await queue_read
        unavailable = tuple(r for r in (queue_result, cpu_result) if isinstance(r, MetricUnavailable))
        answered = [
            source
            for source, result in (("queue", queue_result), ("cpu", cpu_result if current and ready else None))
            if isinstance(result, QueueCounts | CpuSample)
        ]
        observation = Observation(
            current_replicas=current,
            ready_replicas=ready,
            concurrency=target.concurrency,
            queue=queue_result if isinstance(queue_result, QueueCounts) else None,
            cpu=cpu_result if isinstance(cpu_result, CpuSample) else None,
            unavailable=unavailable,
        )
        return observation, answered

    async def _scale(self, target: PoolTarget, current: int, replicas: int) -> str | None:
        """Write spec.replicas through the scale subresource; the problem, or None.

        A compare-and-swap on ``spec.replicas`` alone: a JSON patch that
        first tests the value the decision was made from. Status updates
        (pods becoming ready) do not disturb it, as a resourceVersion guard
        would while a Deployment is rolling; a resize by someone else since
        the decision makes the test fail, and their size stands until the
        next poll.
        """
        # A Scale of 0 replicas serializes its spec as {} (omitempty): test the
        # whole spec, and "add" (which also replaces) the member.
        patch = [
            {"op": "test", "path": "/spec", "value": {"replicas": current} if current else {}},
            {"op": "add", "path": "/spec/replicas", "value": replicas},
        ]
        try:
            async with responsive_timeout(self._timeout):
                await self._api.request("PATCH", f"{_path(target)}/scale", body=patch, content_type=JSON_PATCH)
            return None
        except ApiError as error:
            if error.status not in {409, 422}:
                return _describe(error)
        except (aiohttp.ClientError, TimeoutError) as error:
            return _describe(error)
        try:
            fresh = await self._read_deployment(target)
        except _API_TROUBLE as error:
            return _describe(error)
        replicas = (fresh.get("spec") or {}).get("replicas", 0)
        return f"replicas changed concurrently to {replicas}; deciding again next poll"

    async def _read_deployment(self, target: PoolTarget) -> dict[str, Any]:
        async with responsive_timeout(self._timeout):
            return (await self._api.request("GET", _path(target)))[1]


def _path(target: PoolTarget) -> str:
    return f"/apis/apps/v1/namespaces/{target.namespace}/deployments/{target.deployment}"


def _describe(error: BaseException) -> str:
    if isinstance(error, ApiError):
        return f"API error {error.status} {error.reason}"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
