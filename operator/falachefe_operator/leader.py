"""Leader election on a ``coordination.k8s.io`` Lease, the way client-go does it.

Two operator replicas must never both act: they would apply and scale the
same objects. Kopf's own peering pauses operators by priority through its
own CRDs; platform teams expect a Lease (``kubectl get lease`` shows who
leads), so this module implements client-go's algorithm:

- a candidate takes the Lease when it is absent, or when its holder has not
  renewed it for the ``leaseDurationSeconds`` the holder wrote *as observed
  locally* (the holder's timestamps are never compared with this machine's
  clock, so clock skew between nodes cannot cause two leaders);
- every write carries the resourceVersion last read, so two candidates
  racing for an expired Lease cannot both win;
- the leader renews every ``retry_period``; it leads only until
  ``renew_deadline`` after the start of its last successful try, and a try
  still running at that moment is cut there. ``renew_deadline`` is shorter
  than ``lease_duration``, and another candidate starts counting the lease
  duration no earlier than that start (it sees the renewal only after it was
  sent), so the leader has stopped acting at least ``lease_duration -
  renew_deadline`` (5 s with the defaults) before anyone else may begin;
- the Lease is read and written on a connection of its own, opened for each
  try and closed after it: never the reconcilers' connections or their
  in-flight limit, and never a connection that hung before;
- on a clean shutdown the leader releases the Lease so a standby takes over
  at once.

The defaults are client-go's (and kube-controller-manager's): 15 s, 10 s, 2 s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp

from .credentials import Credentials
from .kubeapi import ApiError, KubeApi

log = logging.getLogger("falachefe.operator.leader")

#: client-go's JitterFactor: renew_deadline must leave room for more than one try.
JITTER_FACTOR = 1.2
#: How long a clean shutdown may spend giving the Lease back.
RELEASE_TIMEOUT_SECONDS = 5.0


class LeadershipLost(Exception):
    """The Lease was not renewed in time, or someone else holds it: another replica may lead now."""


@dataclass(frozen=True)
class LeaseConfig:
    namespace: str
    name: str
    identity: str
    #: Written into the Lease (whole seconds): how long others wait after its last renewal.
    lease_duration: int = 15
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        # client-go's own checks (leaderelection.NewLeaderElector).
        if self.lease_duration < 1:
            raise ValueError(f"lease duration must be at least 1 s, got {self.lease_duration}")
        if not self.lease_duration > self.renew_deadline:
            raise ValueError(
                f"lease duration ({self.lease_duration} s) must be longer than the renew deadline"
                f" ({self.renew_deadline} s): a leader must stop acting before its Lease expires"
            )
        if not self.renew_deadline > JITTER_FACTOR * self.retry_period:
            raise ValueError(
                f"renew deadline ({self.renew_deadline} s) must be longer than {JITTER_FACTOR} x the retry"
                f" period ({self.retry_period} s)"
            )

    @property
    def path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases/{self.name}"


def _micro_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Wins, holds and releases one Lease, over a client of its own built from ``credentials``."""

    def __init__(
        self, credentials: Credentials, config: LeaseConfig, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        # One request at a time, on a session of its own: a burst of
        # reconciles can neither delay a renewal nor lend it a hung connection.
        self._api = KubeApi(credentials, timeout_seconds=config.renew_deadline, max_in_flight=1)
        self._config = config
        self._clock = clock
        # The Lease as last read, and when (locally) its holder or renewTime last changed.
        self._observed: dict[str, Any] | None = None
        self._observed_at = 0.0
        self._holding = False
        #: This replica may act until then (local clock): renew_deadline after its last successful try began.
        self._leading_until = float("-inf")

    @property
    def leading(self) -> bool:
        """Whether this replica may act now: it holds the Lease and renewed it within the renew deadline."""
        return self._holding and self._clock() < self._leading_until

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this replica leads (True) or ``stop`` is set (False)."""
        announced = False
        while not stop.is_set():
            if await self._try(self._config.renew_deadline):
                log.info("leading: holding Lease %s/%s", self._config.namespace, self._config.name)
                return True
            if not announced:
                holder = ((self._observed or {}).get("spec") or {}).get("holderIdentity")
                log.info("standing by: Lease %s/%s is held by %s", self._config.namespace, self._config.name, holder)
                announced = True
            try:
                await asyncio.wait_for(stop.wait(), timeout=self._config.retry_period)
            except TimeoutError:
                continue
        return False

    async def hold(self) -> None:
        """Renew until leadership ends; then raise ``LeadershipLost``, by the renew deadline at the latest."""
        while self.leading:
            await asyncio.sleep(max(0.0, min(self._config.retry_period, self._leading_until - self._clock())))
            remaining = self._leading_until - self._clock()
            if remaining > 0:
                await self._try(remaining)
        self._holding = False
        raise LeadershipLost(
            f"Lease {self._config.namespace}/{self._config.name} not renewed within the"
            f" {self._config.renew_deadline:g} s renew deadline, or taken by another replica"
        )

    async def release(self) -> None:
        """Give the Lease up (on shutdown) so that a standby need not wait for it to expire."""
        if not self.leading or self._observed is None:
            return
        self._holding = False
        lease = dict(self._observed)
        lease["spec"] = {**lease["spec"], "holderIdentity": None, "leaseDurationSeconds": 1}
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT_SECONDS):
                await self._api.request("PUT", self._config.path, body=lease)
        except (ApiError, aiohttp.ClientError, TimeoutError) as error:
            log.warning("could not release the Lease (it expires on its own): %s", error)
        finally:
            await self._api.close()

    async def aclose(self) -> None:
        await self._api.close()

    async def _try(self, budget: float) -> bool:
        """One read and (maybe) write of the Lease, cut after ``budget`` seconds; whether this replica leads."""
        config = self._config
        started = self._clock()
        try:
            async with asyncio.timeout(budget):
                won = await self._try_acquire_or_renew()
        except TimeoutError:
            log.warning("Lease %s: no answer from the API server within %.1f s", config.name, budget)
            won = False
        finally:
            # The next try dials anew: a connection that hung, or that an API
            # server restart left half open, is never used again.
            await self._api.close()
        if won:
            self._holding = True
            self._leading_until = started + config.renew_deadline
        return self.leading

    async def _try_acquire_or_renew(self) -> bool:
        config = self._config
        now = datetime.now(UTC)
        try:
            lease = await self._api.get(config.path)
            if lease is None:
                created = await self._api.request("POST", config.path.rsplit("/", 1)[0], body=self._new_lease(now))
                self._observe(created[1])
                return True
            self._observe(lease)
            spec = lease.get("spec") or {}
            held_by_other = spec.get("holderIdentity") not in (None, "", config.identity)
            if held_by_other:
                # Not ours any more (if it ever was): stop acting at once.
                self._holding = False
                duration = int(spec.get("leaseDurationSeconds") or config.lease_duration)
                if self._clock() < self._observed_at + duration:
                    return False
            ours = spec.get("holderIdentity") == config.identity
            transitions = int(spec.get("leaseTransitions", 0))
            renewed = {
                **lease,
                "spec": {
                    **spec,
                    "holderIdentity": config.identity,
                    "leaseDurationSeconds": config.lease_duration,
                    "renewTime": _micro_time(now),
                    "acquireTime": spec.get("acquireTime") if ours else _micro_time(now),
                    "leaseTransitions": transitions if ours else transitions + 1,
                },
            }
            updated = await self._api.request("PUT", config.path, body=renewed)
        except ApiError as error:
            # 409: someone else wrote it first; decide again on the next read.
            log.debug("Lease %s: %s", config.name, error)
            return False
        except (aiohttp.ClientError, TimeoutError) as error:
            log.warning("Lease %s: API server unreachable: %s", config.name, type(error).__name__)
            return False
        self._observe(updated[1])
        return True

    def _observe(self, lease: dict[str, Any]) -> None:
        spec = lease.get("spec") or {}
        before = (self._observed or {}).get("spec") or {}
        if (spec.get("holderIdentity"), spec.get("renewTime")) != (
            before.get("holderIdentity"),
            before.get("renewTime"),
        ):
            self._observed_at = self._clock()
        self._observed = lease

    def _new_lease(self, now: datetime) -> dict[str, Any]:
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self._config.name, "namespace": self._config.namespace},
            "spec": {
                "holderIdentity": self._config.identity,
                "leaseDurationSeconds": self._config.lease_duration,
                "acquireTime": _micro_time(now),
                "renewTime": _micro_time(now),
                "leaseTransitions": 0,
            },
        }
