"""Dependency outages: a job that failed because PostgreSQL or Redis was down spends no attempt.

A job's attempts are for failures of its own (a bug, bad data, a refusal).
When a dependency every job needs stops answering, retrying on the job's
schedule (the seed's 3 attempts, seconds apart) spends them all within an
outage of a minute and the job ends in the failed set, or is trimmed from
it. So when a job raises, the worker asks every dependency whether it
answers (``explain``):

- all answer: the failure is the job's own; bullmq counts the attempt.
- one does not: an outage begins. The worker stops taking jobs (its bullmq
  worker pauses, locally: other workers decide for themselves), hands the
  job back to its queue without counting an attempt, reports not ready
  (with the dependency and the error class, never an address), and probes
  the dependencies with exponential backoff. Once they all answer it
  resumes by itself. Jobs that fail while the outage lasts are handed back
  at once.

Handing back is what Node bullmq documents for a processor that must run a
job later: ``job.moveToDelayed(timestamp, token)`` (the Python port passes
``skipAttempt``, so ``attemptsMade`` does not grow) followed by raising
``DelayedError``, after which the worker neither completes nor fails it.

A dependency that fails only for the moment a job needed it and answers
again by the time it is probed is indistinguishable from a failure of the
job: that attempt is spent, and the job's remaining attempts cover it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from falachefe_runtime.observability import metrics

log = logging.getLogger(__name__)

#: A dependency probe: returns when the dependency answers, raises (or times out) when it does not.
Probe = Callable[[], Awaitable[object]]

#: The first wait before probing a dependency that is down, and the longest one.
FIRST_PROBE_S = 0.5
MAX_PROBE_S = 10.0
#: How long a probe may take before the dependency counts as down.
PROBE_TIMEOUT_S = 3.0


@dataclass
class Outage:
    """The dependencies that do not answer (name -> error class) and since when (monotonic seconds)."""

    failing: dict[str, str]
    since: float = field(default_factory=time.monotonic)
    jobs_returned: int = 0

    def describe(self) -> dict[str, Any]:
        """For ``/readyz`` and logs: names and error classes only, never a message (it may quote a host)."""
        return {
            "dependencies": dict(self.failing),
            "since_s": round(time.monotonic() - self.since, 1),
            "jobs_returned": self.jobs_returned,
        }


class DependencyGuard:
    """Tells a failed job's own failures from a dependency's outage, and pauses the worker during one."""

    def __init__(
        self,
        probes: Mapping[str, Probe],
        *,
        first_probe_s: float = FIRST_PROBE_S,
        max_probe_s: float = MAX_PROBE_S,
        probe_timeout_s: float = PROBE_TIMEOUT_S,
    ) -> None:
        self._probes = dict(probes)
        self._first_probe_s = first_probe_s
        self._max_probe_s = max_probe_s
        self._probe_timeout_s = probe_timeout_s
        self._outage: Outage | None = None
        self._deciding = asyncio.Lock()
        self._recovery: asyncio.Task[None] | None = None
        self._pause: Callable[[], Awaitable[None]] | None = None
        self._resume: Callable[[], None] | None = None
        for name in self._probes:
            metrics.DEPENDENCY_UP.labels(name).set(1)

    def attach(self, pause: Callable[[], Awaitable[None]], resume: Callable[[], None]) -> None:
        """What to do when an outage begins (stop taking jobs) and when it ends (take them again)."""
        self._pause, self._resume = pause, resume

    @property
    def outage(self) -> Outage | None:
        return self._outage

    def describe(self) -> dict[str, Any] | None:
        """The current outage for ``/readyz``, or None."""
        return self._outage.describe() if self._outage is not None else None

    async def explain(self, error: BaseException) -> Outage | None:
        """After a job raised ``error``: the outage that caused it, or None when every dependency answers.

        Jobs that fail together wait for one round of probes rather than each probing.
        """
        if self._outage is not None:
            return self._outage
        async with self._deciding:
            if self.outage is not None:  # decided while this job waited for the others' probes
                return self.outage
            failing = await self.failing()
            if not failing:
                return None
            self._outage = Outage(failing)
        for name in failing:
            metrics.DEPENDENCY_UP.labels(name).set(0)
            metrics.DEPENDENCY_OUTAGES.labels(name).inc()
        log.warning(
            "dependency outage: taking no jobs until it answers again; failed jobs go back to the queue"
            " without spending an attempt",
            extra={"dependencies": failing, "job_error": type(error).__name__},
        )
        if self._pause is not None:
            await self._pause()
        self._recovery = asyncio.create_task(self._wait_for_recovery(), name="dependency-recovery")
        return self._outage

    async def failing(self) -> dict[str, str]:
        """The dependencies that do not answer now, each with the class of its error."""
        names = list(self._probes)
        outcomes = await asyncio.gather(*(self._probe(name) for name in names))
        return {name: outcome for name, outcome in zip(names, outcomes, strict=True) if outcome is not None}

    async def _probe(self, name: str) -> str | None:
        try:
            async with asyncio.timeout(self._probe_timeout_s):
                await self._probes[name]()
        except Exception as error:  # any failure to answer is the dependency's
            return type(error).__name__
        return None

    async def _wait_for_recovery(self) -> None:
        outage = self._outage
        assert outage is not None
        wait_s = self._first_probe_s
        while True:
            # Full jitter: workers that lost the same server do not probe it in step.
            await asyncio.sleep(random.uniform(wait_s / 2, wait_s))
            failing = await self.failing()
            if not failing:
                break
            for name in set(outage.failing) - set(failing):
                metrics.DEPENDENCY_UP.labels(name).set(1)
            for name in set(failing) - set(outage.failing):
                metrics.DEPENDENCY_UP.labels(name).set(0)
                metrics.DEPENDENCY_OUTAGES.labels(name).inc()
            outage.failing = failing
            wait_s = min(wait_s * 2, self._max_probe_s)
        for name in outage.failing:
            metrics.DEPENDENCY_UP.labels(name).set(1)
        self._outage = None
        log.info(
            "dependencies answer again: taking jobs",
            extra={"outage_s": round(time.monotonic() - outage.since, 1), "jobs_returned": outage.jobs_returned},
        )
        if self._resume is not None:
            self._resume()

    async def close(self) -> None:
        if self._recovery is not None:
            self._recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recovery
