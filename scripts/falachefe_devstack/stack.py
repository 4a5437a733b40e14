"""The whole local stack in one object, and ``python -m falachefe_devstack.stack up``."""

from __future__ import annotations

import argparse
import shutil
import signal
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from . import toolchain
from .kube import ControlPlane
from .postgres import PostgresServer
from .redis import RedisServer


@dataclass
class LocalStack:
    """PostgreSQL, Redis and (optionally) a Kubernetes control plane under one directory."""

    workdir: Path
    with_kube: bool = True
    postgres: PostgresServer | None = None
    redis: RedisServer | None = None
    kube: ControlPlane | None = None
    _started: list[object] = field(default_factory=list)

    def start(self) -> LocalStack:
        try:
            self.postgres = PostgresServer(self.workdir / "postgres").start()
            self.redis = RedisServer(self.workdir / "redis").start()
            if self.with_kube:
                self.kube = ControlPlane(self.workdir / "kube", toolchain.ensure_all()).start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for server in (self.kube, self.redis, self.postgres):
            if server is not None:
                server.stop()

    def describe(self) -> str:
        lines = []
        if self.kube is not None:
            lines += [
                f"kube-apiserver:  {self.kube.server}",
                f"KUBECONFIG:      {self.kube.kubeconfig}",
                f"restricted user: {self.kube.restricted_kubeconfig}",
            ]
        if self.postgres is not None:
            lines.append(f"PostgreSQL:      {self.postgres.dsn()}")
        if self.redis is not None:
            lines.append(f"Redis:           {self.redis.url()}")
        lines.append(f"logs:            {self.workdir}/*/*.log")
        return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description="Run the local stack until Ctrl-C.")
    parser.add_argument("command", choices=["up"])
    parser.add_argument("--workdir", type=Path, help="keep state here instead of a temporary directory")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="falachefe-stack-"))
    stack = LocalStack(workdir).start()
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    print(stack.describe(), flush=True)
    print("Ctrl-C stops everything.", flush=True)
    try:
        stopped.wait()
    finally:
        stack.stop()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
