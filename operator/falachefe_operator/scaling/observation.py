"""What the autoscaler saw in one polling interval, as plain values.

The readers (``queue``, ``cpu``) produce these; the decision consumes them.
A source that could not be read is a ``MetricUnavailable`` with a message,
never an exception: the decision holds the pool's size instead.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricUnavailable:
    """A metric source that did not answer, and what went wrong (no secrets).

    ``message`` may say where the source is (the Redis host) for the
    resource's status; ``cause`` says what went wrong in words that name no
    address and hold nothing of a URL, for Events (which more people may
    read, and which outlive a fix of the URL). Left empty when ``message``
    is already such words.
    """

    source: str  # "queue" or "cpu"
    message: str
    cause: str = ""

    def __str__(self) -> str:
        return f"{self.source} unavailable: {self.message}"

    @property
    def public_cause(self) -> str:
        return self.cause or self.message


@dataclass(frozen=True)
class QueueCounts:
    """A bullmq queue's jobs by state, counted the way bullmq's ``getJobCounts`` does.

    ``added_total`` is bullmq's ``<prefix>:<queue>:id`` counter, incremented
    for every job added without a custom id; its deltas are the arrivals.
    """

    waiting: int  # the wait list (and a legacy paused list, if any)
    prioritized: int
    delayed_due: int  # delayed jobs whose time has come: runnable now
    delayed_pending: int  # delayed jobs still in the future: not backlog yet
    active: int  # in flight on some worker
    added_total: int = 0
    paused: bool = False

    @property
    def pending(self) -> int:
        """Jobs that could start now if a worker were free."""
        return self.waiting + self.prioritized + self.delayed_due

    @property
    def backlog(self) -> int:
        """The queue depth the pool is sized for: runnable plus in-flight jobs."""
        return self.pending + self.active

    @property
    def in_system(self) -> int:
        """Every job added and not finished, for the completion count."""
        return self.backlog + self.delayed_pending


@dataclass(frozen=True)
class CpuSample:
    """CPU use of a pool's pods against their requests, as the HPA measures it.

    ``utilization`` is sum(usage) / sum(requests) over ``ready_pods`` only
    (1.0 means the pods use exactly what they requested). Pods that are not
    Ready yet, or Ready but without a metrics sample yet, are
    ``unaccounted_pods``: they are neither idle nor busy, just unknown.
    """

    utilization: float
    ready_pods: int
    unaccounted_pods: int = 0


@dataclass(frozen=True)
class Observation:
    """One polling interval's inputs to the decision."""

    current_replicas: int  # spec.replicas of the Deployment (its scale subresource)
    ready_replicas: int
    concurrency: int  # jobs one replica runs at once (the workers' concurrency)
    queue: QueueCounts | None = None  # None: unavailable (see ``unavailable``)
    cpu: CpuSample | None = None  # None: unavailable, or not asked for
    unavailable: tuple[MetricUnavailable, ...] = ()
