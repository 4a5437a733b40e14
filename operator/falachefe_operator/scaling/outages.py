"""When a pool's metric sources stop answering and when they answer again.

A platform team learns of a metric outage from one Warning Event when the
source goes and one Normal Event when it is back, not from one per poll:
so the engine keeps, per pool, since when each source has been down, and
``track`` turns one poll into the transitions worth an Event.

A read that fails once is not an outage: one slow answer of a shared read
(metrics.k8s.io for a whole namespace, read once for every pool in it)
would otherwise post two Events for every pool, 4,000 at 1,000 resources.
A source is announced down when it has failed ``threshold`` polls in a row,
and announced back only if it was announced down; its outage is dated from
its first failed poll. The decision does not wait for the announcement: a
pool whose metric is missing holds its size from the first failed poll.

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


@dataclass(frozen=True)
class Failing:
    """A source failing since ``since``, for ``polls`` polls in a row (announced down once they reach the threshold)."""

    since: float
    polls: int = 1


def track(
    failing: Mapping[str, Failing],
    *,
    unavailable: Sequence[MetricUnavailable],
    answered: Iterable[str],
    now: float,
    threshold: int = 1,
) -> tuple[dict[str, Failing], tuple[Transition, ...]]:
    """The sources failing after this poll, and the transitions worth an Event in it."""
    state = dict(failing)
    transitions: list[Transition] = []
    for source in sorted(set(answered)):
        was = state.pop(source, None)
        if was is not None and was.polls >= threshold:
            transitions.append(SourceBack(source, now - was.since))
    for missing in unavailable:
        was = state.get(missing.source)
        state[missing.source] = now_failing = Failing(now) if was is None else Failing(was.since, was.polls + 1)
        if now_failing.polls == threshold:
            transitions.append(SourceDown(missing.source, missing.public_cause))
    return state, tuple(transitions)
