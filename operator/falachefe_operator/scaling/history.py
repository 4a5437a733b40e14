"""What the decision remembers between polls: recommendations, scale events, queue samples.

Immutable: ``decide`` returns the next history inside its ``Decision`` and
the caller keeps it, so the decision stays a pure function and the
simulation benchmark can replay it. Entries older than the policy's longest
window or period are dropped on every update, which bounds the size.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .rates import QueueSample


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
    ) -> History:
        """This history plus what was seen at ``now``, minus what is older than ``keep_seconds``."""
        cutoff = now - keep_seconds
        recommendations = self.recommendations
        if recommendation is not None:
            recommendations = (*recommendations, Recommendation(now, recommendation, held))
        samples = self.queue_samples
        if sample is not None:
            samples = (*samples, sample)
        return History(
            recommendations=tuple(r for r in recommendations if r.at > cutoff),
            scale_events=tuple(e for e in self.scale_events if e.at > cutoff),
            queue_samples=tuple(s for s in samples if s.at > cutoff),
        )

    def scaled(self, at: float, from_replicas: int, to_replicas: int) -> History:
        """This history plus a scale the caller actually made (the write succeeded)."""
        return replace(self, scale_events=(*self.scale_events, ScaleEvent(at, from_replicas, to_replicas)))

    def replicas_changed_since(self, cutoff: float) -> int:
        """The net change the autoscaler made after ``cutoff``: current minus this is the size then."""
        return sum(e.change for e in self.scale_events if e.at > cutoff)
