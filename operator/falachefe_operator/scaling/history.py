"""What the decision remembers between polls: recommendations, scale events, queue samples.

Immutable: ``decide`` returns the next history inside its ``Decision`` and
the caller keeps it, so the decision stays a pure function and the
simulation benchmark can replay it. Entries older than the policy's longest
window or period are dropped on every update, which bounds the size.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

from .rates import QueueSample


class _Timed(Protocol):
    @property
    def at(self) -> float: ...


_T = TypeVar("_T", bound=_Timed)


def since(entries: tuple[_T, ...], cutoff: float) -> tuple[_T, ...]:
    """The entries after ``cutoff``: a suffix, entries being recorded in time order (the same tuple if none older)."""
    for index, entry in enumerate(entries):
        if entry.at > cutoff:
            return entries[index:] if index else entries
    return ()


@dataclass(frozen=True)
class Recommendation:
    """The unstabilized replica count the metrics asked for at ``at``.

    ``held``: not the metrics' word but the size the pool was held at while
    they could not be read (a source unavailable, or no reading yet). It
    keeps the pool from shrinking for a scale-down window after the metrics
    come back, as if demand had stayed where the pool was, and never holds
    back a scale-up.
    """

    at: float
    replicas: int
    held: bool = False


@dataclass(frozen=True)
class ScaleEvent:
    """A change of the pool's replicas that the autoscaler made."""

    at: float
    from_replicas: int
    to_replicas: int

    @property
    def change(self) -> int:
        return self.to_replicas - self.from_replicas


@dataclass(frozen=True)
class History:
    recommendations: tuple[Recommendation, ...] = ()
    scale_events: tuple[ScaleEvent, ...] = ()
    queue_samples: tuple[QueueSample, ...] = ()

    def recording(
        self,
        now: float,
        keep_seconds: float,
        recommendation: int | None = None,
        sample: QueueSample | None = None,
        *,
        held: bool = False,
        samples_seconds: float | None = None,
    ) -> History:
        """This history plus what was seen at ``now``, minus what is older than ``keep_seconds``.

        Queue samples are kept for ``samples_seconds`` when given (the rate
        window, which alone reads them), not for the longest window: at the
        default 300 s scale-down window and 5 s polls, that is 12 samples a
        pool instead of 60 (measured at 1,000 resources: 84,577 samples held).

        A recommendation equal to the latest (same replicas, same ``held``)
        replaces it rather than joining it: the decision only asks for the
        highest or lowest over the last so many seconds, and any such window
        that holds an entry of a run of equal ones holds the run's latest too.
        A pool at rest keeps one entry, not one per poll of the window.
        """
        cutoff = now - keep_seconds
        recommendations = self.recommendations
        if recommendation is not None:
            latest = Recommendation(now, recommendation, held)
            if recommendations and (recommendations[-1].replicas, recommendations[-1].held) == (recommendation, held):
                recommendations = (*recommendations[:-1], latest)
            else:
                recommendations = (*recommendations, latest)
        samples = self.queue_samples
        if sample is not None:
            samples = (*samples, sample)
        return History(
            recommendations=since(recommendations, cutoff),
            scale_events=since(self.scale_events, cutoff),
            queue_samples=since(samples, cutoff if samples_seconds is None else now - samples_seconds),
        )

    def scaled(self, at: float, from_replicas: int, to_replicas: int) -> History:
        """This history plus a scale the caller actually made (the write succeeded)."""
        return replace(self, scale_events=(*self.scale_events, ScaleEvent(at, from_replicas, to_replicas)))

    def replicas_changed_since(self, cutoff: float) -> int:
        """The net change the autoscaler made after ``cutoff``: current minus this is the size then."""
        return sum(e.change for e in self.scale_events if e.at > cutoff)
