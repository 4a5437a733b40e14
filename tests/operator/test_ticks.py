"""The resource loops' timed waits end on a grid: passes falling due together run in one turn of the loop."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from falachefe_operator.controller import TICK_SECONDS, _on_tick

#: Event-loop clocks: seconds since boot, from a fresh machine to a year up.
DUE = st.floats(min_value=0.0, max_value=3.2e7, allow_nan=False)


@given(DUE)
def test_a_wait_never_ends_before_its_pass_is_due_nor_a_tick_after(due: float) -> None:
    when = _on_tick(due)
    assert when >= due
    assert when - due <= TICK_SECONDS * (1 + 1e-6)


@given(
    st.integers(min_value=0, max_value=320_000_000),
    st.floats(min_value=0.01, max_value=0.99),
    st.floats(min_value=0.01, max_value=0.99),
)
def test_passes_due_within_one_tick_wake_together(tick: int, first: float, second: float) -> None:
    assert _on_tick((tick + first) * TICK_SECONDS) == _on_tick((tick + second) * TICK_SECONDS)


@given(DUE)
def test_without_a_grid_a_wait_ends_when_its_pass_is_due(due: float) -> None:
    assert _on_tick(due, 0.0) == due
