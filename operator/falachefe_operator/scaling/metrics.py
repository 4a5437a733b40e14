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
"""

from __future__ import annotations

from contextlib import suppress
from functools import cache
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from .decision import Decision
from .observation import Observation
from .policy import ScalingPolicy
from .rates import QueueSample, flow

POOL_LABELS = ("namespace", "falachefe", "pool")
QUEUE_STATES = ("waiting", "prioritized", "delayed_due", "delayed_pending", "active")


class ScalingMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        def gauge(name: str, documentation: str, extra: tuple[str, ...] = ()) -> Gauge:
            return Gauge(f"falachefe_operator_pool_{name}", documentation, (*POOL_LABELS, *extra), registry=registry)

        self.queue_depth = gauge(
            "queue_depth", "Backlog the pool is sized for: waiting+prioritized+delayed-due+active."
        )
        self.queue_jobs = gauge("queue_jobs", "Jobs in the pool's bullmq queue, by state.", ("state",))
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
        self.cpu_utilization = gauge(
            "cpu_utilization_ratio", "CPU usage of the pool's ready pods over their requests (1 = as requested)."
        )
        self.current_replicas = gauge("current_replicas", "spec.replicas of the pool's Deployment.")
        self.ready_replicas = gauge("ready_replicas", "Ready replicas of the pool's Deployment.")
        self.desired_replicas = gauge("desired_replicas", "Replicas the autoscaler decided on.")
        self.min_replicas = gauge("min_replicas", "The pool's minReplicas: the autoscaler never goes below.")
        self.max_replicas = gauge("max_replicas", "The pool's maxReplicas: the autoscaler never goes above.")
        self.proposed_replicas = gauge("proposed_replicas", "Replicas each metric asked for.", ("metric",))
        self.metrics_available = gauge(
            "metrics_available", "1 when the source answered in the last poll, else 0.", ("source",)
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
        self.step_seconds = Histogram(
            "falachefe_operator_pool_autoscale_step_duration_seconds",
            "Time to read the metrics, decide and scale one pool.",
            POOL_LABELS,
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self._per_pool_gauges = (
            self.queue_depth,
            self.cpu_utilization,
            self.current_replicas,
            self.ready_replicas,
            self.desired_replicas,
            self.min_replicas,
            self.max_replicas,
        )
        self._known_metrics: dict[tuple[str, ...], set[str]] = {}
        self._last_counts: dict[tuple[str, ...], QueueSample] = {}
        #: Each series' child, as ``labels()`` returned it (validating and
        #: looking up labels costs more than setting the value): dropped with it.
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def child(self, metric: Gauge | Counter | Histogram, labels: tuple[str, ...]) -> Any:
        """``metric.labels(*labels)``, remembered until the series is dropped."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def observe(
        self, labels: tuple[str, str, str], observation: Observation, decision: Decision, policy: ScalingPolicy
    ) -> None:
        """Publish one poll's inputs, the pool's bounds and the decision."""
        queue = observation.queue
        self.child(self.metrics_available, (*labels, "queue")).set(queue is not None)
        if queue is not None:
            self.child(self.queue_depth, labels).set(queue.backlog)
            for state in QUEUE_STATES:
                self.child(self.queue_jobs, (*labels, state)).set(getattr(queue, state))
            counts = QueueSample.from_counts(0.0, queue)
            before = self._last_counts.get(labels)
            added, finished = flow(before, counts) if before is not None else (0, 0)
            # Created at zero on the first poll, so the first increase shows in rate().
            self.child(self.jobs_added, labels).inc(added)
            self.child(self.jobs_finished, labels).inc(finished)
            self._last_counts[labels] = counts
        else:
            self._drop(self.queue_depth, labels)
            for state in QUEUE_STATES:
                self._drop(self.queue_jobs, (*labels, state))
        if policy.target_cpu_utilization_percentage is not None:
            self.child(self.metrics_available, (*labels, "cpu")).set(observation.cpu is not None)
        if observation.cpu is not None and observation.cpu.ready_pods > 0:
            self.child(self.cpu_utilization, labels).set(observation.cpu.utilization)
        else:
            self._drop(self.cpu_utilization, labels)
        self.child(self.current_replicas, labels).set(observation.current_replicas)
        self.child(self.ready_replicas, labels).set(observation.ready_replicas)
        self.child(self.desired_replicas, labels).set(decision.desired_replicas)
        self.child(self.min_replicas, labels).set(policy.min_replicas)
        self.child(self.max_replicas, labels).set(policy.max_replicas)
        metrics_now = {p.metric for p in decision.proposals}
        for stale in self._known_metrics.get(labels, set()) - metrics_now:
            self._drop(self.proposed_replicas, (*labels, stale))
        for proposal in decision.proposals:
            self.child(self.proposed_replicas, (*labels, proposal.metric)).set(proposal.replicas)
        self._known_metrics[labels] = metrics_now

    def forget(self, labels: tuple[str, str, str]) -> None:
        """Remove a pool's series (the pool or its resource is gone)."""
        for gauge in self._per_pool_gauges:
            self._drop(gauge, labels)
        for state in QUEUE_STATES:
            self._drop(self.queue_jobs, (*labels, state))
        for source in ("queue", "cpu"):
            self._drop(self.metrics_available, (*labels, source))
        for metric in self._known_metrics.pop(labels, set()):
            self._drop(self.proposed_replicas, (*labels, metric))
        for direction in ("up", "down"):
            self._drop(self.scale_actions, (*labels, direction))
        for counter in (self.jobs_added, self.jobs_finished):
            self._drop(counter, labels)
        self._last_counts.pop(labels, None)
        self._drop(self.step_errors, labels)
        self._drop(self.step_seconds, labels)

    def _drop(self, metric: Gauge | Counter | Histogram, labels: tuple[str, ...]) -> None:
        self._children.pop((id(metric), labels), None)
        with suppress(KeyError):  # never set for these labels
            metric.remove(*labels)


@cache
def default_metrics() -> ScalingMetrics:
    """The process-wide series in the default registry (registering twice would fail)."""
    return ScalingMetrics()
