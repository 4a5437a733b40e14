"""Arrival and completion rates of a queue, from successive counts.

bullmq keeps no completion counter that survives ``removeOnComplete`` (the
``:completed`` set is trimmed), and its ``:events`` stream is capped at
~10 000 entries, which a busy queue overruns between two polls. What it does
keep exactly is the ``:id`` counter, INCR'd for every job added without a
custom id. So, between two samples:

- arrivals   = max(id delta, growth of the jobs in the system): the second
  term covers jobs added with a custom id, which do not bump the counter;
- completions = arrivals - growth of the jobs in the system (finished or
  failed for good; a retry goes back to delayed/wait and stays in the system).

Rates are totals over the window divided by its span, so a noisy poll is
averaged out rather than trusted; the backlog trend is a least-squares slope
for the same reason. The mean number of jobs in flight over the window,
divided by the completion rate, is the mean service time (Little's law),
learnt from the pool itself rather than configured.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from .observation import QueueCounts

#: Below this span the counts are too close together to make a rate of.
MIN_SPAN_SECONDS = 1.0


@dataclass(frozen=True)
class QueueSample:
    """The counts behind the rates, taken at ``at`` (monotonic seconds)."""

    at: float
    added_total: int
    in_system: int
    backlog: int
    active: int

    @classmethod
    def from_counts(cls, at: float, counts: QueueCounts) -> QueueSample:
        return cls(at, counts.added_total, counts.in_system, counts.backlog, counts.active)


@dataclass(frozen=True)
class QueueRates:
    """A queue's flow over the last ``window_seconds``, in jobs per second."""

    window_seconds: float
    arrival_rate: float
    completion_rate: float
    backlog_growth_rate: float
    mean_active: float

    @property
    def service_time_seconds(self) -> float | None:
        """Mean time a job spends on a worker, or None when nothing completed."""
        if self.completion_rate <= 0 or self.mean_active <= 0:
            return None
        return self.mean_active / self.completion_rate


def flow(before: QueueSample, after: QueueSample) -> tuple[int, int]:
    """Jobs added and jobs finished (or failed for good) between two samples.

    A reset ``:id`` counter (the queue was recreated) counts only the growth
    of the jobs in the system as arrivals.
    """
    growth = after.in_system - before.in_system
    added = max(after.added_total - before.added_total, growth, 0)
    return added, max(added - growth, 0)


def estimate_rates(samples: Sequence[QueueSample]) -> QueueRates | None:
    """Rates over ``samples`` (oldest first), or None if they span too little time.

    Samples from before a reset of the ``:id`` counter (the queue was
    obliterated and recreated) are ignored: the counter cannot go back.
    """
    start = 0
    for index in range(1, len(samples)):
        if samples[index].added_total < samples[index - 1].added_total:
            start = index
    window = samples[start:]
    if len(window) < 2:
        return None
    span = window[-1].at - window[0].at
    if span < MIN_SPAN_SECONDS:
        return None
    first = window[0]
    if all(
        s.added_total == first.added_total
        and s.in_system == first.in_system
        and s.backlog == first.backlog
        and s.active == first.active
        for s in window
    ):
        # A queue at rest (most pools, most polls): nothing came or went, the backlog is flat,
        # and as many jobs were in flight throughout. What ``_summed`` comes to, without the sums.
        return QueueRates(span, 0.0, 0.0, 0.0, float(first.active))
    return _summed(window, span)


def _summed(window: Sequence[QueueSample], span: float) -> QueueRates:
    """The rates from each pair of successive samples, summed over the window."""
    arrivals = 0
    completions = 0
    active_time = 0.0
    for before, after in itertools.pairwise(window):
        added, finished = flow(before, after)
        arrivals += added
        completions += finished
        active_time += (before.active + after.active) / 2 * (after.at - before.at)
    return QueueRates(
        window_seconds=span,
        arrival_rate=arrivals / span,
        completion_rate=completions / span,
        backlog_growth_rate=_slope([s.at for s in window], [float(s.backlog) for s in window]),
        mean_active=active_time / span,
    )


def _slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys over xs (xs not all equal)."""
    mean_x = sum(xs) / len(xs)
    mean_y = sum(ys) / len(ys)
    covariance = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    variance = sum((x - mean_x) ** 2 for x in xs)
    return covariance / variance if variance > 0 else 0.0
