"""The autoscaling decision: policy + observation + history -> desired replicas and why.

A pure function (no clock, no I/O: ``now`` is an argument and the history
comes back in the result), so every rule below is property-tested and the
simulation benchmark replays exactly what the operator runs.

The Kubernetes HPA's algorithm (autoscaling/v2, ``horizontal.go`` and
``replica_calculator.go``), step by step:

1. one proposal per metric; a metric within ``tolerance`` of its target
   proposes the current size (no change on noise);
2. the largest proposal wins and is clamped to [min, max];
3. stabilization: the result is kept between the lowest recommendation of
   the scale-up window and the highest of the scale-down window;
4. rate limits: the change since the start of each rule's period may not
   exceed the rule (``selectPolicy`` picks the most or least permissive);
5. a pool outside [min, max] goes straight to the bound.

Beyond the HPA:

- the queue proposes on its backlog (waiting + prioritized + delayed-due +
  active, as KEDA would with a bullmq-aware scaler), on the backlog it
  will have ``forecastHorizonSeconds`` from now (at most as far ahead as
  the history behind the trend) if it keeps growing at its measured rate,
  and on its arrival rate times the measured service time (the replicas
  needed to keep up). The two rate-based proposals size a scale-up that
  the backlog or the CPU calls for, and hold back a scale-down, but never
  start a scale-up on their own (see ``_combine``): a growing queue is met
  before it is deep, a pool that keeps up is not shrunk until it falls
  behind, and noise inside the tolerance band never moves the pool;
- the queue's target may be a wait (``targetQueueWaitSeconds``): the depth
  per replica is then derived from the measured service time
  (``depth_per_replica``), which follows jobs that got longer within half
  the rate window (``_service_time``);
- a scale-up that the present backlog alone asks for goes there in one
  poll, past the HPA's default scaleUp rate limits (rules a team wrote
  itself are kept);
- each of these terms can be switched off (``ScalingPolicy.terms``), which
  the simulation benchmark does to see which pay (bench/README.md);
- a queue paused in bullmq is not drained whatever the size: the pool holds;
- never below the replicas the in-flight jobs occupy (active / concurrency);
- a metric that could not be read never lets the pool shrink: it holds,
  or grows on what the other metrics say; and the size it held at counts
  as a scale-down recommendation, so once the metric is back the pool
  waits a whole scale-down window before it shrinks, instead of taking the
  first reading after the outage as if the window had seen nothing else;
- like the HPA (``recordInitialRecommendation``), a pool seen for the first
  time (a new pool, an operator restart or failover) starts with its current
  size as such a recommendation: its first reading cannot shrink it either;
- scale to zero when ``minReplicas`` is 0 and the queue has been empty,
  with no arrivals, for the scale-down window; the first runnable job
  wakes it to one replica at once, whatever the scale-up window or rules
  say.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .history import History, since
from .observation import CpuSample, Observation, QueueCounts
from .policy import RuleType, ScalingPolicy, ScalingRules, SelectPolicy, Term
from .rates import QueueRates, QueueSample, estimate_rates

#: Float slack for ceil(): 340 / 20 is 17, not 17.000000000000004 -> 18.
_EPSILON = 1e-9


@dataclass(frozen=True)
class Proposal:
    """What one metric asks for, and the numbers behind it."""

    metric: str  # "queue", "queue-forecast", "queue-arrivals" or "cpu"
    replicas: int
    detail: str


@dataclass(frozen=True)
class Decision:
    desired_replicas: int
    current_replicas: int
    #: The metrics' combined ask before stabilization and rate limits.
    recommendation: int
    proposals: tuple[Proposal, ...]
    reason: str
    #: The history to pass to the next ``decide`` (record scales with ``History.scaled``).
    history: History
    rates: QueueRates | None = None
    #: Replicas the in-flight jobs occupy; the pool is not shrunk below it.
    inflight_floor: int | None = None
    #: A metric was unavailable, so the pool may grow but not shrink.
    held: bool = False
    waking: bool = False

    @property
    def direction(self) -> str | None:
        if self.desired_replicas > self.current_replicas:
            return "up"
        if self.desired_replicas < self.current_replicas:
            return "down"
        return None


def decide(policy: ScalingPolicy, observation: Observation, history: History, now: float) -> Decision:
    """The pool's desired replicas, with a reason a person can check by hand."""
    current = observation.current_replicas
    if not history.recommendations:
        history = history.recording(now, policy.history_seconds, recommendation=current, held=True)
    queue = observation.queue
    sample = QueueSample.from_counts(now, queue) if queue is not None else None
    rates, service_time = _measure(policy, history, sample, now)

    proposals: list[Proposal] = []
    # A queue paused in bullmq is not drained whatever the pool's size: its
    # counts say nothing about the replicas needed, so they are not used.
    queue_paused = queue is not None and queue.paused
    targets_queue = policy.target_queue_depth_per_replica is not None or policy.target_queue_wait_seconds is not None
    if queue is not None and not queue_paused and targets_queue:
        target = depth_per_replica(policy, observation.concurrency, service_time)
        proposals += _queue_proposals(
            policy, target, queue=queue, rates=rates, service_time=service_time, observation=observation
        )
    if observation.cpu is not None and policy.target_cpu_utilization_percentage is not None:
        cpu_proposal = _cpu_proposal(policy, policy.target_cpu_utilization_percentage, observation.cpu, current)
        if cpu_proposal is not None:
            proposals.append(cpu_proposal)

    unavailable = [str(u) for u in observation.unavailable]
    reported = {u.source for u in observation.unavailable}
    if queue is None and "queue" not in reported:
        unavailable.append("queue unavailable")
    if policy.target_cpu_utilization_percentage is not None and observation.cpu is None and "cpu" not in reported:
        unavailable.append("cpu unavailable")
    if queue_paused:
        unavailable.append("queue paused in bullmq")
    held = bool(unavailable)
    # Idle: nothing queued or running now, and nothing arrived over the rate
    # window (a queue of quick jobs can look empty at every poll).
    idle = (
        not held
        and policy.min_replicas == 0
        and queue is not None
        and queue.backlog == 0
        and (rates is None or rates.arrival_rate == 0)
    )
    waking = current == 0 and queue is not None and not queue_paused and queue.pending > 0
    floor = None
    if queue is not None and Term.INFLIGHT_FLOOR in policy.terms:
        floor = math.ceil(queue.active / observation.concurrency)
    backlog_need = None if held else _backlog_need(policy, proposals)

    notes: list[str] = [p.detail for p in proposals]
    if held:
        recommendation = max(current, _combine(proposals, current))
        notes.append(f"{'; '.join(unavailable)}: not scaling down")
    elif idle:
        recommendation = 0
        notes.append("queue empty, no arrivals and minReplicas 0 -> 0")
    elif proposals:
        recommendation = _combine(proposals, current)
    else:
        recommendation = current
        notes.append("no metric has data yet: keeping the current size")
    recommendation = _clamp(recommendation, policy)

    next_history = history.recording(
        now, policy.history_seconds, recommendation, sample, held=held, samples_seconds=policy.rate_window_seconds
    )
    desired = _normalize(
        policy,
        current=current,
        recommendation=recommendation,
        history=history,
        now=now,
        waking=waking,
        floor=floor,
        backlog_need=backlog_need,
        notes=notes,
    )
    notes.append(f"desired {desired} (current {current})")
    return Decision(
        desired_replicas=desired,
        current_replicas=current,
        recommendation=recommendation,
        proposals=tuple(proposals),
        reason="; ".join(notes),
        history=next_history,
        rates=rates,
        inflight_floor=floor,
        held=held,
        waking=waking,
    )


# -- proposals ---------------------------------------------------------------------

#: Proposals from the queue's measured rates rather than its present state.
RATE_METRICS = frozenset({"queue-forecast", "queue-arrivals"})


def _measure(
    policy: ScalingPolicy, history: History, sample: QueueSample | None, now: float
) -> tuple[QueueRates | None, float | None]:
    """The queue's rates over the rate window, and the service time the decision believes."""
    if sample is None:
        return None, None
    window = [*since(history.queue_samples, now - policy.rate_window_seconds), sample]
    rates = estimate_rates(window)
    return rates, _service_time(policy, rates, window, now)


def _backlog_need(policy: ScalingPolicy, proposals: list[Proposal]) -> int | None:
    """What the present backlog alone asks for, which a scale-up may reach in one poll.

    Rules a team wrote itself are theirs to keep; the HPA's defaults were nobody's choice.
    """
    if Term.BACKLOG_JUMP not in policy.terms or not policy.default_scale_up:
        return None
    return max((p.replicas for p in proposals if p.metric == "queue"), default=None)


def _service_time(
    policy: ScalingPolicy, rates: QueueRates | None, window: list[QueueSample], now: float
) -> float | None:
    """The mean service time over the rate window, or over its later half when that is longer.

    Jobs that grew ten times longer finish ten times less often, but a
    whole window's average takes the window to see it; its later half sees
    it in half the time (a half with jobs in flight and none finished says
    they take at least the half's span). Shorter jobs are believed only at the window's
    pace, so a lull in completions costs a few replicas for a while, not a flap.
    """
    if rates is None:
        return None
    measured = rates.service_time_seconds
    if measured is None or Term.SERVICE_TIME_RISE not in policy.terms:
        return measured  # (nothing finished over the window: no later half can say more)
    recent = estimate_rates([s for s in window if s.at > now - policy.rate_window_seconds / 2])
    if recent is None or recent.mean_active <= 0:
        return measured
    recent_time = recent.service_time_seconds
    if recent_time is None:
        # Jobs in flight all through the later half and none finished: they take at least that long.
        recent_time = recent.window_seconds
    return max(measured, recent_time)


def depth_per_replica(policy: ScalingPolicy, concurrency: int, service_time: float | None) -> float:
    """Jobs waiting or running per replica that the queue proposals size for.

    With ``target_queue_wait_seconds`` W: a replica finishes ``concurrency``
    jobs every service time S, so W seconds of waiting are W x concurrency /
    S jobs queued behind its ``concurrency`` in flight:
    concurrency x (1 + W / S). Until a service time has been measured
    (nothing completed in the rate window) it sizes for no waiting at all.
    """
    wait = policy.target_queue_wait_seconds
    if wait is None:
        assert policy.target_queue_depth_per_replica is not None
        return policy.target_queue_depth_per_replica
    if service_time is None:
        return float(concurrency)
    return concurrency * (1 + wait / service_time)


def _combine(proposals: list[Proposal], current: int) -> int:
    """The largest proposal wins, with the rate-based ones kept on a leash.

    A trend fitted on a minute of noisy samples would turn noise inside the
    tolerance band into scale-ups, so the rate proposals never start a
    scale-up: when the backlog or the CPU calls for one, they decide how far
    it goes (to where the queue will be, to what the arrivals need);
    otherwise they can only hold back a scale-down, up to the current size.
    """
    primary = max((p.replicas for p in proposals if p.metric not in RATE_METRICS), default=current)
    foresight = max((p.replicas for p in proposals if p.metric in RATE_METRICS), default=0)
    if primary > current:
        return max(primary, foresight)
    return max(primary, min(foresight, current))


def _queue_proposals(
    policy: ScalingPolicy,
    target: float,
    *,
    queue: QueueCounts,
    rates: QueueRates | None,
    service_time: float | None,
    observation: Observation,
) -> list[Proposal]:
    current = observation.current_replicas
    per_replica = _number(round(target, 2))
    proposals = [
        _with_tolerance(
            "queue",
            queue.backlog / target,
            current,
            policy.tolerance,
            f"queue {queue.backlog} jobs / {per_replica} per replica",
        )
    ]
    if rates is None:
        return proposals
    growth = rates.backlog_growth_rate
    # A trend is projected no further ahead than the history it was fitted
    # on: two polls of a bulk add, or of one job, say little about a minute.
    horizon = min(policy.forecast_horizon_seconds, rates.window_seconds)
    if growth > 0 and horizon > 0:
        forecast = queue.backlog + growth * horizon
        proposals.append(
            _with_tolerance(
                "queue-forecast",
                forecast / target,
                current,
                policy.tolerance,
                f"queue growing {growth:.1f}/s: {forecast:.0f} jobs in {horizon:.0f}s / {per_replica} per replica",
            )
        )
    if service_time is not None and rates.arrival_rate > 0 and Term.ARRIVALS in policy.terms:
        # Little's law: arrivals x service time jobs are in flight at steady
        # state; a replica holds at most its concurrency of them, and no more
        # than the target depth.
        per_replica_in_flight = min(observation.concurrency, target)
        proposals.append(
            _with_tolerance(
                "queue-arrivals",
                rates.arrival_rate * service_time / per_replica_in_flight,
                current,
                policy.tolerance,
                f"arrivals {rates.arrival_rate:.2f}/s x {service_time:.2f}s per job"
                f" / {_number(per_replica_in_flight)} per replica",
            )
        )
    return proposals


def _cpu_proposal(policy: ScalingPolicy, target_percent: float, cpu: CpuSample, current: int) -> Proposal | None:
    if cpu.ready_pods == 0:
        if cpu.unaccounted_pods == 0:
            return None  # no pods at all: nothing to measure, nothing to hold
        return Proposal("cpu", current, f"cpu unknown: {cpu.unaccounted_pods} pod(s) starting or without metrics")
    ratio = cpu.utilization * 100 / target_percent
    detail = (
        f"cpu {cpu.utilization:.0%} of requests vs target {_number(target_percent)}% on {cpu.ready_pods} ready pod(s)"
    )
    if abs(ratio - 1) <= policy.tolerance + _EPSILON:
        return Proposal("cpu", current, f"{detail}: within tolerance -> {current}")
    replicas = _ceil(cpu.ready_pods * ratio)
    if cpu.unaccounted_pods and replicas < current:
        # Starting pods would look idle; like the HPA, never shrink on them.
        return Proposal(
            "cpu", current, f"{detail} -> {replicas}, but {cpu.unaccounted_pods} pod(s) starting: -> {current}"
        )
    return Proposal("cpu", replicas, f"{detail} -> {replicas}")


def _with_tolerance(metric: str, demand: float, current: int, tolerance: float, detail: str) -> Proposal:
    """The HPA's tolerance band: within it, the metric is satisfied with the current size."""
    if current > 0 and abs(demand / current - 1) <= tolerance + _EPSILON:
        return Proposal(metric, current, f"{detail} -> {demand:.2f}: within tolerance -> {current}")
    replicas = _ceil(demand)
    return Proposal(metric, replicas, f"{detail} -> {replicas}")


# -- from a recommendation to the desired size ------------------------------------


def _normalize(
    policy: ScalingPolicy,
    *,
    current: int,
    recommendation: int,
    history: History,
    now: float,
    waking: bool,
    floor: int | None,
    backlog_need: int | None,
    notes: list[str],
) -> int:
    if current > policy.max_replicas:
        notes.append(f"above maxReplicas {policy.max_replicas}")
        return policy.max_replicas
    if current < policy.min_replicas:
        notes.append(f"below minReplicas {policy.min_replicas}")
        return policy.min_replicas

    stabilized = _stabilize(
        policy, current=current, recommendation=recommendation, history=history, now=now, notes=notes
    )
    if waking and stabilized < 1:
        notes.append("first job on an idle pool: waking to 1")
        stabilized = 1

    if stabilized > current:
        limit, rule = _scale_up_limit(policy.scale_up, current, history, now)
        limit = max(limit, current)  # events still in the period: no more up, but never down
        if waking:
            limit = max(limit, 1)
        if backlog_need is not None and min(backlog_need, stabilized) > limit:
            notes.append(f"the backlog alone needs {backlog_need}: past scaleUp {rule} in one step")
            limit = min(backlog_need, stabilized)
        if stabilized > limit and limit < policy.max_replicas:
            notes.append(f"capped by scaleUp {rule} to {limit}")
            return limit
        return stabilized
    if stabilized < current:
        limit, rule = _scale_down_limit(policy.scale_down, current, history, now)
        limit = min(limit, current)
        desired = stabilized
        if stabilized < limit and limit > policy.min_replicas:
            notes.append(f"capped by scaleDown {rule} to {limit}")
            desired = limit
        if floor is not None and desired < floor:
            kept = min(floor, current)
            notes.append(f"kept at {kept}: in-flight jobs occupy {floor} replica(s)")
            desired = kept
        return desired
    return stabilized


def _stabilize(
    policy: ScalingPolicy, *, current: int, recommendation: int, history: History, now: float, notes: list[str]
) -> int:
    """The HPA's stabilization: down to the window's highest, up to the window's lowest.

    Held recommendations (an outage, a first sight) count for scale-down only.
    """
    up_window = policy.scale_up.stabilization_window_seconds
    down_window = policy.scale_down.stabilization_window_seconds
    up_bound = min(
        [recommendation, *(r.replicas for r in history.recommendations if r.at > now - up_window and not r.held)],
    )
    in_down_window = [r for r in history.recommendations if r.at > now - down_window]
    down_bound = max([recommendation, *(r.replicas for r in in_down_window)])
    # Recommendations made under an older policy may lie outside today's bounds.
    stabilized = _clamp(min(max(current, up_bound), down_bound), policy)
    if stabilized != recommendation:
        if recommendation < current:
            metrics_said = max([recommendation, *(r.replicas for r in in_down_window if not r.held)])
            why = (
                "the size held while metrics were unavailable or not yet read"
                if down_bound > metrics_said
                else "highest recommendation"
            )
            notes.append(f"scaleDown stabilized at {stabilized} ({why} in the last {down_window}s)")
        else:
            notes.append(f"scaleUp stabilized at {stabilized} (lowest recommendation in the last {up_window}s)")
    return stabilized


def _scale_up_limit(rules: ScalingRules, current: int, history: History, now: float) -> tuple[int, str]:
    """The most replicas the scaleUp rules allow now, and the rule that says so."""
    if rules.select_policy is SelectPolicy.DISABLED:
        return current, "selectPolicy Disabled"
    limits = []
    for rule in rules.policies:
        start = current - history.replicas_changed_since(now - rule.period_seconds)
        # Percent rounds up, or a small pool could never grow.
        limit = start + rule.value if rule.type is RuleType.PODS else _ceil(start * (1 + rule.value / 100))
        limits.append((limit, f"policy {rule}"))
    pick = max if rules.select_policy is SelectPolicy.MAX else min
    return pick(limits, key=lambda item: item[0])


def _scale_down_limit(rules: ScalingRules, current: int, history: History, now: float) -> tuple[int, str]:
    """The fewest replicas the scaleDown rules allow now, and the rule that says so."""
    if rules.select_policy is SelectPolicy.DISABLED:
        return current, "selectPolicy Disabled"
    limits = []
    for rule in rules.policies:
        start = current - history.replicas_changed_since(now - rule.period_seconds)
        if rule.type is RuleType.PODS:
            limit = start - rule.value
        else:
            limit = math.floor(start * (1 - rule.value / 100) + _EPSILON)
        limits.append((limit, f"policy {rule}"))
    # The most permissive scale-down is the lowest limit.
    pick = min if rules.select_policy is SelectPolicy.MAX else max
    return pick(limits, key=lambda item: item[0])


def _clamp(replicas: int, policy: ScalingPolicy) -> int:
    return max(policy.min_replicas, min(policy.max_replicas, replicas))


def _ceil(value: float) -> int:
    return max(0, math.ceil(value - _EPSILON))


def _number(value: float) -> str:
    """20.0 -> '20', 2.5 -> '2.5': numbers in reasons read like the spec."""
    return f"{value:g}"
