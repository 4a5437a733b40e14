"""The autoscaler's history: what it compacts, the stabilization windows cannot tell."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from falachefe_operator.scaling.decision import decide
from falachefe_operator.scaling.history import History
from falachefe_operator.scaling.observation import Observation, QueueCounts
from falachefe_operator.scaling.policy import ScalingPolicy
from falachefe_operator.scaling.rates import QueueSample

#: (seconds since the previous poll, recommendation, held)
polls = st.lists(st.tuples(st.floats(0.5, 30.0), st.integers(0, 4), st.booleans()), min_size=1, max_size=80)


def highest(entries: list[tuple[float, int, bool]], after: float) -> int | None:
    return max((r for at, r, _ in entries if at > after), default=None)


def lowest_unheld(entries: list[tuple[float, int, bool]], after: float) -> int | None:
    return min((r for at, r, h in entries if at > after and not h), default=None)


@given(polls, st.floats(1.0, 400.0), st.floats(1.0, 400.0))
def test_every_window_sees_the_same_highest_and_lowest_as_the_full_record(
    steps: list[tuple[float, int, bool]], keep: float, window: float
) -> None:
    history, now = History(), 0.0
    full: list[tuple[float, int, bool]] = []
    for gap, replicas, held in steps:
        now += gap
        history = history.recording(now, keep, replicas, held=held)
        full = [(at, r, h) for at, r, h in [*full, (now, replicas, held)] if at > now - keep]

        kept = [(r.at, r.replicas, r.held) for r in history.recommendations]
        assert highest(kept, now - window) == highest(full, now - window)
        assert lowest_unheld(kept, now - window) == lowest_unheld(full, now - window)
        assert bool(kept) == bool(full)


def test_a_pool_at_rest_keeps_one_entry() -> None:
    history = History()
    for poll in range(60):
        history = history.recording(5.0 * poll, 300.0, 2)
    assert [(r.at, r.replicas) for r in history.recommendations] == [(295.0, 2)]
    history = history.recording(300.0, 300.0, 3)
    history = history.recording(305.0, 300.0, 2)
    assert [(r.at, r.replicas) for r in history.recommendations] == [(295.0, 2), (300.0, 3), (305.0, 2)]


def test_queue_samples_are_kept_for_their_own_window() -> None:
    history = History()
    for poll in range(60):
        sample = QueueSample(5.0 * poll, poll, 0, 0, 0)
        history = history.recording(5.0 * poll, 300.0, 1, sample, samples_seconds=60.0)
    assert [s.at for s in history.queue_samples] == [5.0 * poll for poll in range(48, 60)]
    assert len(history.recommendations) == 1  # the recommendations keep their own (longer) window


#: Per poll: seconds since the previous one, jobs added, jobs finished, jobs active.
traffic = st.lists(
    st.tuples(st.floats(1.0, 20.0), st.integers(0, 40), st.integers(0, 40), st.integers(0, 12)),
    min_size=2,
    max_size=60,
)


@settings(deadline=None)
@given(traffic, st.sampled_from([20.0, 60.0, 120.0]))
def test_trimming_queue_samples_to_the_rate_window_changes_no_decision(
    polls: list[tuple[float, int, int, int]], rate_window: float
) -> None:
    """The decision reads queue samples of its rate window alone: a history that
    kept every sample of its longest window (300 s) decides the same."""
    policy = ScalingPolicy(max_replicas=30, target_queue_depth_per_replica=5, rate_window_seconds=rate_window)
    trimmed, kept = History(), History()
    every: list[QueueSample] = []
    now, added, in_system, current = 0.0, 0, 0, 1
    for gap, arrived, finished, active in polls:
        now += gap
        added += arrived
        in_system = max(0, in_system + arrived - finished)
        counts = QueueCounts(max(0, in_system - active), 0, 0, 0, min(active, in_system), added_total=added)
        observation = Observation(current_replicas=current, ready_replicas=current, concurrency=3, queue=counts)
        a = decide(policy, observation, trimmed, now)
        b = decide(policy, observation, kept, now)
        assert (a.desired_replicas, a.reason, a.rates) == (b.desired_replicas, b.reason, b.rates)
        every = [s for s in [*every, QueueSample.from_counts(now, counts)] if s.at > now - policy.history_seconds]
        trimmed, kept = a.history, replace(b.history, queue_samples=tuple(every))
        assert all(s.at > now - rate_window for s in trimmed.queue_samples)
        current = a.desired_replicas
