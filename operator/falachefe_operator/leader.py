"""Leader election on a ``coordination.k8s.io`` Lease, the way client-go does it.

Two operator replicas must never both act: they would apply and scale the
same objects. Kopf's own peering pauses operators by priority through its
own CRDs; platform teams expect a Lease (``kubectl get lease`` shows who
leads), so this module implements client-go's algorithm:

- a candidate takes the Lease when it is absent, or when its holder has not
  renewed it for ``lease_duration`` *as observed locally* (the holder's
  timestamps are never compared with this machine's clock, so clock skew
  between nodes cannot cause two leaders);
- every write carries the resourceVersion last read, so two candidates
  racing for an expired Lease cannot both win;
- the leader renews every ``retry_period``; if it cannot renew for
  ``renew_deadline`` (shorter than ``lease_duration``), it stops acting
  before anyone else may take over;
- on a clean shutdown it releases the Lease so a standby takes over at once.
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

from .kubeapi import ApiError, KubeApi

log = logging.getLogger("falachefe.operator.leader")


class LeadershipLost(Exception):
    """The Lease could not be renewed in time: another replica may lead now."""


@dataclass(frozen=True)
class LeaseConfig:
    namespace: str
    name: str
    identity: str
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    @property
    def path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases/{self.name}"


def _micro_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(self, api: KubeApi, config: LeaseConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._api = api
        self._config = config
        self._clock = clock
        # The Lease as last read, and when (locally) its holder or renewTime last changed.
        self._observed: dict[str, Any] | None = None
        self._observed_at = 0.0
        self._leading = False

    @property
    def leading(self) -> bool:
        return self._leading

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this replica leads (True) or ``stop`` is set (False)."""
        announced = False
        while not stop.is_set():
            if await self._try_acquire_or_renew():
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
        """Renew until the Lease is lost; then raise ``LeadershipLost``."""
        last_renewal = self._clock()
        while True:
            await asyncio.sleep(self._config.retry_period)
            if await self._try_acquire_or_renew():
                last_renewal = self._clock()
            elif self._clock() - last_renewal > self._config.renew_deadline or not self._leading:
                self._leading = False
                raise LeadershipLost(
                    f"Lease {self._config.namespace}/{self._config.name} not renewed for"
                    f" {self._config.renew_deadline:.0f}s; stopping so that only one replica acts"
                )

    async def release(self) -> None:
        """Give the Lease up (on shutdown) so that a standby need not wait for it to expire."""
        if not self._leading or self._observed is None:
            return
        self._leading = False
        lease = dict(self._observed)
        lease["spec"] = {**lease["spec"], "holderIdentity": None, "leaseDurationSeconds": 1}
        try:
            await self._api.request("PUT", self._config.path, body=lease)
        except (ApiError, aiohttp.ClientError, TimeoutError) as error:
            log.warning("could not release the Lease (it expires on its own): %s", error)

    async def _try_acquire_or_renew(self) -> bool:
        config = self._config
        now = datetime.now(UTC)
        try:
            lease = await self._api.get(config.path)
            if lease is None:
                created = await self._api.request("POST", config.path.rsplit("/", 1)[0], body=self._new_lease(now))
                self._observe(created[1])
                self._leading = True
                return True
            self._observe(lease)
            spec = lease.get("spec") or {}
            held_by_other = spec.get("holderIdentity") not in (None, "", config.identity)
            if held_by_other and self._clock() < self._observed_at + config.lease_duration:
                self._leading = False
                return False
            ours = spec.get("holderIdentity") == config.identity
            transitions = int(spec.get("leaseTransitions", 0))
            renewed = {
                **lease,
                "spec": {
                    **spec,
                    "holderIdentity": config.identity,
                    "leaseDurationSeconds": int(config.lease_duration),
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
        self._leading = True
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
                "leaseDurationSeconds": int(self._config.lease_duration),
                "acquireTime": _micro_time(now),
                "renewTime": _micro_time(now),
                "leaseTransitions": 0,
            },
        }
