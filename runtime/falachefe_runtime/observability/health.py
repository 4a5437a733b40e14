"""The worker's HTTP side: ``/healthz`` and ``/readyz`` on one port, ``/metrics`` on another.

- ``/healthz`` (liveness) answers 200 while the process is worth keeping:
  the event loop is responsive (a heartbeat task measures how late it runs)
  and the queue worker's loop is alive. A loop blocked for long enough does
  not answer at all, which the kubelet also reads as a failure.
- ``/readyz`` (readiness) answers 200 only when every dependency answers
  (PostgreSQL and Redis), each within a short timeout, the worker is not
  paused by a dependency outage, and the process is not shutting down. The
  body names the failing checks and, during an outage, the dependencies and
  their error classes (``outage``), never a DSN or a server's message.
- ``/metrics`` serves the default Prometheus registry, where the workers,
  the database pools and the cache register their metrics.

aiohttp rather than ``prometheus_client.start_http_server``: it runs on
the worker's own event loop, so a health answer proves that loop is alive,
and there is no extra thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

log = logging.getLogger(__name__)

#: A readiness check: true when the dependency answers (raising counts as false).
Check = Callable[[], Awaitable[bool]]

#: How often the heartbeat runs, and how late it may be before /healthz fails.
HEARTBEAT_S = 0.5
MAX_LOOP_LAG_S = 10.0


class HealthServer:
    def __init__(
        self,
        *,
        readiness: Mapping[str, Check],
        alive: Callable[[], bool] = lambda: True,
        outage: Callable[[], Mapping[str, Any] | None] = lambda: None,
        health_port: int = 8080,
        metrics_port: int = 9102,
        host: str = "0.0.0.0",  # noqa: S104 - probes and scrapes come from outside the pod
        check_timeout_s: float = 2.0,
    ) -> None:
        self._readiness = dict(readiness)
        self._alive = alive
        self._outage = outage
        self._host = host
        self._ports = {"health": health_port, "metrics": metrics_port}
        self._check_timeout_s = check_timeout_s
        self._runners: list[web.AppRunner] = []
        self._heartbeat: asyncio.Task[None] | None = None
        self._last_beat = time.monotonic()
        self.shutting_down = False
        #: The ports actually bound (differs from the requested one when that was 0).
        self.bound: dict[str, int] = {}

    async def start(self) -> None:
        health = web.Application()
        health.router.add_get("/healthz", self._healthz)
        health.router.add_get("/readyz", self._readyz)
        metrics = web.Application()
        metrics.router.add_get("/metrics", self._metrics)
        for role, app in (("health", health), ("metrics", metrics)):
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, self._host, self._ports[role])
            await site.start()
            self._runners.append(runner)
            # asyncio's Server or uvloop's (not a subclass of it): both list their sockets.
            sockets = getattr(site._server, "sockets", None)
            assert sockets, f"the {role} server has no socket"
            self.bound[role] = int(sockets[0].getsockname()[1])
        self._heartbeat = asyncio.create_task(self._beat(), name="health-heartbeat")

    async def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()

    async def _beat(self) -> None:
        while True:
            self._last_beat = time.monotonic()
            await asyncio.sleep(HEARTBEAT_S)

    async def _healthz(self, request: web.Request) -> web.Response:
        lag = time.monotonic() - self._last_beat - HEARTBEAT_S
        problems = []
        if lag > MAX_LOOP_LAG_S:
            problems.append(f"event loop lagging by {lag:.1f}s")
        if not self._alive():
            problems.append("queue worker loop is not running")
        status = 503 if problems else 200
        return web.json_response({"status": "fail" if problems else "ok", "problems": problems}, status=status)

    async def _readyz(self, request: web.Request) -> web.Response:
        names = list(self._readiness)
        outcomes = await asyncio.gather(*(self._check(name) for name in names))
        checks = dict(zip(names, outcomes, strict=True))
        outage = self._outage()
        ready = all(checks.values()) and outage is None and not self.shutting_down
        body = {"ready": ready, "checks": checks, "shutting_down": self.shutting_down, "outage": outage}
        return web.json_response(body, status=200 if ready else 503)

    async def _check(self, name: str) -> bool:
        try:
            async with asyncio.timeout(self._check_timeout_s):
                answered = await self._readiness[name]()
        except Exception as error:
            # The type only: driver messages can quote hosts and users.
            log.warning("readiness check failed", extra={"check": name, "error": type(error).__name__})
            return False
        if not answered:
            log.warning("readiness check failed", extra={"check": name})
        return bool(answered)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})
