"""The BullMQ queues: the seed's job options, enqueueing, and what each queue holds.

The original TypeScript app creates its queues with these default job
options (``seed/performance-strategy.md``, "Sistema de Queue Otimizado");
our producers use the same ones so a job behaves the same whichever side
enqueued it. The options travel with each job (BullMQ stores them in the
job hash), so the worker side needs no copy of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from bullmq import Queue
from bullmq.job import Job

from falachefe_runtime.config import DEFAULT_QUEUES, QueueSettings, WorkerKind
from falachefe_runtime.failed_jobs import FailedJob, FailedSet
from falachefe_runtime.redis_wire import use_fast_wire

WHATSAPP_QUEUE = DEFAULT_QUEUES[WorkerKind.AUTH]
CREW_QUEUE = DEFAULT_QUEUES[WorkerKind.CREW]
ADMIN_QUEUE = DEFAULT_QUEUES[WorkerKind.ADMIN]
#: Replies and one-time codes for the WhatsApp sender (the original app's
#: provider integration) to deliver; the runtime never calls the provider.
OUTBOUND_QUEUE = "whatsapp-outbound"
#: Every queue the runtime consumes or feeds: what ``falachefe-runtime queues`` lists.
ALL_QUEUES = (*DEFAULT_QUEUES.values(), OUTBOUND_QUEUE)

#: Failed jobs are kept by age (BullMQ's ``KeepJobs``, which Node bullmq
#: reads too), not by the seed's count of 50 or 25: a burst of failures
#: would delete the ones before it before anyone could retry them. Our
#: workers apply ``queues.failed_retention_days`` to every job they fail,
#: whatever its producer asked; this default is for jobs that a Node worker
#: fails.
KEEP_FAILED = QueueSettings().keep_failed
_RETRYING = {"attempts": 3, "removeOnComplete": 100, "removeOnFail": KEEP_FAILED}

#: The seed's ``defaultJobOptions`` per queue, but for ``removeOnFail``.
SEED_JOB_OPTIONS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        WHATSAPP_QUEUE: {**_RETRYING, "backoff": {"type": "exponential", "delay": 2000}},
        CREW_QUEUE: {**_RETRYING, "backoff": {"type": "exponential", "delay": 3000}},
        ADMIN_QUEUE: {"attempts": 2, "removeOnComplete": 50, "removeOnFail": KEEP_FAILED},
        OUTBOUND_QUEUE: {**_RETRYING, "backoff": {"type": "exponential", "delay": 2000}},
    }
)

#: Every state ``falachefe-runtime queues`` reports. ``paused`` holds the
#: waiting jobs of a paused queue; prioritized and delayed jobs are not in
#: ``wait`` (a depth that reads only ``wait`` undercounts).
COUNT_STATES = ("wait", "paused", "prioritized", "delayed", "active", "completed", "failed")
#: The states that are work still to do: the autoscaler's queue depth.
BACKLOG_STATES = ("wait", "paused", "prioritized", "delayed", "active")

#: BullMQ's maximum priority number (1 is the highest priority).
MAX_PRIORITY = 2_097_152


def job_options(
    queue: str, *, priority: int | None = None, delay_ms: int | None = None, job_id: str | None = None
) -> dict[str, Any]:
    """The seed's options for ``queue`` plus this job's priority, delay and id.

    A ``job_id`` makes the enqueue idempotent: BullMQ ignores an add whose id
    already exists in the queue.
    """
    options = dict(SEED_JOB_OPTIONS.get(queue, {}))
    if priority:
        if not 1 <= priority <= MAX_PRIORITY:
            raise ValueError(f"priority must be between 1 (highest) and {MAX_PRIORITY}, got {priority}")
        options["priority"] = priority
    if delay_ms:
        if delay_ms < 0:
            raise ValueError(f"delay_ms must not be negative, got {delay_ms}")
        options["delay"] = delay_ms
    if job_id is not None:
        if not job_id or job_id.isdigit() or ":" in job_id:
            # BullMQ reserves integer ids for its own counter and ':' for key paths.
            raise ValueError(f"job_id must be non-numeric and contain no ':', got {job_id!r}")
        options["jobId"] = job_id
    return options


def with_socket_timeout(url: str, seconds: float) -> str:
    """``url`` with redis-py's ``socket_timeout`` query option set (kept if already given)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.setdefault("socket_timeout", f"{seconds:g}")
    return urlunsplit(parts._replace(query=urlencode(query)))


def open_queue(name: str, url: str, prefix: str) -> Queue:
    """A bullmq ``Queue`` on the runtime's Redis connections (``redis_wire.FastWire``)."""
    queue = Queue(name, {"connection": url, "prefix": prefix})
    use_fast_wire(queue.client)
    return queue


@dataclass(frozen=True)
class PreparedJob:
    """A job built with its queue's options, not added yet.

    ``add`` adds it; a worker may instead add it in the same Redis round
    trip as the completion of the job that made it (``JobInfo.hand_off``).
    """

    queue: Queue
    job: Job

    @property
    def id(self) -> str | None:
        """The id it was given (``job_id=``), if any; bullmq numbers the others when they are added."""
        return None if self.job.id is None else str(self.job.id)

    async def add(self) -> str:
        """Add it (bullmq's ``Queue.add`` from its ``Job``); returns its id."""
        job_id = await self.queue.backend.addJob(self.job)
        self.job.id = job_id
        return str(job_id)


class Queues:
    """Producer side of the queues: one bullmq ``Queue`` per name, created on first use."""

    def __init__(self, redis_url: str, *, prefix: str = "bull", socket_timeout_s: float = 5.0) -> None:
        self._url = with_socket_timeout(redis_url, socket_timeout_s)
        self._prefix = prefix
        self._queues: dict[str, Queue] = {}

    def queue(self, name: str) -> Queue:
        if name not in self._queues:
            self._queues[name] = open_queue(name, self._url, self._prefix)
        return self._queues[name]

    async def enqueue(
        self,
        queue: str,
        job_name: str,
        data: Mapping[str, Any],
        *,
        priority: int | None = None,
        delay_ms: int | None = None,
        job_id: str | None = None,
    ) -> str:
        """Add a job with the seed's options; returns its id."""
        return await self.prepare(queue, job_name, data, priority=priority, delay_ms=delay_ms, job_id=job_id).add()

    def prepare(
        self,
        queue: str,
        job_name: str,
        data: Mapping[str, Any],
        *,
        priority: int | None = None,
        delay_ms: int | None = None,
        job_id: str | None = None,
    ) -> PreparedJob:
        """The job ``enqueue`` would add, built (as bullmq's ``Queue.add`` builds it) but not added."""
        target = self.queue(queue)
        options = {**target.jobsOpts, **job_options(queue, priority=priority, delay_ms=delay_ms, job_id=job_id)}
        return PreparedJob(target, Job(target, job_name, dict(data), options))

    async def counts(self, queue: str, states: tuple[str, ...] = COUNT_STATES) -> dict[str, int]:
        raw = await self.queue(queue).getJobCounts(*states)
        return {state: int(raw.get(state, 0)) for state in states}

    async def backlog(self, queue: str) -> int:
        """Jobs waiting, prioritized, delayed or running: the queue depth."""
        return sum((await self.counts(queue, BACKLOG_STATES)).values())

    def failed(self, queue: str) -> FailedSet:
        """``queue``'s failed set, to list and retry (read without trusting the jobs' JSON)."""
        return FailedSet(self.queue(queue))

    async def failed_jobs(self, queue: str, limit: int = 20) -> list[FailedJob]:
        """The most recently failed jobs, newest first, with the reason each failed."""
        return await self.failed(queue).newest(limit)

    async def close(self) -> None:
        for queue in self._queues.values():
            await queue.close()
        self._queues.clear()
