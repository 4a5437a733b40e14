"""The seam between a resource's spec and the autoscaler engine (``scaling``).

The engine knows nothing about ``Falachefe`` resources: it scales one pool
described by a ``PoolTarget``. This module builds that target from the
parsed spec (typed, so a renamed field is a type error rather than a silent
default) and turns the engine's ``StepOutcome`` into what the status shows
and what the scale and metric-outage Events say.
"""

from __future__ import annotations

from falachefe_runtime.config import WorkerKind

from . import naming
from .scaling.engine import PoolTarget, StepOutcome
from .scaling.outages import SourceBack, SourceDown
from .scaling.policy import RuleType, ScalingPolicy, ScalingRule, ScalingRules, SelectPolicy
from .scaling.queue import QueueRef
from .spec import FalachefeSpec, PoolSpec, ScalingRulesSpec
from .spec import ScalingPolicy as PolicySpec
from .status import ScalingReport


def scaling_policy(pool: PoolSpec) -> ScalingPolicy:
    autoscaling = pool.autoscaling
    cpu_target = autoscaling.target_cpu_utilization_percentage
    return ScalingPolicy(
        min_replicas=pool.min_replicas,
        max_replicas=pool.max_replicas,
        target_queue_depth_per_replica=autoscaling.target_queue_depth_per_replica,
        target_queue_wait_seconds=autoscaling.target_queue_wait_seconds,
        # 0 in the spec: scale on the queue alone.
        target_cpu_utilization_percentage=cpu_target or None,
        tolerance=autoscaling.tolerance,
        scale_up=_rules(autoscaling.behavior.scale_up),
        scale_down=_rules(autoscaling.behavior.scale_down),
        forecast_horizon_seconds=autoscaling.forecast_horizon_seconds,
        rate_window_seconds=autoscaling.rate_window_seconds,
    )


def _rules(rules: ScalingRulesSpec) -> ScalingRules:
    return ScalingRules(
        stabilization_window_seconds=rules.stabilization_window_seconds,
        policies=tuple(_rule(policy) for policy in rules.policies),
        select_policy=SelectPolicy(rules.select_policy),
    )


def _rule(policy: PolicySpec) -> ScalingRule:
    return ScalingRule(RuleType(policy.type), policy.value, policy.period_seconds)


def pool_target(
    *, namespace: str, name: str, spec: FalachefeSpec, kind: WorkerKind, pool: PoolSpec, redis_url: str
) -> PoolTarget:
    return PoolTarget(
        namespace=namespace,
        falachefe=name,
        pool=kind.value,
        deployment=naming.deployment_name(name, kind),
        policy=scaling_policy(pool),
        queue=QueueRef(name=pool.queue, redis_url=redis_url, prefix=spec.redis.queue_prefix),
        selector=naming.selector_string(naming.pool_selector(name, kind)),
        concurrency=pool.concurrency,
    )


def report(outcome: StepOutcome, previous: ScalingReport | None, now: str) -> ScalingReport:
    """What the status says about a pool after ``outcome`` (``now`` is an RFC 3339 time)."""
    cpu = outcome.cpu_utilization
    return ScalingReport(
        desired_replicas=outcome.desired,
        queue_depth=outcome.queue_depth,
        cpu_utilization=None if cpu is None else round(cpu * 100),
        metrics_available=outcome.metrics_available,
        message=outcome.message or outcome.reason,
        last_scale_time=now if outcome.scaled else (previous.last_scale_time if previous else None),
        last_scale_reason=outcome.reason if outcome.scaled else (previous.last_scale_reason if previous else None),
    )


def scale_message(kind: WorkerKind, outcome: StepOutcome) -> str:
    """The numbers behind a scale, for its Event."""
    facts = []
    if outcome.queue is not None:
        queue = outcome.queue
        facts.append(
            f"queue depth {queue.backlog} ({queue.pending} runnable, {queue.active} active,"
            f" {queue.delayed_pending} delayed)"
        )
    if outcome.cpu_utilization is not None:
        facts.append(f"CPU {round(outcome.cpu_utilization * 100)}% of requests")
    if outcome.ready is not None:
        facts.append(f"{outcome.ready} ready")
    numbers = "; ".join(facts) or "no metrics"
    return f"pool {kind.value}: {outcome.current} -> {outcome.desired} replicas: {outcome.reason} ({numbers})"


#: What each metric source measures, and where it comes from, for Events.
SOURCES = {"queue": "queue depth (Redis)", "cpu": "CPU utilisation (metrics.k8s.io)"}


def source_event(
    kind: WorkerKind, change: SourceDown | SourceBack, outcome: StepOutcome, pool: PoolSpec
) -> tuple[str, str, str]:
    """The Event (type, reason, message) for a metric source that went down or came back; it names no address."""
    what = SOURCES.get(change.source, change.source)
    held = f"{outcome.current} replicas" if outcome.current is not None else "the current size"
    if isinstance(change, SourceDown):
        return (
            "Warning",
            "MetricUnavailable",
            f"pool {kind.value}: {what} unavailable: {change.cause}; holding {held}"
            " (the pool may grow on the other metrics, it does not shrink)",
        )
    window = pool.autoscaling.behavior.scale_down.stabilization_window_seconds
    return (
        "Normal",
        "MetricAvailable",
        f"pool {kind.value}: {what} available again after {change.down_seconds:.0f}s unavailable;"
        f" the {window}s scale-down window starts afresh from {held}",
    )
