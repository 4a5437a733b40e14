"""A throwaway Redis server on loopback (and a node's link), persisting as production must: AOF.

The queues live in Redis: a restart without persistence loses every queued
job. So the local stack runs Redis as production should, with the
append-only file (``appendonly yes``, ``appendfsync everysec``: at most
about a second of writes lost) and no RDB snapshots. ``persist=False``
gives a server without any, for tests of what that costs.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .process import ManagedProcess, free_port, port_open

#: Enough logical databases to give every test its own.
DATABASES = 1024


@dataclass
class RedisServer:
    workdir: Path
    port: int = field(default_factory=free_port)
    #: An address to listen on besides loopback: the host end of a local node's link.
    extra_address: str | None = None
    #: AOF on (production's setting) or no persistence at all.
    persist: bool = True
    process: ManagedProcess | None = None

    def url(self, db: int = 0, host: str = "127.0.0.1") -> str:
        return f"redis://{host}:{self.port}/{db}"

    def start(self, timeout: float = 20.0) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server not found: install redis-server (scripts/bootstrap.sh does)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            " ".join(["127.0.0.1", *([self.extra_address] if self.extra_address else [])]),
            "--dir",
            str(self.workdir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.persist else "no",
            "--appendfsync",
            "everysec",
            "--databases",
            str(DATABASES),
            "--daemonize",
            "no",
            # Protected mode refuses every client but loopback's while there is no password;
            # the one other address is the node's link, which only this machine's pods reach.
            "--protected-mode",
            "no" if self.extra_address else "yes",
        ]
        self.process = ManagedProcess("redis", argv, self.workdir / "redis.log").start()
        self.process.wait_until(lambda: port_open(self.port), timeout, "listening")
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
