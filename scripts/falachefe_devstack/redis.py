"""A throwaway Redis server on loopback, no persistence."""

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
    process: ManagedProcess | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

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
            "127.0.0.1",
            "--dir",
            str(self.workdir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--databases",
            str(DATABASES),
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
        ]
        self.process = ManagedProcess("redis", argv, self.workdir / "redis.log").start()
        self.process.wait_until(lambda: port_open(self.port), timeout, "listening")
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
