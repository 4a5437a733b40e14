"""The decision, by example and by property (hypothesis).

The examples pin the HPA's arithmetic and our additions to numbers a
person can check by hand; the properties run random trajectories of polls
(random policies, metrics, gaps and outages) and check the invariants the
issue asks for at every poll, recomputed here from the HPA's rules rather
than read back from the decision's own bookkeeping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from falachefe_operator.scaling.decision import Decision, decide
from falachefe_operator.scaling.history import History
from falachefe_operator.scaling.observation import CpuSample, MetricUnavailable, Observation, QueueCounts
from falachefe_operator.scaling.policy import (
    ALL_TERMS,
    DEFAULT_SCALE_UP,
    RuleType,
    ScalingPolicy,
    ScalingRule,
    ScalingRules,
    SelectPolicy,
    Term,
)


def queue(waiting: int = 0, *, active: int = 0, prioritized: int = 0, due: int = 0, pending: int = 0, added: int = 0):
    return QueueCounts(
        waiting=waiting,
        prioritized=prioritized,
        delayed_due=due,
        delayed_pending=pending,
        active=active,
        added_total=added,
    )


def observe(current: int, q: QueueCounts | None, *, cpu: CpuSample | None = None, concurrency: int = 5, **kw):
    return Observation(current, kw.pop("ready", current), concurrency, queue=q, cpu=cpu, **kw)


QUEUE_POLICY = ScalingPolicy(max_replicas=20, target_queue_depth_per_replica=20)
#: The HPA's rate limits as the HPA applies them: no jump to the backlog's size.
RULES_POLICY = replace(QUEUE_POLICY, terms=QUEUE_POLICY.terms - {Term.BACKLOG_JUMP})


# -- examples: the HPA's arithmetic ------------------------------------------------


def test_queue_proposal_capped_by_the_default_scale_up_rule() -> None:
    decision = decide(RULES_POLICY, observe(3, queue(300, active=15, due=25)), History(), now=1000.0)
    # ceil(340 / 20) = 17; the HPA's defaults allow max(3 + 4, 3 * 2) = 7 per 15 s.
    assert decision.recommendation == 17
    assert decision.desired_replicas == 7
    assert "queue 340 jobs / 20 per replica -> 17" in decision.reason
    assert "capped by scaleUp policy Pods 4/15s to 7" in decision.reason
    assert decision.direction == "up"


def test_rate_limit_counts_what_was_added_in_the_period() -> None:
    first = decide(RULES_POLICY, observe(3, queue(340)), History(), now=1000.0)
    history = first.history.scaled(1000.0, 3, first.desired_replicas)
    # 10 s later the +4 of the period already used the Pods rule; 100% of the
    # period's start (3) allows 6: the larger, 7, is where the pool already is.
    second = decide(RULES_POLICY, observe(7, queue(340)), history, now=1010.0)
    assert second.desired_replicas == 7
    # Once the period has passed, the pool may grow again: max(7 + 4, 14) = 14.
    third = decide(RULES_POLICY, observe(7, queue(340)), second.history, now=1016.0)
    assert third.desired_replicas == 14


def test_a_backlog_that_alone_asks_for_a_size_gets_it_in_one_poll() -> None:
    decision = decide(QUEUE_POLICY, observe(1, queue(300, active=5)), History(), now=0.0)
    # ceil(305 / 20) = 16, past the default +4 / +100% per 15 s.
    assert decision.desired_replicas == 16
    assert "the backlog alone needs 16: past scaleUp" in decision.reason
    # The forecast and the arrivals size no jump of their own: only what is queued now.
    capped = decide(QUEUE_POLICY, observe(1, queue(40, active=5)), History(), now=0.0)
    assert capped.desired_replicas == 3
    # Rules a team wrote itself are kept.
    slow = replace(QUEUE_POLICY, scale_up=ScalingRules(0, (ScalingRule(RuleType.PODS, 1, 60),)))
    assert decide(slow, observe(1, queue(300, active=5)), History(), now=0.0).desired_replicas == 2


def test_percent_rule_rounds_up_so_a_single_replica_can_grow() -> None:
    policy = replace(
        QUEUE_POLICY,
        scale_up=ScalingRules(0, (ScalingRule(RuleType.PERCENT, 10, 60),)),
    )
    decision = decide(policy, observe(1, queue(200)), History(), now=0.0)
    assert decision.desired_replicas == 2  # ceil(1 * 1.1)


def test_select_policy_min_takes_the_smaller_step() -> None:
    policy = replace(QUEUE_POLICY, scale_up=replace(QUEUE_POLICY.scale_up, select_policy=SelectPolicy.MIN))
    decision = decide(policy, observe(3, queue(340)), History(), now=0.0)
    assert decision.desired_replicas == 6  # min(3 + 4, 3 * 2)


def test_select_policy_disabled_forbids_the_direction() -> None:
    policy = replace(QUEUE_POLICY, scale_up=replace(QUEUE_POLICY.scale_up, select_policy=SelectPolicy.DISABLED))
    decision = decide(policy, observe(3, queue(340)), History(), now=0.0)
    assert decision.desired_replicas == 3


def test_tolerance_band_holds_on_small_deviations() -> None:
    inside = decide(QUEUE_POLICY, observe(10, queue(218)), History(), now=0.0)  # 10.9 replicas' worth
    outside = decide(QUEUE_POLICY, observe(10, queue(224)), History(), now=0.0)  # 11.2
    assert inside.desired_replicas == 10
    assert "within tolerance" in inside.reason
    assert outside.desired_replicas == 12


def test_scale_down_waits_for_the_stabilization_window() -> None:
    policy = replace(QUEUE_POLICY, scale_down=replace(QUEUE_POLICY.scale_down, stabilization_window_seconds=300))
    history = decide(policy, observe(10, queue(200)), History(), now=0.0).history
    history = decide(policy, observe(10, queue(20)), history, now=100.0).history
    early = decide(policy, observe(10, queue(20)), history, now=299.0)
    assert early.desired_replicas == 10
    assert "scaleDown stabilized at 10 (highest recommendation in the last 300s)" in early.reason
    late = decide(policy, observe(10, queue(20)), early.history, now=301.0)
    assert late.desired_replicas == 1


def test_scale_up_window_takes_the_lowest_recommendation() -> None:
    policy = replace(QUEUE_POLICY, scale_up=replace(QUEUE_POLICY.scale_up, stabilization_window_seconds=60))
    history = decide(policy, observe(2, queue(40)), History(), now=0.0).history  # recommends 2
    spike = decide(policy, observe(2, queue(200)), history, now=30.0)
    assert spike.desired_replicas == 2
    later = decide(policy, observe(2, queue(200)), spike.history, now=61.0)
    assert later.desired_replicas == 6  # min(10, 2 + 4)


def test_out_of_bounds_goes_straight_to_the_bound() -> None:
    policy = replace(QUEUE_POLICY, min_replicas=2, max_replicas=5)
    assert decide(policy, observe(9, queue(0)), History(), now=0.0).desired_replicas == 5
    assert decide(policy, observe(1, queue(10_000)), History(), now=0.0).desired_replicas == 2


# -- examples: CPU -----------------------------------------------------------------

CPU_POLICY = ScalingPolicy(max_replicas=20, target_cpu_utilization_percentage=50)


def test_cpu_proposal_is_ready_pods_times_utilisation_over_target() -> None:
    decision = decide(CPU_POLICY, observe(2, queue(), cpu=CpuSample(0.9, 2)), History(), now=0.0)
    assert decision.desired_replicas == 4  # ceil(2 * 90 / 50)
    assert "cpu 90% of requests vs target 50% on 2 ready pod(s) -> 4" in decision.reason


def test_starting_pods_are_neither_idle_nor_busy() -> None:
    # Two ready pods at 90%, two starting: their capacity is coming, so no
    # further scale-up; and they do not drag the utilisation down either.
    up = decide(CPU_POLICY, observe(4, queue(), cpu=CpuSample(0.9, 2, unaccounted_pods=2)), History(), now=0.0)
    assert up.desired_replicas == 4
    # Ready pods nearly idle while others start: no scale-down on that.
    policy = replace(CPU_POLICY, scale_down=replace(CPU_POLICY.scale_down, stabilization_window_seconds=0))
    held = decide(policy, observe(4, queue(), cpu=CpuSample(0.1, 2, unaccounted_pods=2)), History(), now=0.0)
    assert held.desired_replicas == 4
    assert "2 pod(s) starting" in held.reason
    settled = decide(policy, observe(4, queue(), cpu=CpuSample(0.1, 4)), History(), now=0.0)
    assert settled.desired_replicas == 1


def test_larger_proposal_wins() -> None:
    policy = ScalingPolicy(max_replicas=20, target_queue_depth_per_replica=10, target_cpu_utilization_percentage=50)
    decision = decide(policy, observe(4, queue(60), cpu=CpuSample(1.0, 4)), History(), now=0.0)
    assert {p.metric: p.replicas for p in decision.proposals} == {"queue": 6, "cpu": 8}
    assert decision.desired_replicas == 8


# -- examples: beyond the HPA ------------------------------------------------------


def test_missing_metric_holds_instead_of_scaling_down() -> None:
    policy = replace(QUEUE_POLICY, scale_down=replace(QUEUE_POLICY.scale_down, stabilization_window_seconds=0))
    missing = MetricUnavailable("queue", "redis 10.0.0.1:6379/0: Connection refused")
    decision = decide(policy, observe(8, None, unavailable=(missing,)), History(), now=0.0)
    assert decision.desired_replicas == 8
    assert decision.held
    assert "queue unavailable: redis 10.0.0.1:6379/0: Connection refused: not scaling down" in decision.reason


def test_missing_cpu_still_allows_a_scale_up_on_the_queue() -> None:
    policy = ScalingPolicy(max_replicas=20, target_queue_depth_per_replica=10, target_cpu_utilization_percentage=50)
    missing = MetricUnavailable("cpu", "metrics.k8s.io is not served")
    decision = decide(policy, observe(2, queue(60), unavailable=(missing,)), History(), now=0.0)
    assert decision.desired_replicas == 6
    assert decision.held


def test_paused_queue_holds() -> None:
    policy = replace(QUEUE_POLICY, min_replicas=0)
    paused = replace(queue(500), paused=True)
    assert decide(policy, observe(3, paused), History(), now=0.0).desired_replicas == 3
    assert decide(policy, observe(0, paused), History(), now=0.0).desired_replicas == 0


def test_after_an_outage_the_scale_down_window_starts_afresh() -> None:
    """The issue's case: 10 replicas, Redis down for 150 s, back with an empty queue.

    The window (30 s, as in the demo) had aged out during the outage, so
    the first reading used to take the pool from 10 to 1 in one step.
    """
    policy = replace(QUEUE_POLICY, scale_down=ScalingRules(30, (ScalingRule(RuleType.PERCENT, 100, 15),)))
    down = MetricUnavailable("queue", "redis 10.0.0.1:6379/0: Connection refused")
    decision = decide(policy, observe(10, queue(200)), History(), now=0.0)
    assert decision.desired_replicas == 10
    history = decision.history
    for second in range(2, 152, 2):  # polls every 2 s while Redis is down
        held = decide(policy, observe(10, None, unavailable=(down,)), history, now=float(second))
        assert held.desired_replicas == 10
        history = held.history
    last_held = 150.0

    # Back, empty: no step on the first reading, nor on any within the window.
    now = last_held
    while now < last_held + 30 - 2:
        now += 2
        back = decide(policy, observe(10, queue(0)), history, now=now)
        assert back.desired_replicas == 10, (now, back.reason)
        assert "size held while metrics were unavailable" in back.reason
        history = back.history
    # A full window after the last held poll, the empty queue has its way.
    later = decide(policy, observe(10, queue(0)), history, now=last_held + 30.5)
    assert later.desired_replicas == 1, later.reason


def test_an_outage_never_holds_back_a_scale_up() -> None:
    policy = replace(
        QUEUE_POLICY,
        scale_up=replace(QUEUE_POLICY.scale_up, stabilization_window_seconds=60),
        scale_down=replace(QUEUE_POLICY.scale_down, stabilization_window_seconds=60),
    )
    down = MetricUnavailable("queue", "redis 10.0.0.1:6379/0: Connection refused")
    history = decide(policy, observe(2, queue(200)), History(), now=-120.0).history  # long settled at 2
    history = decide(policy, observe(2, queue(40)), history, now=-70.0).history
    history = decide(policy, observe(2, None, unavailable=(down,)), history, now=-10.0).history
    # Back with a deep queue: the held size (2) is no scale-up recommendation.
    back = decide(policy, observe(2, queue(200)), history, now=0.0)
    assert back.desired_replicas == 6, back.reason  # 200 / 20 -> 10, capped by +4 per 15 s


def test_a_pool_seen_for_the_first_time_does_not_shrink_on_its_first_reading() -> None:
    """An operator restart or failover forgets the history: like the HPA, the current size stands for it."""
    policy = replace(QUEUE_POLICY, scale_down=replace(QUEUE_POLICY.scale_down, stabilization_window_seconds=60))
    first = decide(policy, observe(8, queue(0)), History(), now=0.0)
    assert first.desired_replicas == 8
    assert "size held while metrics were unavailable or not yet read" in first.reason
    assert decide(policy, observe(8, queue(0)), first.history, now=59.0).desired_replicas == 8
    assert decide(policy, observe(8, queue(0)), first.history, now=61.0).desired_replicas == 1
    # And it may grow on its first reading.
    assert decide(policy, observe(2, queue(200)), History(), now=0.0).desired_replicas == 10


def test_in_flight_jobs_keep_their_replicas() -> None:
    policy = replace(
        QUEUE_POLICY,
        target_queue_depth_per_replica=100,
        scale_down=replace(QUEUE_POLICY.scale_down, stabilization_window_seconds=0),
    )
    # 40 jobs in flight at concurrency 5 occupy 8 replicas, though 40 / 100 -> 1.
    decision = decide(policy, observe(10, queue(0, active=40)), History(), now=0.0)
    assert decision.desired_replicas == 8
    assert "in-flight jobs occupy 8 replica(s)" in decision.reason


def test_scale_to_zero_after_the_window_and_wake_on_the_first_job() -> None:
    policy = replace(
        QUEUE_POLICY,
        min_replicas=0,
        target_cpu_utilization_percentage=50,
        scale_up=replace(QUEUE_POLICY.scale_up, stabilization_window_seconds=120),
        scale_down=replace(QUEUE_POLICY.scale_down, stabilization_window_seconds=60),
    )
    busy = decide(policy, observe(2, queue(30), cpu=CpuSample(0.5, 2)), History(), now=0.0)
    # Empty queue, but a recommendation of 2 is still in the window; idle CPU does not keep the pool.
    early = decide(policy, observe(2, queue(), cpu=CpuSample(0.05, 2)), busy.history, now=30.0)
    assert early.desired_replicas == 2
    idle = decide(policy, observe(2, queue(), cpu=CpuSample(0.05, 2)), early.history, now=61.0)
    assert idle.desired_replicas == 0
    # One job: the scale-up window (120 s of zeros) does not delay the wake.
    woken = decide(policy, observe(0, queue(1, added=1)), idle.history, now=70.0)
    assert woken.desired_replicas == 1
    assert woken.waking
    # A delayed job that is not due yet does not wake the pool.
    asleep = decide(policy, observe(0, queue(pending=5)), idle.history, now=70.0)
    assert asleep.desired_replicas == 0


def test_growing_queue_is_met_where_it_will_be() -> None:
    policy = replace(QUEUE_POLICY, max_replicas=50, forecast_horizon_seconds=30)
    history = History()
    decision: Decision | None = None
    # Arrivals at 20/s, 4 replicas finishing 8/s: the backlog grows 12/s.
    for second in range(0, 35, 5):
        backlog = 60 + 12 * second
        counts = queue(backlog - 20, active=20, added=20 * second)
        decision = decide(policy, observe(4, counts), history, now=float(second))
        history = decision.history
    assert decision is not None
    proposals = {p.metric: p.replicas for p in decision.proposals}
    # Backlog 420 -> 21 now; 420 + 12 * 30 = 780 in 30 s -> 39.
    assert proposals["queue"] == 21
    assert proposals["queue-forecast"] == 39
    assert decision.recommendation == 39


def test_a_trend_is_projected_no_further_than_its_history() -> None:
    policy = replace(
        QUEUE_POLICY, min_replicas=0, max_replicas=100, target_queue_depth_per_replica=3, forecast_horizon_seconds=30
    )
    # One job on an idle pool, seen 2 s after an empty poll: 0.5 jobs/s for
    # 2 s says one job more at most, not 15 in 30 s. One replica wakes.
    idle = decide(policy, observe(0, queue()), History(), now=0.0)
    woken = decide(policy, observe(0, queue(1, added=1)), idle.history, now=2.0)
    assert woken.desired_replicas == 1
    assert "queue growing 0.5/s: 2 jobs in 2s / 3 per replica -> 1" in woken.reason
    # A bulk add of 3000 between two polls 2 s apart: at most twice the backlog.
    bulk = decide(replace(policy, target_queue_depth_per_replica=100), observe(1, queue()), History(), now=0.0)
    seen = decide(
        replace(policy, target_queue_depth_per_replica=100), observe(1, queue(3000, added=3000)), bulk.history, 2.0
    )
    assert {p.metric: p.replicas for p in seen.proposals}["queue-forecast"] == 60


def test_arrivals_keep_a_pool_that_keeps_up() -> None:
    policy = replace(
        QUEUE_POLICY,
        target_queue_depth_per_replica=10,
        scale_down=replace(QUEUE_POLICY.scale_down, stabilization_window_seconds=0),
    )
    history = History()
    decision: Decision | None = None
    # 10 jobs/s, each 4 s on a worker: 40 in flight, nothing waiting. The
    # backlog alone (40 / 10) would shrink the pool from 10 to 4 and it
    # would fall behind; the arrivals say 10/s x 4 s / 5 per replica = 8.
    for second in range(0, 65, 5):
        decision = decide(policy, observe(10, queue(0, active=40, added=10 * second)), history, now=float(second))
        history = decision.history
    assert decision is not None
    assert {p.metric: p.replicas for p in decision.proposals}["queue"] == 4
    assert decision.desired_replicas == 8


# -- properties ----------------------------------------------------------------------

rules = st.builds(
    ScalingRule,
    type=st.sampled_from(RuleType),
    value=st.integers(1, 200),
    period_seconds=st.integers(1, 120),
)
behaviors = st.builds(
    ScalingRules,
    stabilization_window_seconds=st.integers(0, 300),
    policies=st.lists(rules, min_size=1, max_size=3).map(tuple),
    select_policy=st.sampled_from(SelectPolicy),
)


@st.composite
def policies(draw: st.DrawFn) -> ScalingPolicy:
    minimum = draw(st.integers(0, 5))
    queue_target = draw(st.none() | st.integers(1, 50))
    cpu_target = draw(st.integers(10, 120)) if queue_target is None else draw(st.none() | st.integers(10, 120))
    return ScalingPolicy(
        min_replicas=minimum,
        max_replicas=draw(st.integers(max(minimum, 1), 30)),
        target_queue_depth_per_replica=queue_target,
        target_cpu_utilization_percentage=cpu_target,
        tolerance=draw(st.sampled_from([0.0, 0.05, 0.1, 0.2])),
        # The HPA's defaults now and then: the only rules a backlog may pass in one poll.
        scale_up=draw(st.just(DEFAULT_SCALE_UP) | behaviors),
        terms=frozenset(draw(st.sets(st.sampled_from(sorted(ALL_TERMS))))),
        scale_down=draw(behaviors),
        forecast_horizon_seconds=draw(st.sampled_from([0.0, 15.0, 30.0])),
        rate_window_seconds=draw(st.sampled_from([10.0, 60.0])),
    )


@dataclass(frozen=True)
class Poll:
    gap: float
    queue: QueueCounts | None
    cpu: CpuSample | None
    outage: str | None  # a source reported unavailable this poll


@st.composite
def polls(draw: st.DrawFn) -> Poll:
    outage = draw(st.sampled_from([None, None, None, "queue", "cpu"]))
    counts = None
    if outage != "queue":
        counts = QueueCounts(
            waiting=draw(st.integers(0, 800)),
            prioritized=draw(st.integers(0, 50)),
            delayed_due=draw(st.integers(0, 50)),
            delayed_pending=draw(st.integers(0, 50)),
            active=draw(st.integers(0, 200)),
            added_total=draw(st.integers(0, 10_000)),
            paused=draw(st.integers(0, 9)) == 0,
        )
    cpu = None
    if outage != "cpu":
        cpu = CpuSample(
            utilization=draw(st.floats(0, 3)),
            ready_pods=draw(st.integers(0, 30)),
            unaccounted_pods=draw(st.integers(0, 3)),
        )
    return Poll(draw(st.floats(0.5, 90)), counts, cpu, outage)


@dataclass
class Log:
    """What the test itself saw, to check windows and rate limits independently."""

    recommendations: list[tuple[float, int]] = field(default_factory=list)
    #: The sizes the pool was held at (first sight, metrics unavailable): no shrinking below them for a window.
    holds: list[tuple[float, int]] = field(default_factory=list)
    events: list[tuple[float, int]] = field(default_factory=list)  # (time, change)

    def period_start(self, now: float, current: int, period: int) -> int:
        return current - sum(change for at, change in self.events if at > now - period)


def scale_up_limit(policy: ScalingPolicy, log: Log, now: float, current: int) -> int:
    rules = policy.scale_up
    if rules.select_policy is SelectPolicy.DISABLED:
        return current
    limits = []
    for rule in rules.policies:
        start = log.period_start(now, current, rule.period_seconds)
        if rule.type is RuleType.PODS:
            limits.append(start + rule.value)
        else:
            limits.append(math.ceil(round(start * (100 + rule.value) / 100, 9)))
    return max(limits) if rules.select_policy is SelectPolicy.MAX else min(limits)


def scale_down_limit(policy: ScalingPolicy, log: Log, now: float, current: int) -> int:
    rules = policy.scale_down
    if rules.select_policy is SelectPolicy.DISABLED:
        return current
    limits = []
    for rule in rules.policies:
        start = log.period_start(now, current, rule.period_seconds)
        if rule.type is RuleType.PODS:
            limits.append(start - rule.value)
        else:
            limits.append(math.floor(round(start * (100 - rule.value) / 100, 9)))
    return min(limits) if rules.select_policy is SelectPolicy.MAX else max(limits)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    policy=policies(),
    start=st.integers(0, 40),
    concurrency=st.integers(1, 10),
    trajectory=st.lists(polls(), min_size=1, max_size=25),
)
def test_invariants_hold_at_every_poll(
    policy: ScalingPolicy, start: int, concurrency: int, trajectory: list[Poll]
) -> None:
    history = History()
    log = Log()
    current = start
    now = 10_000.0
    for index, poll in enumerate(trajectory):
        now += poll.gap
        bounded = min(max(current, policy.min_replicas), policy.max_replicas)
        if index == 0:
            log.holds.append((now, bounded))  # first sight: the current size stands for the unseen window
        # The engine reads CPU only when the policy targets it.
        cpu_asked = policy.target_cpu_utilization_percentage is not None
        missing = poll.outage == "queue" or (poll.outage == "cpu" and cpu_asked)
        unavailable = (MetricUnavailable(poll.outage, "down"),) if missing and poll.outage else ()
        cpu = poll.cpu if cpu_asked else None
        observation = Observation(current, current, concurrency, queue=poll.queue, cpu=cpu, unavailable=unavailable)
        decision = decide(policy, observation, history, now)
        desired = decision.desired_replicas
        in_bounds = policy.min_replicas <= current <= policy.max_replicas
        counts = poll.queue
        # A queue paused in bullmq is as good as missing: its backlog is not being drained.
        held = missing or (counts is not None and counts.paused)

        # Always within [min, max].
        assert policy.min_replicas <= desired <= policy.max_replicas
        # A missing metric never shrinks the pool.
        if held and in_bounds:
            assert desired >= current, decision.reason
        if not held:
            log.recommendations.append((now, decision.recommendation))
        else:
            log.holds.append((now, bounded))
        if in_bounds and desired < current:
            # Stabilization: no lower than any recommendation in the scale-down window...
            window = policy.scale_down.stabilization_window_seconds
            assert all(desired >= r for at, r in log.recommendations if at > now - window), decision.reason
            # ...nor than the pool's size at any poll of that window that could not read its metrics.
            assert all(desired >= r for at, r in log.holds if at > now - window), decision.reason
            # Rate limit.
            assert desired >= min(current, scale_down_limit(policy, log, now, current)), decision.reason
            # In-flight jobs keep their replicas.
            assert counts is not None
            if Term.INFLIGHT_FLOOR in policy.terms:
                assert desired >= min(current, math.ceil(counts.active / concurrency)), decision.reason
        if in_bounds and desired > current:
            window = policy.scale_up.stabilization_window_seconds
            limit = scale_up_limit(policy, log, now, current)
            jumps = (
                Term.BACKLOG_JUMP in policy.terms
                and policy.scale_up == DEFAULT_SCALE_UP
                and policy.target_queue_depth_per_replica is not None
                and counts is not None
            )
            # A backlog jump goes past the rules, waking or not, but no further than the backlog alone asks for.
            need = 0
            if jumps:
                assert counts is not None and policy.target_queue_depth_per_replica is not None
                need = math.ceil(counts.backlog / policy.target_queue_depth_per_replica - 1e-9)
            if decision.waking:
                assert desired <= max(1, limit, need), decision.reason
            else:
                assert all(desired <= r for at, r in log.recommendations if at > now - window), decision.reason
                assert desired <= max(limit, need, current) if jumps else desired <= limit, decision.reason
        # The first runnable job wakes an idle pool at once.
        if current == 0 and counts is not None and not counts.paused and counts.pending > 0:
            assert desired >= 1

        history = decision.history
        if desired != current:
            history = history.scaled(now, current, desired)
            log.events.append((now, desired - current))
        current = desired


@settings(max_examples=300, deadline=None)
@given(
    policy=policies().filter(lambda p: p.tolerance > 0),
    data=st.data(),
    concurrency=st.integers(1, 10),
    gaps=st.lists(st.floats(1, 30), min_size=2, max_size=30),
)
def test_noise_inside_the_tolerance_never_moves_the_pool(
    policy: ScalingPolicy, data: st.DataObject, concurrency: int, gaps: list[float]
) -> None:
    replicas = data.draw(st.integers(max(policy.min_replicas, 1), policy.max_replicas))
    history = History()
    added = 0
    now = 0.0
    for gap in gaps:
        now += gap
        counts = None
        if policy.target_queue_depth_per_replica is not None:
            target = replicas * policy.target_queue_depth_per_replica
            backlog = data.draw(
                st.integers(math.ceil(target * (1 - policy.tolerance)), math.floor(target * (1 + policy.tolerance)))
            )
        else:
            backlog = data.draw(st.integers(1, 100))  # an empty queue would let a min-0 pool go idle
        active = data.draw(st.integers(0, min(backlog, replicas * concurrency)))
        added += data.draw(st.integers(0, 500))
        counts = QueueCounts(backlog - active, 0, 0, 0, active, added_total=added)
        cpu = None
        if policy.target_cpu_utilization_percentage is not None:
            wobble = data.draw(st.floats(-0.99, 0.99)) * policy.tolerance
            cpu = CpuSample(policy.target_cpu_utilization_percentage * (1 + wobble) / 100, replicas)
        decision = decide(policy, Observation(replicas, replicas, concurrency, counts, cpu), history, now)
        assert decision.desired_replicas == replicas, decision.reason
        history = decision.history
