"""Metric outages as Event-worthy transitions: one when a source goes, one when it is back, none per poll."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from falachefe_operator.scaling.observation import MetricUnavailable
from falachefe_operator.scaling.outages import Failing, SourceBack, SourceDown, Transition, track

SOURCES = ("queue", "cpu")


def test_an_outage_is_one_transition_each_way() -> None:
    down = MetricUnavailable("queue", "redis 10.0.0.1:6379/0 queue bull:q: Connection refused", "cannot connect")
    state, changes = track({}, unavailable=(), answered=["queue"], now=0.0)
    assert (state, changes) == ({}, ())
    state, changes = track(state, unavailable=(down,), answered=[], now=2.0)
    assert changes == (SourceDown("queue", "cannot connect"),)
    for now in (4.0, 6.0, 150.0):
        state, changes = track(state, unavailable=(down,), answered=[], now=now)
        assert changes == ()
    state, changes = track(state, unavailable=(), answered=["queue"], now=152.0)
    assert changes == (SourceBack("queue", 150.0),)
    assert state == {}


def test_a_source_not_read_keeps_its_state() -> None:
    """CPU is not read on a pool of zero replicas: that says nothing about metrics.k8s.io."""
    down = MetricUnavailable("cpu", "metrics.k8s.io/v1beta1 is not served")
    state, _ = track({}, unavailable=(down,), answered=["queue"], now=0.0)
    state, changes = track(state, unavailable=(), answered=["queue"], now=5.0)
    assert (state, changes) == ({"cpu": Failing(0.0, 1)}, ())
    _, changes = track(state, unavailable=(), answered=["queue", "cpu"], now=9.0)
    assert changes == (SourceBack("cpu", 9.0),)


poll = st.fixed_dictionaries({source: st.sampled_from(["answered", "down", "not read"]) for source in SOURCES})


@given(polls=st.lists(st.tuples(st.floats(0.1, 60), poll), max_size=40), threshold=st.integers(1, 4))
def test_events_alternate_and_count_the_outages(polls: list[tuple[float, dict[str, str]]], threshold: int) -> None:
    state: dict[str, Failing] = {}
    now = 0.0
    seen: dict[str, list[tuple[float, Transition]]] = {source: [] for source in SOURCES}
    outages = {source: 0 for source in SOURCES}
    recoveries = {source: 0 for source in SOURCES}
    # Counted independently: the failed polls in a row (polls not reading a source do not break a run),
    # when the run began, and whether it reached the threshold.
    run = {source: 0 for source in SOURCES}
    began: dict[str, float] = {}
    for gap, sources in polls:
        now += gap
        unavailable = [MetricUnavailable(s, "down", "cause") for s, how in sources.items() if how == "down"]
        answered = [s for s, how in sources.items() if how == "answered"]
        state, changes = track(state, unavailable=unavailable, answered=answered, now=now, threshold=threshold)
        for change in changes:
            seen[change.source].append((now, change))
            if isinstance(change, SourceBack):  # it counts from the first failed poll of its run
                assert change.down_seconds == now - began[change.source]
        for source, how in sources.items():
            if how == "down":
                began.setdefault(source, now)
                run[source] += 1
                if run[source] == threshold:
                    outages[source] += 1
            elif how == "answered":
                if run[source] >= threshold:
                    recoveries[source] += 1
                run[source] = 0
                began.pop(source, None)
    for source in SOURCES:
        changes = [change for _, change in seen[source]]
        assert sum(isinstance(c, SourceDown) for c in changes) == outages[source]
        assert sum(isinstance(c, SourceBack) for c in changes) == recoveries[source]
        # Down, back, down, back...: never two of a kind in a row.
        assert all(type(a) is not type(b) for a, b in itertools.pairwise(changes))
        assert (source in state) == (run[source] > 0)
        if source in state:
            assert state[source].since == began[source]
            assert state[source].polls == run[source]


def test_a_blip_shorter_than_the_threshold_posts_nothing_and_the_outage_dates_from_its_first_failure() -> None:
    down = MetricUnavailable("cpu", "API server unreachable: TimeoutError")
    state, changes = track({}, unavailable=[down], answered=[], now=5.0, threshold=3)
    assert changes == ()
    state, changes = track(state, unavailable=[], answered=["cpu"], now=10.0, threshold=3)
    assert (state, changes) == ({}, ())  # one slow read: no Warning, and so no "back" either
    for now in (15.0, 20.0):
        state, changes = track(state, unavailable=[down], answered=[], now=now, threshold=3)
        assert changes == ()
    state, changes = track(state, unavailable=[down], answered=[], now=25.0, threshold=3)
    assert changes == (SourceDown("cpu", "API server unreachable: TimeoutError"),)
    _, changes = track(state, unavailable=[], answered=["cpu"], now=31.0, threshold=3)
    assert changes == (SourceBack("cpu", 16.0),)


def test_a_source_down_without_a_separate_cause_is_explained_by_its_message() -> None:
    """A CPU read says what went wrong in its message alone (it names no address): the Event must carry it."""
    _, transitions = track(
        {}, unavailable=[MetricUnavailable("cpu", "API server unreachable: TimeoutError")], answered=[], now=1.0
    )
    assert transitions == (SourceDown("cpu", "API server unreachable: TimeoutError"),)
