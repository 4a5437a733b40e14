"""A queue's failed set: read without trusting the jobs' JSON, and retried with their attempts afresh.

bullmq's ``Queue.getJobs`` parses every job's stored JSON and raises on
the first one that does not parse, so one malformed job (a buggy producer,
a hand edit) would hide the whole failed set. Here the job hashes are read
with plain ``HGETALL``: a job whose fields do not parse is still listed,
with the fields named, and is never retried (it would fail again at once,
or crash the worker that picks it).

A retry is bullmq's own ``reprocessJob`` script, what ``Job.retry`` runs,
with the attempts made and started reset: the job goes back to ``wait``
(or ``prioritized``) and gets every attempt its options give it again.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from bullmq import Queue

#: Job hash fields bullmq parses as JSON when a worker takes the job.
JSON_FIELDS = ("data", "opts", "progress", "stacktrace")
#: Job hash fields bullmq parses as integers.
INTEGER_FIELDS = ("timestamp", "delay", "priority", "processedOn", "finishedOn", "atm", "ats", "stc")
#: Jobs read (or retried) per round trip: bounded memory and progress reports on big sets.
BATCH = 500

RetryOutcome = Literal["retried", "refused", "not_failed"]


@dataclass(frozen=True)
class FailedJob:
    """A job in the failed set, as ``falachefe-runtime failed`` shows it.

    ``malformed`` maps each field that does not parse to what is wrong with
    it; ``data`` is then the stored text, or ``None`` when it is that field.
    """

    id: str
    name: str
    failed_reason: str
    attempts_made: int
    finished_on: int
    data: Any
    malformed: Mapping[str, str] = field(default_factory=dict)
    lifo: bool = False


@dataclass(frozen=True)
class Selection:
    """Which failed jobs: by id, and/or by name, reason substring, or finished before a time (ms)."""

    ids: Sequence[str] = ()
    name: str | None = None
    reason_contains: str | None = None
    finished_before_ms: int | None = None

    def matches(self, job: FailedJob) -> bool:
        return (
            (self.name is None or job.name == self.name)
            and (self.reason_contains is None or self.reason_contains in job.failed_reason)
            and (self.finished_before_ms is None or job.finished_on < self.finished_before_ms)
        )


@dataclass
class RetryReport:
    """What a retry did, job by job."""

    retried: list[str] = field(default_factory=list)
    #: Job id -> why it was not retried (its malformed fields).
    refused: dict[str, str] = field(default_factory=dict)
    #: Ids asked for that are not in the failed set (no such job, not failed, retried meanwhile, removed).
    not_failed: list[str] = field(default_factory=list)


def _decoded(raw: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    """A hash as text, whichever way the client returns it (bullmq's decodes responses)."""
    return {_id(key): _id(value) for key, value in raw.items()}


def parse_job(job_id: str, hash_fields: Mapping[bytes | str, bytes | str]) -> FailedJob:
    """A job hash as ``FailedJob``; a field that does not parse is named in ``malformed``, never raised."""
    raw = _decoded(hash_fields)
    malformed: dict[str, str] = {}
    parsed: dict[str, Any] = {}
    for key in JSON_FIELDS:
        text = raw.get(key)
        if text is None:
            continue
        try:
            parsed[key] = json.loads(text)
        except ValueError:
            malformed[key] = "not valid JSON"
    numbers: dict[str, int] = {}
    for key in INTEGER_FIELDS:
        text = raw.get(key)
        if text is None or text == "":
            continue
        try:
            numbers[key] = int(text)
        except ValueError:
            malformed[key] = "not an integer"
    opts = parsed.get("opts", {})
    if not isinstance(opts, dict):
        malformed["opts"] = "not a JSON object"
        opts = {}
    return FailedJob(
        id=job_id,
        name=raw.get("name") or "",
        failed_reason=raw.get("failedReason") or "",
        attempts_made=numbers.get("atm", 0),
        finished_on=numbers.get("finishedOn", 0),
        data=parsed.get("data", raw.get("data") if "data" in malformed else None),
        malformed=malformed,
        lifo=bool(opts.get("lifo")),
    )


class FailedSet:
    """One queue's failed jobs, through the queue's own Redis connection and scripts."""

    def __init__(self, queue: Queue) -> None:
        self._queue = queue
        self._client = queue.client
        self._key = queue.keys["failed"]

    async def size(self) -> int:
        return int(await self._client.zcard(self._key))

    async def read(self, ids: Sequence[str]) -> list[FailedJob | None]:
        """The jobs ``ids`` in order, ``None`` for one whose hash is gone."""
        pipeline = self._client.pipeline(transaction=False)
        for job_id in ids:
            pipeline.hgetall(self._queue.toKey(job_id))
        hashes = await pipeline.execute()
        return [parse_job(job_id, raw) if raw else None for job_id, raw in zip(ids, hashes, strict=True)]

    async def newest(self, limit: int) -> list[FailedJob]:
        """The ``limit`` most recently failed jobs, newest first."""
        ids = [_id(raw) for raw in await self._client.zrevrange(self._key, 0, max(limit, 1) - 1)]
        return [job for job in await self.read(ids) if job is not None]

    async def batches(self) -> AsyncIterator[list[FailedJob]]:
        """Every failed job, newest first, ``BATCH`` at a time.

        Read by score (the time each failed) rather than by rank, so a job
        retried meanwhile does not shift the next batch past one unread.
        """
        bound: str = "+inf"
        seen: set[str] = set()
        while True:
            page = await self._client.zrevrangebyscore(self._key, bound, "-inf", start=0, num=BATCH, withscores=True)
            ids = [_id(raw) for raw, _ in page if _id(raw) not in seen]
            if not ids:
                return
            seen.update(ids)
            yield [job for job in await self.read(ids) if job is not None]
            # Jobs sharing the last score are re-read next time and skipped as seen.
            bound = f"{page[-1][1]:.0f}"

    async def retry(self, job: FailedJob) -> RetryOutcome:
        """Move ``job`` back to wait with fresh attempts; ``refused`` if malformed, ``not_failed`` if not in the set."""
        if job.malformed:
            return "refused"
        try:
            await self._queue.scripts.reprocessJob(
                _JobRef(job.id, {"lifo": job.lifo}), "failed", {"resetAttemptsMade": True, "resetAttemptsStarted": True}
            )
        except TypeError:
            # bullmq's "missing key" or "not in the failed state": retried, or removed, since it was read.
            return "not_failed"
        return "retried"


@dataclass(frozen=True)
class _JobRef:
    """What ``reprocessJob`` reads of a job: its id and whether it goes to the head of the list."""

    id: str
    opts: Mapping[str, Any]


def _id(raw: bytes | str) -> str:
    return raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw


def refusal(job: FailedJob) -> str:
    """Why a malformed job is not retried, naming its fields."""
    fields = ", ".join(f"{name}: {problem}" for name, problem in sorted(job.malformed.items()))
    return f"malformed job, not retried ({fields}); fix or remove it"


async def retry_selected(
    failed: FailedSet,
    selection: Selection,
    progress: Callable[[int, int, RetryReport], None] | None = None,
) -> RetryReport:
    """Retry the failed jobs ``selection`` picks; ``progress(examined, total, report)`` after each batch."""
    report = RetryReport()
    ids = list(dict.fromkeys(selection.ids))
    total = len(ids) if ids else await failed.size()
    examined = 0
    async for read, picked in _selected_batches(failed, selection, ids, report):
        for job in picked:
            outcome = await failed.retry(job)
            if outcome == "retried":
                report.retried.append(job.id)
            elif outcome == "refused":
                report.refused[job.id] = refusal(job)
            else:
                report.not_failed.append(job.id)
        examined += read
        if progress is not None:
            progress(examined, total, report)
    return report


async def _selected_batches(
    failed: FailedSet, selection: Selection, ids: list[str], report: RetryReport
) -> AsyncIterator[tuple[int, list[FailedJob]]]:
    """(jobs read, those selected) per batch."""
    if not ids:
        async for batch in failed.batches():
            yield len(batch), [job for job in batch if selection.matches(job)]
        return
    for start in range(0, len(ids), BATCH):
        chunk = ids[start : start + BATCH]
        jobs = await failed.read(chunk)
        report.not_failed.extend(job_id for job_id, job in zip(chunk, jobs, strict=True) if job is None)
        yield len(chunk), [job for job in jobs if job is not None and selection.matches(job)]
