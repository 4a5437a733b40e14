"""From a raw BullMQ job to a typed handler call.

A queue carries several job names (``process-message``, ``request-link-code``,
...); each name has a ``Route``: the pydantic model its payload must match
and the coroutine that handles it. A job that cannot be routed or whose
payload does not validate will never succeed however often it is retried,
so it fails permanently (``PermanentJobError``) with a reason that names the
offending fields, and stays in the failed set for someone to inspect.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from falachefe_runtime.validation import describe_validation_error

P = TypeVar("P", bound=BaseModel)

#: What a handler returns: stored by BullMQ as the job's return value.
JobResult = dict[str, Any] | None


class PermanentJobError(Exception):
    """The job cannot succeed as it is: fail it now, do not retry it.

    ``reason`` is a short code (a metrics label); ``detail`` says what is
    wrong and how to fix it, never quoting secrets or personal data.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class JobLost(Exception):
    """The job is no longer this run's: its worker gave it back while stopping, or another worker holds it.

    Whatever the run computed is dropped: nothing may be stored or sent for
    it, since the job's next run (or its current owner) does that.
    """


@contextlib.asynccontextmanager
async def _unfenced() -> AsyncIterator[None]:
    yield


class HandOff(Protocol):
    """A job a handler hands off (``queues.PreparedJob``): its own id, if it has one, and how to add it alone."""

    @property
    def id(self) -> str | None: ...

    async def add(self) -> str: ...


@dataclass(frozen=True)
class JobInfo:
    """The job facts a handler may need besides its payload."""

    id: str
    name: str
    queue: str
    #: 1 for the first attempt.
    attempt: int
    max_attempts: int
    #: ``async with info.commit():`` around what a handler writes or sends
    #: once its slow part is done: raises ``JobLost`` unless the job is still
    #: this run's, and while inside, the worker neither gives the job back nor
    #: times it out. So a run the worker abandoned never writes after the
    #: job's next run started.
    commit: Callable[[], AbstractAsyncContextManager[None]] = field(default=_unfenced, repr=False, compare=False)
    #: What the handler added to the job's log line (see ``note``).
    notes: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    #: Jobs to add once the handler has returned (see ``hand_off``).
    handoffs: list[HandOff] = field(default_factory=list, compare=False, repr=False)

    def note(self, **fields: Any) -> None:
        """Add ``fields`` to the one line the worker logs when the job ends (never secrets or whole phones)."""
        self.notes.update(fields)

    def hand_off(self, job: HandOff) -> str:
        """Add ``job`` (a ``queues.PreparedJob``) once the handler returns; its id.

        The worker sends it in the Redis round trip that completes this job
        when it can (same Redis, a plain job), otherwise adds it right after
        the handler. A handler that raises hands nothing off. The job must
        carry its own id: adding it again (a retry, a repeat) adds nothing.
        """
        if not job.id:
            raise ValueError("a job handed off must have an id of its own (job_id=)")
        self.handoffs.append(job)
        return job.id


@dataclass(frozen=True)
class UnreadableData:
    """A job's ``data`` as read when its stored fields could not be decoded: what was wrong, field named."""

    problem: str


@dataclass(frozen=True)
class Route(Generic[P]):
    payload: type[P]
    handle: Callable[[P, JobInfo], Awaitable[JobResult]]

    def parse(self, data: Any) -> P:
        if isinstance(data, UnreadableData):
            raise PermanentJobError("invalid_payload", data.problem)
        try:
            return self.payload.model_validate(data)
        except ValidationError as error:
            # Located from the job's ``data``, as bullmq and the producer name it.
            raise PermanentJobError("invalid_payload", describe_validation_error(error, root="data")) from None


Routes = Mapping[str, Route[Any]]


def unknown_job(name: str, routes: Routes) -> PermanentJobError:
    expected = ", ".join(sorted(routes)) or "(none)"
    return PermanentJobError(
        "unknown_job", f"no handler for job name {name!r} on this queue; expected one of: {expected}"
    )
