"""An aiohttp application served from its own event loop in a daemon thread.

The stand-ins (the LLM, metrics-server) must keep answering whatever the
caller's own loop is doing (a test's, or none at all in the demo), and
workers in other processes reach them over TCP: so each gets a loop and a
thread of its own, started and stopped from plain synchronous code.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from typing import Any

from aiohttp import web


class BackgroundServer:
    def __init__(
        self,
        app: web.Application,
        *,
        name: str,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        **runner_options: Any,
    ) -> None:
        self.app = app
        self.name = name
        self.host = host
        self.port = port
        self._ssl = ssl_context
        self._runner_options = runner_options
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> int:
        """Serve; returns the port (the one asked for, or the one the OS chose for 0)."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._open())
            except BaseException as error:  # handed to start() below
                failure.append(error)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._close())
            loop.close()

        self._thread = threading.Thread(target=serve, name=self.name, daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError(f"{self.name} did not start within {timeout:.0f}s")
        if failure:
            raise failure[0]
        return self.port

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    async def _open(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, **self._runner_options)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self._ssl)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self.port = int(server.sockets[0].getsockname()[1])

    async def _close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
