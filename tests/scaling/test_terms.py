"""The decision's terms beyond the HPA, by property (hypothesis): bounds, no flapping, monotone.

The queue target here is a wait (``target_queue_wait_seconds``), the depth
per replica derived from the measured service time, with every term on.
Counts are built the way bullmq reports them (the ``:id`` counter, jobs in
the system), so the rates and the service time are what the decision
measures, not numbers handed to it.
"""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from falachefe_operator.scaling.decision import decide, depth_per_replica
from falachefe_operator.scaling.history import History
from falachefe_operator.scaling.observation import Observation, QueueCounts
from falachefe_operator.scaling.policy import ALL_TERMS, ScalingPolicy, Term

POLL_SECONDS = 5.0


@st.composite
def wait_policies(draw: st.DrawFn) -> ScalingPolicy:
    minimum = draw(st.integers(0, 3))
    return ScalingPolicy(
        min_replicas=minimum,
        max_replicas=draw(st.integers(max(minimum, 1), 60)),
        target_queue_wait_seconds=draw(st.sampled_from([0.0, 2.0, 10.0, 30.0])),
        tolerance=draw(st.sampled_from([0.05, 0.1, 0.2])),
        terms=frozenset(draw(st.sets(st.sampled_from(sorted(ALL_TERMS))))),
    )


def steady(
    policy: ScalingPolicy, replicas: int, concurrency: int, *, waiting: int, actives: list[int], per_poll: int
) -> int:
    """Polls of a queue in steady state (as many finish as arrive); the last poll's desired replicas."""
    history = History()
    added = 0
    desired = replicas
    for index, active in enumerate(actives):
        added += per_poll
        counts = QueueCounts(waiting, 0, 0, 0, active, added_total=added)
        decision = decide(policy, Observation(replicas, replicas, concurrency, counts), history, index * POLL_SECONDS)
        history = decision.history
        desired = decision.desired_replicas
        assert policy.min_replicas <= desired <= policy.max_replicas, decision.reason
    return desired


@settings(max_examples=300, deadline=None)
@given(policy=wait_policies(), data=st.data(), concurrency=st.integers(1, 10))
def test_noise_inside_the_tolerance_never_moves_the_pool(
    policy: ScalingPolicy, data: st.DataObject, concurrency: int
) -> None:
    """Jobs in flight wobble inside the band around what the pool serves; the queue sits at the target."""
    replicas = data.draw(st.integers(max(policy.min_replicas, 1), policy.max_replicas))
    capacity = replicas * concurrency
    low = math.ceil(capacity * (1 - policy.tolerance / 2))
    assume(low <= capacity)
    actives = data.draw(st.lists(st.integers(low, capacity), min_size=2, max_size=30))
    per_poll = data.draw(st.integers(1, 200))
    # Little's law: the service time the decision will measure lies between these.
    rate = per_poll / POLL_SECONDS
    fastest, slowest = min(actives) / rate, max(actives) / rate
    # A queue that sits at the target depth for every service time in that range.
    depths = [depth_per_replica(policy, concurrency, s) for s in (fastest, slowest)]
    backlog = round(replicas * math.sqrt(depths[0] * depths[1]))
    assume(all(abs(backlog / (replicas * d) - 1) <= policy.tolerance * 0.9 for d in depths))
    waiting = backlog - max(actives)
    assume(waiting >= 0)
    # The backlog is the same at every poll: waiting + active is held there.
    # The first poll has no service time yet (so it sizes for no waiting);
    # from the second on, the pool must not move.
    history = History()
    added = 0
    for index, active in enumerate(actives):
        added += per_poll
        counts = QueueCounts(backlog - active, 0, 0, 0, active, added_total=added)
        decision = decide(policy, Observation(replicas, replicas, concurrency, counts), history, index * POLL_SECONDS)
        if index > 0:
            assert decision.desired_replicas == replicas, decision.reason
        history = decision.history


@settings(max_examples=300, deadline=None)
@given(
    policy=wait_policies(),
    concurrency=st.integers(1, 10),
    replicas=st.integers(1, 60),
    data=st.data(),
)
def test_more_backlog_never_asks_for_fewer_replicas(
    policy: ScalingPolicy, concurrency: int, replicas: int, data: st.DataObject
) -> None:
    replicas = min(max(replicas, policy.min_replicas), policy.max_replicas)
    earlier = data.draw(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 60), st.integers(0, 80)), max_size=12))
    last_active = data.draw(st.integers(0, 60))
    smaller = data.draw(st.integers(0, 400))
    larger = smaller + data.draw(st.integers(1, 400))
    arrivals = data.draw(st.integers(0, 80))

    def final(waiting: int) -> int:
        history = History()
        added = 0
        now = 0.0
        for index, (queued, active, arrived) in enumerate(earlier):
            added += arrived
            now = index * POLL_SECONDS
            counts = QueueCounts(queued, 0, 0, 0, active, added_total=added)
            history = decide(policy, Observation(replicas, replicas, concurrency, counts), history, now).history
        # More jobs waiting now: the same arrivals, so fewer of the earlier jobs finished.
        counts = QueueCounts(waiting, 0, 0, 0, last_active, added_total=added + arrivals)
        observation = Observation(replicas, replicas, concurrency, counts)
        decision = decide(policy, observation, history, now + POLL_SECONDS)
        assert policy.min_replicas <= decision.desired_replicas <= policy.max_replicas
        return decision.desired_replicas

    assert final(smaller) <= final(larger)


@settings(max_examples=200, deadline=None)
@given(
    policy=wait_policies(),
    concurrency=st.integers(1, 10),
    replicas=st.integers(1, 60),
    service_polls=st.integers(1, 12),
    slower=st.integers(1, 60),
    faster=st.integers(0, 60),
    waiting=st.integers(0, 50),
    polls=st.integers(2, 20),
)
def test_more_arrivals_of_the_same_jobs_never_ask_for_fewer_replicas(
    policy: ScalingPolicy,
    concurrency: int,
    replicas: int,
    service_polls: int,
    slower: int,
    faster: int,
    waiting: int,
    polls: int,
) -> None:
    """Two steady states with the same service time: the busier one gets at least as many replicas."""
    replicas = min(max(replicas, policy.min_replicas), policy.max_replicas)
    service = service_polls * POLL_SECONDS

    def at(per_poll: int) -> int:
        # Little's law: arrivals x service time are in flight.
        active = round(per_poll / POLL_SECONDS * service)
        return steady(policy, replicas, concurrency, waiting=waiting, actives=[active] * polls, per_poll=per_poll)

    assert at(slower) <= at(slower + faster)


def test_the_depth_follows_the_wait_target_and_the_measured_service_time() -> None:
    policy = ScalingPolicy(max_replicas=10, target_queue_wait_seconds=10)
    # 3 in flight per replica, each 5 s: 10 s of waiting is 6 more jobs queued behind them.
    assert depth_per_replica(policy, 3, 5.0) == 9.0
    # Nothing measured yet: size for no waiting at all.
    assert depth_per_replica(policy, 3, None) == 3.0
    # A depth target stays what it says.
    assert depth_per_replica(ScalingPolicy(max_replicas=10, target_queue_depth_per_replica=7), 3, 5.0) == 7


def test_jobs_that_got_ten_times_longer_are_seen_in_half_the_window() -> None:
    """2 replicas x 3 slots, 1.2 jobs/s of 4 s jobs; from 60 s on they take 40 s: nothing finishes, the queue grows."""
    policy = ScalingPolicy(max_replicas=40, target_queue_wait_seconds=10, rate_window_seconds=60)
    without = replace(policy, terms=ALL_TERMS - {Term.SERVICE_TIME_RISE})
    results = {}
    for name, chosen in (("with", policy), ("without", without)):
        history = History()
        added = 0
        decision = None
        for second in range(0, 75, 5):
            added += 6
            active, queued = (5, 0) if second < 60 else (6, 6 * (second - 55) // 5 - 1)
            counts = QueueCounts(queued, 0, 0, 0, active, added_total=added)
            decision = decide(chosen, Observation(2, 2, 3, counts), history, float(second))
            history = decision.history
        assert decision is not None
        results[name] = decision
    # The whole window still averages the fast jobs in: 6 s per job, 8 jobs per replica -> 23 / 8 -> 3.
    assert results["without"].desired_replicas == 3
    # Its later half (25 s, nothing finished since the change) says 11.5 s: 5.6 per replica -> 5.
    assert "arrivals 1.20/s x 11.46s per job" in results["with"].reason
    assert results["with"].desired_replicas == 5
