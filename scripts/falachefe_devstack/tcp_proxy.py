"""A TCP proxy on loopback that a test can make hang, in front of a real server.

Faults between a client and the API server (a stalled load balancer, a
network partition, a half-open connection) are not something the real
server can be asked to do, so the test puts this proxy in between and
points the client's kubeconfig at it. It forwards bytes both ways, TLS
and all, without looking at them, until ``hang()``: from then on every
connection, open or new, is a black hole (bytes are read and dropped, none
is delivered, nothing is closed), as the client sees a peer that stopped
answering. ``resume()`` ends the partition: the connections that were
open are reset (their streams lost bytes) and new ones are forwarded again.

It runs on its own event loop in a daemon thread, so it keeps forwarding
whatever the test's own loop is doing.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable

CHUNK = 64 * 1024


class HangingProxy:
    def __init__(self, target_host: str, target_port: int, *, name: str = "tcp-proxy") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.name = name
        self.port = 0
        self._hanging = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter | None]] = set()

    @property
    def hanging(self) -> bool:
        return self._hanging

    def start(self, timeout: float = 10.0) -> int:
        """Listen on a free loopback port; returns it."""
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._server = loop.run_until_complete(asyncio.start_server(self._accept, "127.0.0.1", 0))
            self.port = int(self._server.sockets[0].getsockname()[1])
            ready.set()
            loop.run_forever()
            self._server.close()
            self._reset_all()
            loop.run_until_complete(self._server.wait_closed())
            loop.close()

        self._thread = threading.Thread(target=serve, name=self.name, daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError(f"{self.name} did not start within {timeout:.0f}s")
        return self.port

    def hang(self) -> None:
        """Every connection, open or new, stops delivering anything in either direction."""
        self._hanging = True

    def resume(self) -> None:
        """Reset the connections that hung; forward new ones again."""
        self._call(self._resume)

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def _call(self, function: Callable[[], None]) -> None:
        assert self._loop is not None, "start() first"
        done = threading.Event()

        def run() -> None:
            try:
                function()
            finally:
                done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait(10)

    def _resume(self) -> None:
        self._reset_all()
        self._hanging = False

    def _reset_all(self) -> None:
        for client, upstream in list(self._connections):
            for writer in (client, upstream):
                if writer is not None:
                    writer.transport.abort()
        self._connections.clear()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        entry: tuple[asyncio.StreamWriter, asyncio.StreamWriter | None] = (client_writer, None)
        self._connections.add(entry)
        try:
            while self._hanging:  # a partition: the handshake never gets an answer
                if not await client_reader.read(CHUNK):
                    return
            upstream_reader, upstream_writer = await asyncio.open_connection(self.target_host, self.target_port)
            self._connections.discard(entry)
            entry = (client_writer, upstream_writer)
            self._connections.add(entry)
            await asyncio.gather(self._pipe(client_reader, upstream_writer), self._pipe(upstream_reader, client_writer))
        except OSError:
            pass
        finally:
            self._connections.discard(entry)
            for writer in entry:
                if writer is not None:
                    writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(CHUNK):
                if self._hanging:
                    continue  # dropped: the peer never sees it
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError):
            writer.close()
