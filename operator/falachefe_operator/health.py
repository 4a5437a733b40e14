"""The operator's HTTP endpoints: liveness on one port, Prometheus metrics on another.

Both are up from the start, before leadership is won: a standby replica is
healthy (it is waiting, as it should), and its metrics say it is not the
leader.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest


class Endpoints:
    def __init__(
        self,
        *,
        liveness_port: int,
        metrics_port: int,
        describe: Callable[[], dict[str, Any]],
        host: str = "0.0.0.0",  # noqa: S104 - probes and scrapes come from outside the pod
    ) -> None:
        self._ports = {"liveness": liveness_port, "metrics": metrics_port}
        self._describe = describe
        self._host = host
        self._runners: list[web.AppRunner] = []

    async def start(self) -> None:
        liveness = web.Application()
        liveness.router.add_get("/healthz", self._healthz)
        metrics = web.Application()
        metrics.router.add_get("/metrics", self._metrics)
        for app, port in ((liveness, self._ports["liveness"]), (metrics, self._ports["metrics"])):
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, self._host, port).start()
            self._runners.append(runner)

    async def stop(self) -> None:
        runners, self._runners = self._runners, []
        for runner in runners:
            await runner.cleanup()

    async def _healthz(self, _: web.Request) -> web.Response:
        # Answering at all proves the event loop is not stuck.
        return web.json_response({"status": "ok", **self._describe()})

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})
