"""Metric outages as Event-worthy transitions: one when a source goes, one when it is back, none per poll."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from falachefe_operator.scaling.observation import MetricUnavailable
from falachefe_operator.scaling.outages import SourceBack, SourceDown, Transition, track

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
    assert (state, changes) == ({"cpu": 0.0}, ())
    _, changes = track(state, unavailable=(), answered=["queue", "cpu"], now=9.0)
    assert changes == (SourceBack("cpu", 9.0),)


poll = st.fixed_dictionaries({source: st.sampled_from(["answered", "down", "not read"]) for source in SOURCES})


@given(polls=st.lists(st.tuples(st.floats(0.1, 60), poll), max_size=40))
def test_events_alternate_and_count_the_outages(polls: list[tuple[float, dict[str, str]]]) -> None:
    state: dict[str, float] = {}
    now = 0.0
    seen: dict[str, list[tuple[float, Transition]]] = {source: [] for source in SOURCES}
    outages = {source: 0 for source in SOURCES}
    recoveries = {source: 0 for source in SOURCES}
    last_word: dict[str, str] = {}
    for gap, sources in polls:
        now += gap
        unavailable = [MetricUnavailable(s, "down", "cause") for s, how in sources.items() if how == "down"]
        answered = [s for s, how in sources.items() if how == "answered"]
        state, changes = track(state, unavailable=unavailable, answered=answered, now=now)
        for change in changes:
            seen[change.source].append((now, change))
        for source, how in sources.items():
            if how == "not read":
                continue
            # Counted independently: a new outage is a "down" after an "answered" (or after nothing).
            if how == "down" and last_word.get(source) != "down":
                outages[source] += 1
            if how == "answered" and last_word.get(source) == "down":
                recoveries[source] += 1
            last_word[source] = how
    for source in SOURCES:
        changes = [change for _, change in seen[source]]
        assert sum(isinstance(c, SourceDown) for c in changes) == outages[source]
        assert sum(isinstance(c, SourceBack) for c in changes) == recoveries[source]
        # Down, back, down, back...: never two of a kind in a row.
        assert all(type(a) is not type(b) for a, b in itertools.pairwise(changes))
        # Each return says how long since its outage began.
        for (went, down), (came, back) in itertools.pairwise(seen[source]):
            if isinstance(down, SourceDown) and isinstance(back, SourceBack):
                assert back.down_seconds == came - went
        assert (source in state) == (last_word.get(source) == "down")


def test_a_source_down_without_a_separate_cause_is_explained_by_its_message() -> None:
    """A CPU read says what went wrong in its message alone (it names no address): the Event must carry it."""
    _, transitions = track(
        {}, unavailable=[MetricUnavailable("cpu", "API server unreachable: TimeoutError")], answered=[], now=1.0
    )
    assert transitions == (SourceDown("cpu", "API server unreachable: TimeoutError"),)
