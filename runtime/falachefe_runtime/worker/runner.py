"""One BullMQ worker consuming one queue, with metrics, logs and a graceful stop.

Why the options are what they are (bullmq 3.x, checked against its source):

- The worker's connections get a ``socket_timeout`` above ``drainDelay``: an
  idle worker blocks in BZPOPMIN for ``drainDelay`` seconds, and redis-py's
  default 5 s socket timeout would cut that wait short with an error, after
  which the worker sleeps before retrying and takes ~10 s to see a new job.
- A job whose worker dies (SIGKILL, OOM, node loss) keeps its lock until
  ``lockDuration`` expires; the stalled-job check, which every worker runs
  every ``stalledInterval``, then moves it back to ``wait`` and another
  worker takes it. So a dead worker's jobs resume after about
  ``lockDuration + stalledInterval``. A live worker renews its locks every
  ``lockDuration / 4``, which only works while the event loop is free:
  blocking work (CrewAI) runs in threads for that reason.
- ``maxStalledCount`` 1: a job that stalls twice is failed rather than
  retried forever (a job that kills its worker would otherwise kill them all).
- No ``limiter``: bullmq's Python limiter is unreliable; rate limits that
  matter (one-time codes) are enforced in Redis by the handlers.
- A job that fails while a dependency is down goes back to its queue
  without spending an attempt, and the worker pauses until the dependency
  answers (``outages``). Pausing leaves in flight the fetches the worker had
  already started; a job one of them takes is handed back too, rather than
  kept unprocessed (its lock would expire during a long outage, and the
  stalled check would count it against ``maxStalledCount``).
- A worker that must stop with jobs unfinished (its grace period is over)
  gives them back to the queue at once, without spending an attempt,
  rather than leaving them to the stalled check after their locks expire;
  a job that runs past ``worker.job_timeout_s`` fails (and is retried as
  its attempts allow). Either way the run's handler is cancelled, unless
  it is inside ``JobInfo.commit`` (storing or sending its result: short),
  and ``commit`` refuses a run that is no longer the job's, so a run given
  up on never stores or sends after the job's next run started. A CrewAI
  kickoff thread cannot be stopped; what it returns is dropped.
- A job's completion takes the next job in the same Redis round trip, as
  the Node worker does (``fetch_next``; bullmq 3.x's Python worker makes
  a second one): the next job keeps the slot, and the lock token, of the
  one that completed.
- While the queue is drained, one free slot waits for jobs for the others
  (``one_waiter``): bullmq's loop has every free slot ask Redis, most
  coming back empty; see ``fetch_next``.
- Jobs are taken through ``JobIntake``: one whose stored fields do not
  decode fails at once, naming the field, instead of staying in ``active``;
  every failed job is kept ``queues.failed_retention_days``, whatever its
  producer asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from bullmq import DelayedError, Queue, UnrecoverableError
from bullmq.job import Job

from falachefe_runtime.config import QueueSettings
from falachefe_runtime.observability import metrics
from falachefe_runtime.observability.logging import log_context
from falachefe_runtime.queues import open_queue, with_socket_timeout
from falachefe_runtime.redis_wire import use_fast_wire
from falachefe_runtime.worker.intake import JobIntake
from falachefe_runtime.worker.outages import DependencyGuard, Outage
from falachefe_runtime.worker.routing import JobInfo, JobLost, JobResult, PermanentJobError, Routes, unknown_job

log = logging.getLogger(__name__)

#: Seconds an idle worker blocks waiting for a job (bullmq's default).
DRAIN_DELAY_S = 5
#: A job handed back during an outage is due again after this long (any worker may take it then).
RETURN_DELAY_MS = 1000
#: After the grace period, how long ``stop()`` waits for abandoned jobs to be given back
#: (and for jobs that were storing their result to finish).
GIVE_BACK_S = 3.0


class JobTimedOut(TimeoutError):
    """The job ran longer than ``worker.job_timeout_s``."""


class QueueWorker:
    """Routes the jobs of ``queue`` to handlers; ``stop()`` lets in-flight jobs finish."""

    def __init__(
        self,
        queue: str,
        routes: Routes,
        *,
        redis_url: str,
        concurrency: int,
        settings: QueueSettings,
        prefix: str = "bull",
        socket_timeout_s: float = 5.0,
        name: str | None = None,
        guard: DependencyGuard | None = None,
        job_timeout_s: float | None = None,
        holder: str | None = None,
        fetch_next: bool = True,
        one_waiter: bool = True,
        batch_handoffs: bool = True,
    ) -> None:
        self.queue = queue
        self._routes = routes
        self._concurrency = concurrency
        self._settings = settings
        # Above drainDelay, so the idle BZPOPMIN is never cut short (see module doc).
        self._url = with_socket_timeout(redis_url, max(socket_timeout_s, 2.0 * DRAIN_DELAY_S))
        self._prefix = prefix
        self._name = name
        self._worker: JobIntake | None = None
        self._run: asyncio.Task[None] | None = None
        self._in_flight = 0
        self._guard = guard
        #: Tokens of jobs handed back straight from a fetch while paused (see ``_hand_back_fetched``).
        self._handed_back: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._job_timeout_s = job_timeout_s
        #: The pod this worker runs in, written into its jobs' lock tokens (see ``JobIntake``).
        self._holder = holder
        #: Completing a job takes the next in the same round trip (``fetch_next``); off only to measure it.
        self._fetch_next = fetch_next
        #: While the queue is drained one free slot waits for jobs for all (``one_waiter``); off only to measure it.
        self._one_waiter = one_waiter
        #: Jobs a handler hands off go in the round trip that completes its job; off only to measure it.
        self._batch_handoffs = batch_handoffs
        # By job id (bullmq 3 may give jobs fetched together one token): the job, its lock
        # token and the task running its handler, which may be cancelled (``_end``).
        self._handlers: dict[str, tuple[Job, str, asyncio.Future[JobResult]]] = {}
        #: Its own connection for lock checks and giving jobs back: stop() closes the worker's.
        self._control: Queue | None = None
        #: Ids of jobs inside ``JobInfo.commit``: never cancelled there.
        self._committing: set[str] = set()
        #: Ids of jobs ``stop()`` gave up on, and of jobs that ran out of time.
        self._abandoned: set[str] = set()
        self._timed_out: set[str] = set()

    async def start(self) -> None:
        settings = self._settings
        opts: dict[str, Any] = {
            "concurrency": self._concurrency,
            "lockDuration": int(settings.lock_duration_s * 1000),
            "stalledInterval": int(settings.stalled_interval_s * 1000),
            "maxStalledCount": settings.max_stalled_count,
            "drainDelay": DRAIN_DELAY_S,
            "connection": self._url,
            "prefix": self._prefix,
            "autorun": False,
        }
        if self._name:
            opts["name"] = self._name
        worker = JobIntake(
            self.queue,
            self._process,
            opts,
            keep_failed=settings.keep_failed,
            holder=self._holder,
            fetch_next=self._fetch_next,
            one_waiter=self._one_waiter,
        )
        worker.on("error", self._on_error)
        worker.on("stalled", self._on_stalled)
        use_fast_wire(worker.client)
        use_fast_wire(worker.bclient)
        self._worker = worker
        self._control = open_queue(self.queue, self._url, self._prefix)
        if self._guard is not None:
            self._guard.attach(self._pause, self._resume)
        self._run = asyncio.create_task(worker.run(), name=f"bullmq-worker:{self.queue}")

    @property
    def running(self) -> bool:
        """True while the worker's main loop is alive (for /healthz)."""
        return self._run is not None and not self._run.done()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def paused(self) -> bool:
        return self._worker is not None and bool(self._worker.paused)

    async def stop(self, grace_s: float) -> bool:
        """Take no new jobs; wait up to ``grace_s`` for in-flight ones. True if they all finished.

        Jobs still running after the grace period are given back to the
        queue at once (another worker takes them now, not once their locks
        expire), and their runs here can no longer store or send anything.
        """
        worker = self._worker
        if worker is None:
            return True
        closing = asyncio.ensure_future(worker.close())
        done, _ = await asyncio.wait({closing}, timeout=grace_s)
        finished = bool(done)
        if not finished:
            log.error(
                "shutdown grace period over, giving in-flight jobs back to the queue",
                extra={"queue": self.queue, "in_flight": self._in_flight, "grace_s": grace_s},
            )
            await self._give_back_all()
            done, _ = await asyncio.wait({closing}, timeout=GIVE_BACK_S)
            if not done:  # a run that ignores its cancellation (its job is back in the queue already)
                await worker.close(force=True)
                await asyncio.wait({closing}, timeout=5)
        if self._run is not None:
            await asyncio.wait({self._run}, timeout=5)
        if self._control is not None:
            await self._control.close()
        return finished

    async def _give_back_all(self) -> None:
        """Cancel every running job's handler (not one committing its result) and give its job back now."""
        abandoned = []
        for job_id, (job, token, _) in list(self._handlers.items()):
            if self._end(job_id, self._abandoned):
                abandoned.append(self._hand_back(job, token, None, delay_ms=0))
        await asyncio.gather(*abandoned)

    async def _process(self, job: Job, token: str) -> JobResult:
        if token in self._handed_back:  # already given back from its fetch (see _hand_back_fetched)
            self._handed_back.discard(token)
            raise DelayedError
        attempt = int(job.attemptsMade) + 1
        max_attempts = int(job.opts.get("attempts") or 1)
        info = JobInfo(
            id=str(job.id),
            name=str(job.name),
            queue=self.queue,
            attempt=attempt,
            max_attempts=max_attempts,
            commit=functools.partial(self._commit, job, token),
        )
        started = time.monotonic()
        outage = self._guard.outage if self._guard is not None else None
        if outage is not None:  # taken just as the worker paused: not worth trying now
            await self._hand_back(job, token, outage)
            raise DelayedError
        if attempt == 1 and int(job.attemptsStarted or 0) <= 1:  # its first run, not one handed back
            metrics.JOB_QUEUE_WAIT.labels(self.queue).observe(_queue_wait_s(job))
        self._in_flight += 1
        in_flight = metrics.JOBS_IN_FLIGHT.labels(self.queue)
        in_flight.inc()
        try:
            with (
                log_context(job_id=info.id, queue=self.queue, job_name=info.name, attempt=attempt),
                metrics.JOB_DURATION.labels(self.queue).time(),
            ):
                return await self._route(job, token, info, started)
        except JobLost as lost:
            self._lost(info.id, lost)
            raise DelayedError from lost
        finally:
            self._in_flight -= 1
            in_flight.dec()

    async def _route(self, job: Job, token: str, info: JobInfo, started: float) -> JobResult:
        try:
            route = self._routes.get(info.name)
            if route is None:
                raise unknown_job(info.name, self._routes)
            result = await self._run_handler(route.handle(route.parse(job.data), info), job, token)
            if info.handoffs:
                await self._hand_off(job, info)
        except JobLost:
            raise
        except PermanentJobError as error:
            metrics.JOBS_FAILED.labels(self.queue, error.reason).inc()
            metrics.JOBS_PROCESSED.labels(self.queue, "failed").inc()
            log.warning("job failed permanently", extra={"reason": error.reason, "detail": error.detail})
            # bullmq moves an UnrecoverableError straight to the failed set,
            # whatever attempts are left; the message becomes failedReason.
            raise UnrecoverableError(str(error)) from error
        except Exception as error:
            reason = type(error).__name__
            outage = await self._guard.explain(error) if self._guard is not None else None
            if outage is not None:
                log.warning(
                    "job failed during a dependency outage; back to the queue, no attempt spent",
                    extra={"reason": reason, "dependencies": outage.failing},
                )
                await self._hand_back(job, token, outage)
                raise DelayedError from error
            metrics.JOBS_FAILED.labels(self.queue, reason).inc()
            if info.attempt < info.max_attempts:
                metrics.JOB_RETRIES.labels(self.queue).inc()
                metrics.JOBS_PROCESSED.labels(self.queue, "retried").inc()
                log.warning("job attempt failed, will retry", extra={"reason": reason}, exc_info=True)
            else:
                metrics.JOBS_PROCESSED.labels(self.queue, "failed").inc()
                log.error("job failed, no attempts left", extra={"reason": reason}, exc_info=True)
            raise
        metrics.JOBS_PROCESSED.labels(self.queue, "completed").inc()
        # The job's one line: job_id, queue, job_name and attempt come from the log context.
        outcome = result.get("outcome") if isinstance(result, dict) else None
        log.info(
            "job completed",
            extra={
                **info.notes,
                "outcome": outcome if isinstance(outcome, str) else "completed",
                "max_attempts": info.max_attempts,
                "duration_s": round(time.monotonic() - started, 4),
            },
        )
        return result

    async def _hand_off(self, job: Job, info: JobInfo) -> None:
        """The jobs the handler handed off: sent with the completion when the intake can, else added now."""
        intake = self._worker
        if intake is not None and self._batch_handoffs and intake.with_completion(str(job.id), info.handoffs):
            return
        for handoff in info.handoffs:
            await handoff.add()

    async def _run_handler(self, call: Awaitable[JobResult], job: Job, token: str) -> JobResult:
        """Await a job's handler as a task of its own: ``stop()`` may abandon it, the job timeout end it."""
        job_id = str(job.id)
        handler = asyncio.ensure_future(call)
        self._handlers[job_id] = (job, token, handler)
        expiry = None
        if self._job_timeout_s is not None:
            expiry = asyncio.get_running_loop().call_later(self._job_timeout_s, self._end, job_id, self._timed_out)
        try:
            return await handler
        except asyncio.CancelledError:
            if job_id in self._abandoned:
                raise JobLost("the worker stopped before the job finished") from None
            if job_id in self._timed_out:
                raise JobTimedOut(f"the job ran longer than worker.job_timeout_s ({self._job_timeout_s:g}s)") from None
            raise
        finally:
            if expiry is not None:
                expiry.cancel()
            self._handlers.pop(job_id, None)
            self._timed_out.discard(job_id)

    def _end(self, job_id: str, why: set[str]) -> bool:
        """Cancel the job's handler, noting ``why``; not while it commits its result. Whether it was cancelled."""
        running = self._handlers.get(job_id)
        if running is None or running[2].done() or job_id in self._committing:
            return False
        why.add(job_id)
        running[2].cancel()
        return True

    @contextlib.asynccontextmanager
    async def _commit(self, job: Job, token: str) -> AsyncIterator[None]:
        """``JobInfo.commit``: only a run that still holds its job's lock stores or sends its result."""
        job_id = str(job.id)
        if job_id in self._abandoned:
            raise JobLost("the worker gave the job back while stopping")
        if not await self._holds_lock(job, token):
            raise JobLost("the job's lock is no longer this worker's: another worker has taken the job over")
        self._committing.add(job_id)
        try:
            yield
        finally:
            self._committing.discard(job_id)

    async def _holds_lock(self, job: Job, token: str) -> bool:
        assert self._control is not None  # jobs run only once started
        holder = await self._control.client.get(f"{self._prefix}:{self.queue}:{job.id}:lock")
        return bool(holder == token)

    def _lost(self, job_id: str, lost: JobLost) -> None:
        """A run that is no longer the job's (``stop()`` gave the job back, or another worker holds it)."""
        if job_id in self._abandoned:
            self._abandoned.discard(job_id)
            log.warning("job given back to the queue unfinished: the worker is stopping", extra={"reason": str(lost)})
        else:
            log.warning("job no longer held by this worker; this run's result is dropped", extra={"reason": str(lost)})

    async def _hand_back(self, job: Job, token: str, outage: Outage | None, delay_ms: int = RETURN_DELAY_MS) -> None:
        """Move ``job`` from active back to the queue (via ``delayed``) without counting an attempt.

        If Redis does not take it (the queue's Redis is the one down), the
        job stays active under a lock nobody renews: the stalled check puts
        it back in ``wait`` once the lock expires.
        """
        try:
            if delay_ms == 0 and self._control is not None:  # stopping: the worker's connection is closing
                now = int(time.time() * 1000)
                await self._control.backend.moveToDelayed(job.id, now, 0, token, {"skipAttempt": True})
            else:
                await job.moveToDelayed(int(time.time() * 1000) + delay_ms, token)
        except Exception as error:
            log.error(
                "could not hand a job back to its queue; it returns once its lock expires",
                extra={"queue": self.queue, "job_id": str(job.id), "error": type(error).__name__},
            )
            return
        if outage is not None:
            outage.jobs_returned += 1
        metrics.JOBS_RETURNED.labels(self.queue).inc()
        metrics.JOBS_PROCESSED.labels(self.queue, "returned").inc()

    async def _pause(self) -> None:
        """Take no new job; the ones in flight go on (each hands itself back if it fails)."""
        worker = self._worker
        if worker is None:
            return
        await worker.pause(do_not_wait_active=True)
        # Fetches already under way, and completions that asked for the next
        # job before the pause, may still take a job; the paused loop would
        # hold it unprocessed (its lock expiring) until it resumes.
        for task in list(worker.processing):
            task.add_done_callback(self._hand_back_fetched)

    def _hand_back_fetched(self, task: asyncio.Future[Any]) -> None:
        worker = self._worker
        if worker is None or not worker.paused or worker.closing or task.cancelled() or task.exception():
            return
        job = task.result()
        if not isinstance(job, Job) or task not in worker.processing:
            return  # a job being processed, or a fetch or completion that took none
        outage = self._guard.outage if self._guard is not None else None
        if outage is None:
            return
        worker.processing.discard(task)
        # The main loop may have collected this fetch already; then _process skips the job.
        self._handed_back.add(str(job.token))
        hand_back = asyncio.create_task(self._hand_back(job, str(job.token), outage))
        self._background.add(hand_back)
        hand_back.add_done_callback(self._background.discard)

    def _resume(self) -> None:
        if self._worker is not None and not self._worker.closing:
            self._worker.resume()

    def _on_error(self, error: BaseException, job: Job | None = None, *_: Any) -> None:
        """bullmq's own errors (a lost connection, a failed move), with the job they were about if any."""
        fields: dict[str, Any] = {"queue": self.queue, "error": repr(error)}
        if isinstance(job, Job):
            fields["job_id"] = job.id
            if job.failedReason:
                fields["reason"] = job.failedReason
        log.error("bullmq worker error", extra=fields)

    def _on_stalled(self, job_id: str, *_: Any) -> None:
        metrics.JOBS_STALLED.labels(self.queue).inc()
        log.warning("stalled job put back in the queue", extra={"queue": self.queue, "job_id": job_id})


def _queue_wait_s(job: Job) -> float:
    """From when ``job`` could run (added, plus its delay) to when a worker took it (``processedOn``).

    Producers stamp ``timestamp`` with their own clock: a skewed clock could
    make the difference negative, which counts as no wait.
    """
    taken_ms = int(job.processedOn or 0) or time.time() * 1000
    runnable_ms = int(job.timestamp or 0) + int(job.delay or 0)
    return max(taken_ms - runnable_ms, 0) / 1000
