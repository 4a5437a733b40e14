"""When a pool's metric sources stop answering and when they answer again.

A platform team learns of a metric outage from one Warning Event when the
source goes and one Normal Event when it is back, not from one per poll:
so the engine keeps, per pool, since when each source has been down, and
``track`` turns one poll into the transitions worth an Event.

A source neither read nor reported down in a poll (CPU on a pool of zero
replicas, or a poll that could not read the Deployment) keeps its state:
that poll says nothing about it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .observation import MetricUnavailable


@dataclass(frozen=True)
class SourceDown:
    """``source`` stopped answering; ``cause`` says why without naming its address or credentials."""

    source: str
    cause: str


@dataclass(frozen=True)
class SourceBack:
    """``source`` answered again after ``down_seconds`` without."""

    source: str
    down_seconds: float


Transition = SourceDown | SourceBack


def track(
    down_since: Mapping[str, float],
    *,
    unavailable: Sequence[MetricUnavailable],
    answered: Iterable[str],
    now: float,
) -> tuple[dict[str, float], tuple[Transition, ...]]:
    """The sources down after this poll (with since when), and what changed in it."""
    state = dict(down_since)
    transitions: list[Transition] = []
    for source in sorted(set(answered)):
        since = state.pop(source, None)
        if since is not None:
            transitions.append(SourceBack(source, now - since))
    for missing in unavailable:
        if missing.source not in state:
            state[missing.source] = now
            transitions.append(SourceDown(missing.source, missing.public_cause))
    return state, tuple(transitions)
