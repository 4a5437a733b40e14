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

The completion also carries the jobs its handler handed off
(``with_completion``; the auth worker's hand-off to ``crewai-processing``):
their ``addStandardJob`` scripts go first in the pipeline that sends
``moveToFinished``, so a job and its hand-off cost one round trip, not two.
Only plain jobs (no delay, priority or parent) with an id of their own, for
queues on the same Redis server (not a cluster), go this way; the worker
adds any other itself before completing. Redis runs the pipeline's scripts in order, not
as one transaction: when the completion is refused (the lock was lost) the
hand-off may already be in, and the job's next run adds it again, which
adds nothing (same id), as when it was added before completing. When a
hand-off is refused and the completion is not, the hand-off is added again
on its own; if that fails too, the completed job is put back to wait
(bullmq's ``Job.retry("completed")``) to run again while it has attempts
left; after its last (or when Redis refuses that too), the refusal is
logged as an error with both ids (the completed job keeps its data and
result).

One slot waits for all of them (``one_waiter``, on by default). bullmq's
run loop starts a fetch for every free slot at once; when the queue has run
dry the first blocks on the queue's marker (``BZPOPMIN``) and every other
one, finding that slot already waiting, calls ``moveToActive`` anyway and
comes back empty. After each wake-up it does it again: on jobs arriving one
at a time a job cost 6 ``moveToActive`` calls (bench ``worker_throughput``,
auth at half of saturation). Here, while the queue is drained, a slot that
finds another waiting takes nothing and makes no call; the run loop starts
no other fetch until the waiting one returns.

And each ``moveToActive`` says how many jobs it left behind: the same round
trip (a pipeline) runs ``SETTLE``, which counts what is left in ``wait`` and
``prioritized`` and, when nothing is, removes the queue's base marker
(``"0"``), and gives the next delayed job's time. bullmq's script re-adds
that marker whenever it takes a job, whether or not another is left, so that
a worker blocked on it wakes to look; when nothing is left that wake-up is a
wasted ``BZPOPMIN`` and ``moveToActive``. ``SETTLE`` runs atomically: a job
added after it sets the marker again (every add does), so no wake-up is
lost. With the count, the worker knows the queue is drained (the next fetch
waits on the marker at once) or how many jobs are left (that many slots
fetch; the others wait for them).

The overrides follow bullmq's code, not a public API: they are used only on
the version they were written against (``WRITTEN_AGAINST``); any other
version runs bullmq's own ``processJob``, ``getNextJob`` and
``moveToActive`` and says so. ``tests/runtime/test_fetch_next.py`` fails
when the installed version, or the scripts' answers, change.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import bullmq
import msgpack  # type: ignore[import-untyped]  # bullmq packs its scripts' options with it
from bullmq import DelayedError, UnrecoverableError, Worker
from bullmq.custom_errors import WaitingChildrenError
from bullmq.job import Job
from bullmq.scripts import raw2NextJobData
from redis.exceptions import NoScriptError

from falachefe_runtime.queues import PreparedJob

log = logging.getLogger(__name__)

#: The bullmq version whose ``Worker.processJob``, ``getNextJob``, ``moveToActive`` and
#: ``moveToFinished``/``moveToActive`` scripts this module follows.
WRITTEN_AGAINST = "3.4.4"

#: After a ``moveToActive``, in the same round trip: the jobs left to take (``wait`` and
#: ``prioritized``), the queue's base marker removed when there are none, and the next delayed
#: job's time (ms, 0 if none; bullmq stores ``timestamp * 0x1000 + n`` as the score).
#: KEYS: wait, prioritized, marker, delayed.
SETTLE = """
local left = redis.call("LLEN", KEYS[1]) + redis.call("ZCARD", KEYS[2])
if left == 0 then
  redis.call("ZREM", KEYS[3], "0")
end
local delayed = redis.call("ZRANGE", KEYS[4], 0, 0, "WITHSCORES")
local next_delayed = 0
if delayed[2] then
  next_delayed = math.floor(tonumber(delayed[2]) / 0x1000)
end
return {left, next_delayed}
"""


def _add_standard_job(prepared: PreparedJob) -> tuple[Any, list[Any], list[Any]]:
    """bullmq 3.4.4's ``Scripts.addStandardJob``: the script, its keys and arguments, for a plain job."""
    scripts = prepared.queue.scripts
    job = prepared.job
    keys = scripts.getKeys(["wait", "paused", "meta", "id", "completed", "delayed", "active", "events", "marker"])
    args = [*scripts.addJobArgs(job), job.timestamp]
    return scripts.commands["addStandardJob"], keys, args


class FetchNextWorker(Worker):  # type: ignore[misc]  # bullmq is untyped
    """A bullmq ``Worker`` whose completion of a job also takes the next one (``fetch_next``, on by default)."""

    def __init__(self, *args: Any, fetch_next: bool = True, one_waiter: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if (fetch_next or one_waiter) and bullmq.__version__ != WRITTEN_AGAINST:
            log.warning(
                "bullmq is not the version the one-round-trip completion and fetch were written against; "
                "completing and fetching as bullmq does",
                extra={"bullmq": bullmq.__version__, "written_against": WRITTEN_AGAINST},
            )
            fetch_next = one_waiter = False
        #: Whether completing a job takes the next one (off: bullmq's two round trips).
        self.fetch_next = fetch_next
        #: Whether one free slot waits for jobs for all (off: bullmq's fetch by every free slot).
        self.one_waiter = one_waiter
        #: Jobs the last ``moveToActive`` left to take (None: not known, e.g. after a completion took one).
        self.left: int | None = None
        #: ``moveToActive`` calls in flight, and what a slot waiting for one of them to return waits on.
        self._fetching = 0
        self._fetched = asyncio.Event()
        self._settle = self.backend.conn.register_script(SETTLE) if one_waiter else None
        #: By job id: the jobs to add in the round trip that completes it (``with_completion``).
        self._handoffs: dict[str, list[PreparedJob]] = {}

    def with_completion(self, job_id: str, jobs: Sequence[object]) -> bool:
        """Add ``jobs`` in the round trip that completes ``job_id``; False (add them yourself) when they cannot be."""
        plain = [job for job in jobs if isinstance(job, PreparedJob) and self._pipelined(job)]
        if not self.fetch_next or len(plain) != len(jobs):
            return False
        self._handoffs[job_id] = plain
        return True

    def _pipelined(self, prepared: PreparedJob) -> bool:
        """Whether ``prepared`` is added by ``addStandardJob`` alone, with its own id, on this worker's Redis."""
        job = prepared.job
        if not job.id or job.opts.get("delay") or job.opts.get("priority") or job.parentKey:
            return False
        pool = getattr(prepared.queue.client, "connection_pool", None)  # a cluster client has none
        own = getattr(self.backend.conn, "connection_pool", None)
        if pool is None or own is None or type(pool) is not type(own):
            return False
        fields = ("host", "port", "path", "db", "username")
        return all(own.connection_kwargs.get(name) == pool.connection_kwargs.get(name) for name in fields)

    async def getNextJob(self, token: str) -> Job | None:  # bullmq's name
        if not self.one_waiter:
            return await super().getNextJob(token)
        if self.drained and self.waiting is not None:
            return None  # another slot waits on the marker, and takes the next job; no call from this one
        if not self.drained and self.left is not None and 0 < self.left <= self._fetching:
            # As many fetches under way as jobs were left: wait for one to return, then the run loop asks again.
            await self._fetched.wait()
            return None
        # bullmq's: wait on the marker while drained, then take a job (``moveToActive`` below).
        return await super().getNextJob(token)

    async def moveToActive(self, token: str) -> Job | None:  # bullmq's name
        if not self.one_waiter:
            return await super().moveToActive(token)
        self._fetching += 1
        try:
            taken, left, next_delayed = await self._take(token)
        finally:
            self._fetching -= 1
            fetched, self._fetched = self._fetched, asyncio.Event()
            fetched.set()
        # bullmq 3.4.4's Worker.moveToActive from here, then what SETTLE said.
        job_data, job_id, limit_until, delay_until = raw2NextJobData(taken)
        job: Job | None = await self.nextJobFromJobData(job_data, job_id, limit_until, delay_until, token)
        self.left = left
        if job is not None and left == 0:  # what bullmq's next moveToActive would have found out
            self.drained = True
            self.blockUntil = next_delayed
        return job

    async def _take(self, token: str) -> tuple[list[Any], int | None, int]:
        """bullmq's ``moveToActive`` script, then ``SETTLE``, in one round trip: its answer, jobs left, next delayed."""
        assert self._settle is not None
        scripts = self.backend.scripts
        # bullmq 3.4.4's Scripts.moveToActive, the keys and arguments.
        names = ["wait", "active", "prioritized", "events", "stalled", "limiter", "delayed", "paused", "meta", "pc"]
        keys = scripts.getKeys([*names, "marker"])
        packed = msgpack.packb(
            {"token": token, "lockDuration": self.opts.get("lockDuration", 0), "limiter": self.opts.get("limiter")},
            use_bin_type=True,
        )
        args = [scripts.keys[""], round(time.time() * 1000), packed]
        settle_keys = [keys[0], keys[2], keys[10], keys[6]]
        move = scripts.commands["moveToActive"]
        for attempt in (1, 2):
            # EVALSHA by hand: redis-py's scripts in a pipeline cost a SCRIPT EXISTS round trip each time.
            pipe = self.backend.conn.pipeline(transaction=False)
            pipe.evalsha(move.sha, len(keys), *keys, *args)
            pipe.evalsha(self._settle.sha, len(settle_keys), *settle_keys)
            taken, settled = await pipe.execute(raise_on_error=False)
            if isinstance(taken, NoScriptError) and attempt == 1:  # a new or restarted Redis: load and ask again
                await self.backend.conn.script_load(move.script)
                await self.backend.conn.script_load(self._settle.script)
                continue
            if isinstance(taken, Exception):
                raise taken
            if isinstance(settled, Exception):  # the job is taken all the same; what is left is not known
                if isinstance(settled, NoScriptError):
                    await self.backend.conn.script_load(self._settle.script)
                return taken, None, 0
            return taken, int(settled[0]), int(settled[1])
        raise AssertionError("unreachable")

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
                moved = await self._complete(job, result, token, fetch=fetch)
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
            self._handoffs.pop(job.id, None)
        return await self._next(taken, token)

    async def _complete(self, job: Job, result: Any, token: str, *, fetch: bool) -> dict[str, Any]:
        """bullmq's ``moveToCompleted``, with the job's hand-offs added before it in the same round trip."""
        remove = job.opts.get("removeOnComplete", False)
        handoffs = self._handoffs.pop(job.id, None)
        if not handoffs:
            return await self.backend.moveToCompleted(job, result, remove, token, fetch_next=fetch)  # type: ignore[no-any-return]
        scripts = self.backend.scripts
        keys, args = scripts.moveToCompletedArgs(job, result, remove, token, fetch)
        commands = [_add_standard_job(prepared) for prepared in handoffs]
        commands.append((scripts.commands["moveToFinished"], keys, args))
        *added, finished = await self._run_scripts(commands)
        if isinstance(finished, Exception):
            raise finished  # the job runs again and hands off again: nothing is added twice (same ids)
        if isinstance(finished, int) and finished < 0:
            raise scripts.finishedErrors(
                {"code": finished, "jobId": job.id, "command": "moveToFinished", "state": "active"}
            )
        for prepared, reply in zip(handoffs, added, strict=True):
            if isinstance(reply, Exception) or (isinstance(reply, int) and reply < 0):
                await self._hand_off_alone(job, prepared, reply)
        return {"result": raw2NextJobData(finished) if finished is not None else None, "finishedOn": args[1]}

    async def _hand_off_alone(self, job: Job, prepared: PreparedJob, refused: Any) -> None:
        """A hand-off the pipeline did not add, its job completed: add it on its own, or run the job again."""
        log.warning(
            "a job handed off was not added with its job's completion; adding it on its own",
            extra={
                "job_id": job.id,
                "handoff_id": prepared.id,
                "handoff_queue": prepared.queue.name,
                "reason": refused if isinstance(refused, int) else type(refused).__name__,
            },
        )
        try:
            await prepared.add()
        except Exception as error:
            again = job.attemptsMade + 1 < job.attempts  # this run not counted yet
            log.error(
                "a job handed off could not be added; "
                + ("its completed job goes back to wait to run again" if again else "no attempts left"),
                extra={
                    "job_id": job.id,
                    "handoff_id": prepared.id,
                    "handoff_queue": prepared.queue.name,
                    "reason": type(error).__name__,
                    "attempts_made": job.attemptsMade,
                },
            )
            if again:
                try:
                    await job.retry("completed")
                except Exception as failure:  # Redis refuses everything: the ids above are what is left
                    log.error(
                        "the completed job could not be put back to wait either",
                        extra={"job_id": job.id, "handoff_id": prepared.id, "reason": type(failure).__name__},
                    )

    async def _run_scripts(self, commands: list[tuple[Any, list[Any], list[Any]]]) -> list[Any]:
        """Each ``(script, keys, args)`` by EVALSHA in one pipeline, in order; any Redis lacked loaded, sent again."""
        conn = self.backend.conn
        replies: list[Any] = [None] * len(commands)
        pending = list(range(len(commands)))
        for attempt in (1, 2):
            # EVALSHA by hand: redis-py's scripts in a pipeline cost a SCRIPT EXISTS round trip each time.
            pipe = conn.pipeline(transaction=False)
            for index in pending:
                script, keys, args = commands[index]
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            answers = await pipe.execute(raise_on_error=False)
            missing = []
            for index, answer in zip(pending, answers, strict=True):
                replies[index] = answer
                if isinstance(answer, NoScriptError):
                    missing.append(index)
            if not missing or attempt == 2:
                break
            # A new or restarted Redis: what was refused did nothing; load the scripts, send those again.
            for script in {commands[index][0].sha: commands[index][0] for index in missing}.values():
                await conn.script_load(script.script)
            pending = missing
        return replies

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
        self.left = None  # the completion took a job: what is behind it is not known
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
