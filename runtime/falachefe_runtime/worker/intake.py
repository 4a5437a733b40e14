"""Taking a job off Redis: a job whose stored fields cannot be read still gets a verdict.

bullmq decodes a job's hash (``data``, ``opts``, ...) with ``json.loads``
right after the Lua script has moved it to ``active`` and locked it. When
that raises (a producer wrote something that is not JSON), bullmq reports a
worker error and drops the job on the floor: it stays in ``active`` until
its lock expires, the stalled check puts it back, and the next worker trips
on it again, holding a concurrency slot each time, for ever.

``JobIntake`` catches that: when bullmq's decoding raises (and before it,
when ``data`` is larger than a job may carry) it finds which fields are at
fault; each is replaced by a harmless value and
the job's ``data`` becomes an ``UnreadableData`` naming the field; the
router fails such a job at once and for good (``PermanentJobError``), so it
lands in the failed set with the field named, on its first attempt.

Jobs taken with the completion of another (``fetch_next``) go through the
same decoding, and carry the same token, as fetched ones.

The intake names the pod it runs in (``holder``) in every lock token it
takes jobs with (bullmq's tokens are ``<worker id>:<n>``, the worker id
becomes ``<pod>/<random>``): whoever reads a job's lock in Redis, the
operator choosing which pods scale-in removes, knows which pod runs it.

The intake also applies the runtime's retention of failed jobs to every job
it takes, whoever produced it: the original app's producers ask for
``removeOnFail: 50`` (a count), which deletes failures before anyone can
look at them. The option is read when the job fails, by the worker that
fails it, so the worker's choice is the one that holds.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from bullmq.job import Job

from falachefe_runtime.config import LOCK_HOLDER_SEPARATOR
from falachefe_runtime.worker.fetch_next import FetchNextWorker
from falachefe_runtime.worker.routing import UnreadableData

#: The most a job's ``data`` may hold, as stored: ten times the largest valid
#: payload; anything above is refused before it is decoded.
MAX_DATA_BYTES = 1 << 20
#: The hash fields bullmq decodes as JSON, and what stands in for one that does not decode.
_JSON_FIELDS = {"data": "null", "opts": "{}", "progress": "0", "stacktrace": "[]", "parent": None}


def readable(raw: dict[str, Any], max_data_bytes: int = MAX_DATA_BYTES) -> tuple[dict[str, Any], str | None]:
    """``raw`` (a job's hash) with every field bullmq decodes made decodable, and what was wrong, if anything.

    The problem names the field and says what is wrong with it, never quoting it.
    """
    fixed = dict(raw)
    problems: list[str] = []
    size = _oversized(raw.get("data"), max_data_bytes)
    if size is not None:
        problems.append(f"data: {size} bytes, more than the {max_data_bytes} a job may carry")
        fixed["data"] = _JSON_FIELDS["data"]
    for field, stand_in in _JSON_FIELDS.items():
        value = fixed.get(field)
        if value is None:
            continue
        try:
            json.loads(value)
        except (TypeError, ValueError) as error:
            problems.append(f"{field}: not valid JSON ({_json_problem(error)})")
            if stand_in is None:
                del fixed[field]
            else:
                fixed[field] = stand_in
    return fixed, "; ".join(problems) or None


def _oversized(data: object, max_bytes: int) -> int | None:
    """``data``'s size in bytes if it is over ``max_bytes``; counted only when its length leaves a doubt."""
    if not isinstance(data, str) or len(data) * 4 <= max_bytes:  # UTF-8: at most 4 bytes a character
        return None
    size = len(data.encode("utf-8", "surrogatepass"))
    return size if size > max_bytes else None


def _json_problem(error: Exception) -> str:
    """Where and why JSON did not decode, without the text around it."""
    if isinstance(error, json.JSONDecodeError):
        return f"{error.msg} at line {error.lineno} column {error.colno}"
    return type(error).__name__


class JobIntake(FetchNextWorker):
    """A bullmq ``Worker`` that gives every job it takes a verdict and the runtime's failed-job retention.

    Every job: the ones it fetches and the ones it takes while completing another (``FetchNextWorker``).
    """

    def __init__(self, *args: Any, keep_failed: dict[str, int], holder: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._keep_failed = keep_failed
        if holder:
            # Read by bullmq's run loop for every token it makes (``f"{self.id}:{n}"``).
            self.id = f"{holder}{LOCK_HOLDER_SEPARATOR}{uuid.uuid4().hex[:12]}"

    async def nextJobFromJobData(  # bullmq's name
        self,
        job_data: dict[str, Any] | None = None,
        job_id: str | None = None,
        limit_until: int = 0,
        delay_until: int = 0,
        token: str | None = None,
    ) -> Job | None:
        # The common case decodes once, in bullmq; a job's fields are inspected
        # only when its data is too long or bullmq could not decode them.
        problem = None
        if job_data and _oversized(job_data.get("data"), MAX_DATA_BYTES) is not None:
            job_data, problem = readable(job_data)
        try:
            job: Job | None = await super().nextJobFromJobData(job_data, job_id, limit_until, delay_until, token)
        except (TypeError, ValueError):  # json.JSONDecodeError is a ValueError
            if not job_data:
                raise
            job_data, problem = readable(job_data)
            if problem is None:  # not a field's fault: bullmq's own error stands
                raise
            job = await super().nextJobFromJobData(job_data, job_id, limit_until, delay_until, token)
        if job is not None:
            job.opts["removeOnFail"] = dict(self._keep_failed)
            if problem is not None:
                job.data = UnreadableData(problem)
        return job
