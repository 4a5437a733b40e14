"""Prometheus series for every input and output of the autoscaler, per pool.

Labels are ``namespace``, ``falachefe`` (the custom resource's name) and
``pool``, so a dashboard can put a pool's queue depth, CPU and replicas on
one graph. A gauge whose input was unavailable in the last poll is removed
rather than left at a stale value; ``falachefe_operator_pool_metrics_available``
says which.

The operator is the one exporter of queue depth: every worker replica of a
pool would report the same queue, and a sum over pods would count it once
per replica. Arrivals and completions are counters (``rate()`` them over
any window), counted between successive polls the way the autoscaler's own
rates are (``rates.flow``).

The per-pool gauges are not prometheus_client ``Gauge`` children: each
child holds its own lock and value object, and 1,000 resources have about
32,000 of them (measured with tracemalloc: 30 MiB with the counters and
histograms). Each pool keeps one immutable snapshot of its last poll instead,
and a collector turns the snapshots into the same series when Prometheus
scrapes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from functools import cache
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .decision import Decision
from .observation import Observation, QueueCounts
from .policy import ScalingPolicy
from .rates import QueueSample, flow

POOL_LABELS = ("namespace", "falachefe", "pool")
QUEUE_STATES = ("waiting", "prioritized", "delayed_due", "delayed_pending", "active")


#: The per-pool gauges: name (after ``falachefe_operator_pool_``), help, extra label.
_GAUGES: dict[str, tuple[str, str | None]] = {
    "queue_depth": ("Backlog the pool is sized for: waiting+prioritized+delayed-due+active.", None),
    "queue_jobs": ("Jobs in the pool's bullmq queue, by state.", "state"),
    "cpu_utilization_ratio": ("CPU usage of the pool's ready pods over their requests (1 = as requested).", None),
    "current_replicas": ("spec.replicas of the pool's Deployment.", None),
    "ready_replicas": ("Ready replicas of the pool's Deployment.", None),
    "desired_replicas": ("Replicas the autoscaler decided on.", None),
    "min_replicas": ("The pool's minReplicas: the autoscaler never goes below.", None),
    "max_replicas": ("The pool's maxReplicas: the autoscaler never goes above.", None),
    "proposed_replicas": ("Replicas each metric asked for.", "metric"),
    "metrics_available": ("1 when the source answered in the last poll, else 0.", "source"),
}


@dataclass(frozen=True)
class _PoolGauges:
    """One pool's gauges as its last poll left them; None: the series is absent."""

    queue: QueueCounts | None
    cpu_utilization: float | None
    cpu_available: bool | None  # None: the policy does not target CPU
    current: int
    ready: int
    desired: int
    min_replicas: int
    max_replicas: int
    proposals: tuple[tuple[str, int], ...]


#: Polls of each pool: a counter kept as a plain number, turned into a series at scrape time.
_POLLS = "falachefe_operator_pool_autoscale_polls"


class _PoolGaugeCollector(Collector):
    """Every pool's gauges and poll count, read from their snapshots at scrape time."""

    def __init__(self, pools: dict[tuple[str, str, str], _PoolGauges], polls: dict[tuple[str, str, str], int]) -> None:
        self._pools = pools
        self._polls = polls

    def describe(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield from self._families()
        yield self._poll_family()

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        polls = self._poll_family()
        for labels, count in list(self._polls.items()):
            polls.add_metric(labels, count)
        yield polls
        families = {family.name: family for family in self._families()}

        def add(name: str, labels: tuple[str, ...], value: float) -> None:
            families[f"falachefe_operator_pool_{name}"].add_metric(labels, value)

        for labels, pool in list(self._pools.items()):  # a copy: the event loop may poll meanwhile
            add("metrics_available", (*labels, "queue"), pool.queue is not None)
            if pool.queue is not None:
                add("queue_depth", labels, pool.queue.backlog)
                for state in QUEUE_STATES:
                    add("queue_jobs", (*labels, state), getattr(pool.queue, state))
            if pool.cpu_available is not None:
                add("metrics_available", (*labels, "cpu"), pool.cpu_available)
            if pool.cpu_utilization is not None:
                add("cpu_utilization_ratio", labels, pool.cpu_utilization)
            add("current_replicas", labels, pool.current)
            add("ready_replicas", labels, pool.ready)
            add("desired_replicas", labels, pool.desired)
            add("min_replicas", labels, pool.min_replicas)
            add("max_replicas", labels, pool.max_replicas)
            for metric, replicas in pool.proposals:
                add("proposed_replicas", (*labels, metric), replicas)
        yield from families.values()

    @staticmethod
    def _poll_family() -> CounterMetricFamily:
        return CounterMetricFamily(_POLLS, "Polls of the pool by the autoscaler.", labels=list(POOL_LABELS))

    @staticmethod
    def _families() -> Iterator[GaugeMetricFamily]:
        for name, (documentation, extra) in _GAUGES.items():
            labels = [*POOL_LABELS, extra] if extra else list(POOL_LABELS)
            yield GaugeMetricFamily(f"falachefe_operator_pool_{name}", documentation, labels=labels)


class ScalingMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        #: Per pool, the snapshot its gauges are scraped from (``observe``).
        self._pools: dict[tuple[str, str, str], _PoolGauges] = {}
        #: Per pool, the polls so far (``polled``).
        self._polls: dict[tuple[str, str, str], int] = {}
        registry.register(_PoolGaugeCollector(self._pools, self._polls))
        self.jobs_added = Counter(
            "falachefe_operator_pool_queue_jobs_added_total",
            "Jobs added to the pool's queue, counted between polls.",
            POOL_LABELS,
            registry=registry,
        )
        self.jobs_finished = Counter(
            "falachefe_operator_pool_queue_jobs_finished_total",
            "Jobs that left the pool's queue (completed, or failed with no attempts left), counted between polls.",
            POOL_LABELS,
            registry=registry,
        )
        self.scale_actions = Counter(
            "falachefe_operator_pool_scale_actions_total",
            "Writes of the Deployment's scale subresource, by direction.",
            (*POOL_LABELS, "direction"),
            registry=registry,
        )
        self.step_errors = Counter(
            "falachefe_operator_pool_scale_errors_total",
            "Polls that could not read or write the Deployment.",
            POOL_LABELS,
            registry=registry,
        )
        # One histogram for every pool: a histogram per pool is some fourteen series each
        # (28,000 at 1,000 resources), and a step's time is the operator's, not the pool's.
        self.step_seconds = Histogram(
            "falachefe_operator_autoscale_step_duration_seconds",
            "Time to read the metrics, decide and scale one pool, over every pool.",
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self._last_counts: dict[tuple[str, ...], QueueSample] = {}
        #: Each series' child, as ``labels()`` returned it (validating and
        #: looking up labels costs more than setting the value): dropped with it.
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def child(self, metric: Counter | Histogram, labels: tuple[str, ...]) -> Any:
        """``metric.labels(*labels)``, remembered until the series is dropped."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def polled(self, labels: tuple[str, str, str]) -> None:
        """Count one poll of the pool (whatever came of it)."""
        self._polls[labels] = self._polls.get(labels, 0) + 1

    def observe(
        self, labels: tuple[str, str, str], observation: Observation, decision: Decision, policy: ScalingPolicy
    ) -> None:
        """Publish one poll's inputs, the pool's bounds and the decision."""
        queue = observation.queue
        cpu = observation.cpu
        self._pools[labels] = _PoolGauges(
            queue=queue,
            cpu_utilization=cpu.utilization if cpu is not None and cpu.ready_pods > 0 else None,
            cpu_available=None if policy.target_cpu_utilization_percentage is None else cpu is not None,
            current=observation.current_replicas,
            ready=observation.ready_replicas,
            desired=decision.desired_replicas,
            min_replicas=policy.min_replicas,
            max_replicas=policy.max_replicas,
            proposals=tuple((p.metric, p.replicas) for p in decision.proposals),
        )
        if queue is not None:
            counts = QueueSample.from_counts(0.0, queue)
            before = self._last_counts.get(labels)
            if before is None:
                # Created at zero on the first poll, so the first increase shows in rate().
                self.child(self.jobs_added, labels)
                self.child(self.jobs_finished, labels)
            elif before != counts:
                added, finished = flow(before, counts)
                self.child(self.jobs_added, labels).inc(added)
                self.child(self.jobs_finished, labels).inc(finished)
            self._last_counts[labels] = counts

    def forget(self, labels: tuple[str, str, str]) -> None:
        """Remove a pool's series (the pool or its resource is gone)."""
        self._pools.pop(labels, None)
        self._polls.pop(labels, None)
        for direction in ("up", "down"):
            self._drop(self.scale_actions, (*labels, direction))
        for counter in (self.jobs_added, self.jobs_finished):
            self._drop(counter, labels)
        self._last_counts.pop(labels, None)
        self._drop(self.step_errors, labels)

    def _drop(self, metric: Counter, labels: tuple[str, ...]) -> None:
        self._children.pop((id(metric), labels), None)
        with suppress(KeyError):  # never set for these labels
            metric.remove(*labels)


@cache
def default_metrics() -> ScalingMetrics:
    """The process-wide series in the default registry (registering twice would fail)."""
    return ScalingMetrics()
