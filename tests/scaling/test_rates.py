"""Arrival and completion rates estimated from successive queue counts."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from falachefe_operator.scaling.rates import QueueSample, _summed, estimate_rates, flow


def sample(at: float, added: int, in_system: int, *, active: int = 0, backlog: int | None = None) -> QueueSample:
    return QueueSample(at, added, in_system, in_system if backlog is None else backlog, active)


def test_steady_noisy_queue() -> None:
    """Random arrivals averaging 10/s, served as they come: rates near 10/s, no trend."""
    rng = random.Random(7)
    samples = []
    added = 0
    for poll in range(13):  # a minute at 5 s polls
        if poll:
            added += sum(rng.random() < 0.5 for _ in range(100))  # binomial, mean 50 per 5 s
        in_flight = 20 + rng.randint(-6, 6)  # a jittery number of jobs in the system
        samples.append(sample(poll * 5.0, added, in_flight, active=in_flight))
    rates = estimate_rates(samples)
    assert rates is not None
    # The counter is exact, so the arrival rate is exactly what was added over the minute.
    assert rates.arrival_rate == pytest.approx(added / 60)
    assert rates.arrival_rate == pytest.approx(10.0, rel=0.1)
    growth = samples[-1].in_system - samples[0].in_system
    assert rates.completion_rate == pytest.approx((added - growth) / 60)
    assert abs(rates.backlog_growth_rate) < 0.3
    # Little's law: ~20 in flight / ~10 per second -> ~2 s per job.
    assert rates.service_time_seconds == pytest.approx(2.0, rel=0.2)


def test_noisy_arrivals_are_averaged_over_the_window() -> None:
    rng = random.Random(11)
    added = 0
    samples = [sample(0.0, 0, 0)]
    for poll in range(1, 13):
        added += rng.choice([0, 0, 30, 90])  # bursty: the mean is 30 per 5 s
        samples.append(sample(poll * 5.0, added, 0))
    rates = estimate_rates(samples)
    assert rates is not None
    assert rates.arrival_rate == pytest.approx(added / 60.0)
    assert 2.0 < rates.arrival_rate < 10.0


def test_growing_queue_without_completions() -> None:
    samples = [sample(t, 12 * int(t), 12 * int(t)) for t in (0.0, 5.0, 10.0, 15.0)]
    rates = estimate_rates(samples)
    assert rates is not None
    assert rates.arrival_rate == pytest.approx(12.0)
    assert rates.completion_rate == 0.0
    assert rates.backlog_growth_rate == pytest.approx(12.0)
    assert rates.service_time_seconds is None


def test_jobs_with_custom_ids_count_through_the_queue_growth() -> None:
    # The :id counter stands still (custom job ids) but the queue grows by 30 per poll.
    samples = [sample(t, 100, 30 * i) for i, t in enumerate((0.0, 5.0, 10.0))]
    rates = estimate_rates(samples)
    assert rates is not None
    assert rates.arrival_rate == pytest.approx(6.0)
    assert rates.completion_rate == 0.0


def test_draining_queue() -> None:
    # Nothing arrives, 40 jobs finish per 5 s.
    samples = [sample(t, 500, 200 - 8 * int(t), active=10) for t in (0.0, 5.0, 10.0, 15.0)]
    rates = estimate_rates(samples)
    assert rates is not None
    assert rates.arrival_rate == 0.0
    assert rates.completion_rate == pytest.approx(8.0)
    assert rates.backlog_growth_rate == pytest.approx(-8.0)
    assert rates.service_time_seconds == pytest.approx(10 / 8)


def test_counter_reset_discards_the_samples_before_it() -> None:
    # The queue was obliterated and recreated between 10 s and 15 s.
    samples = [sample(0.0, 1000, 5), sample(10.0, 1100, 5), sample(15.0, 3, 3), sample(20.0, 13, 3)]
    rates = estimate_rates(samples)
    assert rates is not None
    assert rates.window_seconds == 5.0
    assert rates.arrival_rate == pytest.approx(2.0)


def test_too_little_history_gives_no_rates() -> None:
    assert estimate_rates([]) is None
    assert estimate_rates([sample(0.0, 0, 0)]) is None
    assert estimate_rates([sample(0.0, 0, 0), sample(0.5, 10, 10)]) is None


def test_flow_between_two_polls_is_what_the_counters_add() -> None:
    # 30 added by id, the system grew by 10: 20 finished.
    assert flow(sample(0, 100, 50), sample(5, 130, 60)) == (30, 20)
    # Jobs added with custom ids do not move the counter: the growth is their arrival.
    assert flow(sample(0, 100, 50), sample(5, 100, 58)) == (8, 0)
    # A recreated queue resets the counter: never a negative arrival.
    assert flow(sample(0, 100, 50), sample(5, 3, 3)) == (0, 47)


@given(
    st.lists(st.floats(min_value=0.01, max_value=30.0), min_size=1, max_size=15),
    st.integers(0, 10**9),
    st.integers(0, 500),
    st.integers(0, 500),
    st.integers(0, 64),
    st.integers(-1, 14),
)
def test_a_queue_at_rest_gets_the_rates_the_sums_give(
    gaps: list[float], added: int, in_system: int, backlog: int, active: int, moved: int
) -> None:
    """The shortcut for a window whose counts never change gives what summing its pairs gives.

    ``moved``: one sample (if in range) has one count changed, so the general path runs too.
    """
    times = [1000.0]
    for gap in gaps:
        times.append(times[-1] + gap)
    window = [QueueSample(at, added, in_system, backlog, active) for at in times]
    if 0 <= moved < len(window):
        window[moved] = QueueSample(times[moved], added, in_system, backlog + 1, active)
    rates = estimate_rates(window)
    span = times[-1] - times[0]
    if span < 1.0:
        assert rates is None
        return
    assert rates is not None
    expected = _summed(window, span)
    assert rates.window_seconds == expected.window_seconds
    assert rates.arrival_rate == expected.arrival_rate
    assert rates.completion_rate == expected.completion_rate
    assert rates.backlog_growth_rate == pytest.approx(expected.backlog_growth_rate, abs=1e-9)
    assert rates.mean_active == pytest.approx(expected.mean_active, rel=1e-12)
