"""The autoscaler's history: what it compacts, the stabilization windows cannot tell."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from falachefe_operator.scaling.history import History

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
