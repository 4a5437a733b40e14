"""Completing a job and taking the next one in one Redis round trip, as the Node bullmq worker does.

Python bullmq 3.4.4's worker completes a job with ``moveToFinished``
(``fetch_next=False``) and then takes the next with a separate
``moveToActive``: two Lua scripts, two round trips, per job. The
``moveToFinished`` script can do both: with its "fetch next" argument set
it completes the job, then runs the same ``fetchNextJob`` steps as
``moveToActive`` (promote due delayed jobs, respect a paused or rate-limited
queue, pop ``wait`` then ``prioritized``) and locks the job it took with the
*same* token, and the same ``lockDuration``, as the job it completed. It
returns what ``moveToActive`` returns: ``[job hash, job id, rate-limit ttl,
next delayed timestamp]``, or ``0`` when it found nothing and no job is
delayed (``moveToActive`` never answers ``0``).

``FetchNextWorker.processJob`` is bullmq 3.4.4's ``Worker.processJob`` with
that argument set and the next job as its result. bullmq's run loop already
takes whatever a finished task returns as a job to process (its fetch tasks
return jobs the same way), so the next job takes the finished one's
concurrency slot and the run loop starts no fetch of its own for it. The
job is decoded by ``nextJobFromJobData``, as a fetched one is (a subclass's
checks apply), tracked for lock renewal when it starts, and counted by the
stalled check like any active job.

A job is fetched this way only while the worker is neither closing nor
paused; one that arrives after the worker began closing or pausing (the
request was sent before) goes straight back to the queue, without spending
an attempt: a closing worker would otherwise shut its connection under it,
and a paused one would hold it unprocessed until its lock expired.

Only the completion fetches: a failed job still takes two round trips
(failures are rare, and bullmq's failure path retries and delays as well).

The override follows bullmq's code, not a public API: it is used only on
the version it was written against (``WRITTEN_AGAINST``); any other version
runs bullmq's own ``processJob`` and says so. ``tests/runtime/
test_fetch_next.py`` fails when the installed version, or the script's
answer, changes.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import bullmq
from bullmq import DelayedError, UnrecoverableError, Worker
from bullmq.custom_errors import WaitingChildrenError
from bullmq.job import Job

log = logging.getLogger(__name__)

#: The bullmq version whose ``Worker.processJob`` and ``moveToFinished`` script this module follows.
WRITTEN_AGAINST = "3.4.4"


class FetchNextWorker(Worker):  # type: ignore[misc]  # bullmq is untyped
    """A bullmq ``Worker`` whose completion of a job also takes the next one (``fetch_next``, on by default)."""

    def __init__(self, *args: Any, fetch_next: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if fetch_next and bullmq.__version__ != WRITTEN_AGAINST:
            log.warning(
                "bullmq is not the version the one-round-trip completion was written against; "
                "completing and fetching separately",
                extra={"bullmq": bullmq.__version__, "written_against": WRITTEN_AGAINST},
            )
            fetch_next = False
        #: Whether completing a job takes the next one (off: bullmq's two round trips).
        self.fetch_next = fetch_next

    async def processJob(self, job: Job, token: str) -> Job | None:  # bullmq's name
        if not self.fetch_next:
            await super().processJob(job, token)
            return None
        # bullmq 3.4.4's Worker.processJob from here, but for the moveToCompleted call and the return value.
        taken: list[Any] | None = None
        try:
            for option in ("removeOnComplete", "removeOnFail"):
                if option not in job.opts and option in self.opts:
                    job.opts[option] = self.opts[option]

            self.jobs.add((job, token))
            controller = self.lockManager.track_job(
                job.id,
                token,
                int(time.time() * 1000),
                should_create_controller=self._processor_wants_signal,
            )

            if job.deferredFailure:
                await job.moveToFailed(UnrecoverableError(job.deferredFailure), token)
                self.emit("failed", job, UnrecoverableError(job.deferredFailure))
                return None

            if controller is not None:
                result = await self.processor(job, token, controller.signal)
            else:
                result = await self.processor(job, token)
            if not self.forceClosing:
                fetch = not (self.closing or self.paused)
                moved = await self.backend.moveToCompleted(
                    job, result, job.opts.get("removeOnComplete", False), token, fetch_next=fetch
                )
                job.returnvalue = result
                job.attemptsMade = job.attemptsMade + 1
                if fetch:
                    taken = moved["result"]
            self.emit("completed", job, result)
        except (DelayedError, WaitingChildrenError):
            return None
        except Exception as err:
            await self._failed(job, token, err)
            if taken is not None and taken[1]:  # completed, then a listener raised: keep no job unprocessed
                await self._give_back(str(taken[1]), token)
            return None
        finally:
            self.jobs.discard((job, token))
            self.lockManager.untrack_job(job.id)
        return await self._next(taken, token)

    async def _failed(self, job: Job, token: str, err: Exception) -> None:
        """bullmq 3.4.4's failure path of ``processJob``, unchanged."""
        try:
            if not self.forceClosing:
                await job.moveToFailed(err, token)

            self.emit("failed", job, err)
        except Exception as error:
            self.emit("error", error, job)

    async def _next(self, taken: list[Any] | None, token: str) -> Job | None:
        """The job ``moveToFinished`` took (``[hash, id, rate-limit ttl, delayed until]``), as ``moveToActive``'s."""
        if taken is None:
            return None
        job_data, job_id, limit_until, delay_until = taken
        try:
            # None for all four when the script answered 0 (nothing to take, nothing delayed).
            job: Job | None = await self.nextJobFromJobData(
                job_data, job_id, int(limit_until or 0), int(delay_until or 0), token
            )
        except Exception as error:  # as a fetch's error: reported, and the slot fetches anew
            self.emit("error", error)
            return None
        if job is None:
            return None
        if self.closing or self.paused:
            await self._give_back(str(job.id), token)
            return None
        self.emit("active", job, "waiting")
        return job

    async def _give_back(self, job_id: str, token: str) -> None:
        """Return a job taken as the worker began closing or pausing: due at once, no attempt spent."""
        try:
            await self.backend.moveToDelayed(job_id, int(time.time() * 1000), 0, token, {"skipAttempt": True})
        except Exception as error:  # it stays active; the stalled check returns it once its lock expires
            self.emit("error", error)
