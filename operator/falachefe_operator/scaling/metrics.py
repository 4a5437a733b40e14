"""Prometheus series for every input and output of the autoscaler, per pool.

Labels are ``namespace``, ``falachefe`` (the custom resource's name) and
``pool``, so a dashboard can put a pool's queue depth, CPU and replicas on
one graph. A gauge whose input was unavailable in the last poll is removed
rather than left at a stale value; ``falachefe_operator_pool_metrics_available``
says which.
"""

from __future__ import annotations

from contextlib import suppress
from functools import cache

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from .decision import Decision
from .observation import Observation

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
        self.arrival_rate = gauge("queue_arrival_rate", "Jobs added per second, averaged over the rate window.")
        self.completion_rate = gauge("queue_completion_rate", "Jobs finished per second over the rate window.")
        self.cpu_utilization = gauge(
            "cpu_utilization_ratio", "CPU usage of the pool's ready pods over their requests (1 = as requested)."
        )
        self.current_replicas = gauge("current_replicas", "spec.replicas of the pool's Deployment.")
        self.ready_replicas = gauge("ready_replicas", "Ready replicas of the pool's Deployment.")
        self.desired_replicas = gauge("desired_replicas", "Replicas the autoscaler decided on.")
        self.proposed_replicas = gauge("proposed_replicas", "Replicas each metric asked for.", ("metric",))
        self.metrics_available = gauge(
            "metrics_available", "1 when the source answered in the last poll, else 0.", ("source",)
        )
        self.scale_actions = Counter(
            "falachefe_operator_pool_scale_actions",
            "Writes of the Deployment's scale subresource, by direction.",
            (*POOL_LABELS, "direction"),
            registry=registry,
        )
        self.step_errors = Counter(
            "falachefe_operator_pool_scale_errors",
            "Polls that could not read or write the Deployment.",
            POOL_LABELS,
            registry=registry,
        )
        self.step_seconds = Histogram(
            "falachefe_operator_pool_autoscale_step_seconds",
            "Time to read the metrics, decide and scale one pool.",
            POOL_LABELS,
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self._per_pool_gauges = (
            self.queue_depth,
            self.arrival_rate,
            self.completion_rate,
            self.cpu_utilization,
            self.current_replicas,
            self.ready_replicas,
            self.desired_replicas,
        )
        self._known_metrics: dict[tuple[str, ...], set[str]] = {}

    def observe(
        self, labels: tuple[str, str, str], observation: Observation, decision: Decision, cpu_asked: bool
    ) -> None:
        """Publish one poll's inputs and the decision."""
        queue = observation.queue
        self.metrics_available.labels(*labels, "queue").set(queue is not None)
        if queue is not None:
            self.queue_depth.labels(*labels).set(queue.backlog)
            for state in QUEUE_STATES:
                self.queue_jobs.labels(*labels, state).set(getattr(queue, state))
        else:
            self._drop(self.queue_depth, labels)
            for state in QUEUE_STATES:
                self._drop(self.queue_jobs, (*labels, state))
        if decision.rates is not None:
            self.arrival_rate.labels(*labels).set(decision.rates.arrival_rate)
            self.completion_rate.labels(*labels).set(decision.rates.completion_rate)
        else:
            self._drop(self.arrival_rate, labels)
            self._drop(self.completion_rate, labels)
        if cpu_asked:
            self.metrics_available.labels(*labels, "cpu").set(observation.cpu is not None)
        if observation.cpu is not None and observation.cpu.ready_pods > 0:
            self.cpu_utilization.labels(*labels).set(observation.cpu.utilization)
        else:
            self._drop(self.cpu_utilization, labels)
        self.current_replicas.labels(*labels).set(observation.current_replicas)
        self.ready_replicas.labels(*labels).set(observation.ready_replicas)
        self.desired_replicas.labels(*labels).set(decision.desired_replicas)
        metrics_now = {p.metric for p in decision.proposals}
        for stale in self._known_metrics.get(labels, set()) - metrics_now:
            self._drop(self.proposed_replicas, (*labels, stale))
        for proposal in decision.proposals:
            self.proposed_replicas.labels(*labels, proposal.metric).set(proposal.replicas)
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
        self._drop(self.step_errors, labels)
        self._drop(self.step_seconds, labels)

    @staticmethod
    def _drop(metric: Gauge | Counter | Histogram, labels: tuple[str, ...]) -> None:
        with suppress(KeyError):  # never set for these labels
            metric.remove(*labels)


@cache
def default_metrics() -> ScalingMetrics:
    """The process-wide series in the default registry (registering twice would fail)."""
    return ScalingMetrics()
