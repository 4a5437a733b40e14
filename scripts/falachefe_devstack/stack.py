"""The whole local stack in one object, and ``python -m falachefe_devstack.stack up``."""

from __future__ import annotations

import argparse
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import images, toolchain
from .kube import ControlPlane
from .metrics_server import register_metrics_server
from .node import Node
from .postgres import PostgresServer
from .redis import RedisServer


@dataclass
class LocalStack:
    """PostgreSQL, Redis and (optionally) a Kubernetes control plane, with or without a real node.

    With ``with_node``, pods really run: the project image is built (or
    reused) from the Dockerfile and imported into the node, and PostgreSQL,
    Redis and the apiserver also listen on the host end of the node's link,
    where pods reach them (``pod_host``).
    """

    workdir: Path
    with_kube: bool = True
    with_node: bool = False
    postgres: PostgresServer | None = None
    redis: RedisServer | None = None
    kube: ControlPlane | None = None
    node: Node | None = None
    #: The project image the node runs (``localhost/falachefe:dev-<context hash>``).
    image: str | None = None

    @property
    def pod_host(self) -> str:
        """The address pods use for the servers on this machine."""
        return self.node.network.host_address if self.node is not None else "127.0.0.1"

    def start(self) -> LocalStack:
        try:
            tools = toolchain.ensure_all() if self.with_kube else None
            address: str | None = None
            if self.with_node:
                assert tools is not None, "a node needs the control plane"
                built = images.ensure_node_images()
                self.image = built.project
                self.node = Node(self.workdir / "node", tools).prepare()
                address = self.node.network.host_address
            clients = (f"{address}/32", self.node.network.pod_cidr) if self.node else ()
            self.postgres = PostgresServer(self.workdir / "postgres", extra_address=address, clients=clients).start()
            self.redis = RedisServer(self.workdir / "redis", extra_address=address).start()
            if tools is not None:
                self.kube = ControlPlane(
                    self.workdir / "kube", tools, address=address or "127.0.0.1", with_node=self.node is not None
                ).start()
            if self.node is not None and self.kube is not None:
                started = time.monotonic()
                self.node.start(self.kube, images=built.archives, sandbox_image=built.sandbox)
                register_metrics_server(self.kube, self.node)
                toolchain.log(f"node {self.node.name} Ready with metrics in {time.monotonic() - started:.0f}s")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for server in (self.node, self.kube, self.redis, self.postgres):
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
        if self.node is not None:
            lines += [f"node:            {self.node.name} (pods in {self.node.network.pod_cidr})"]
            lines += [f"image:           {self.image}"]
        if self.postgres is not None:
            lines.append(f"PostgreSQL:      {self.postgres.dsn()}")
        if self.redis is not None:
            lines.append(f"Redis:           {self.redis.url()}")
        if self.node is not None:
            lines.append(f"from pods:       PostgreSQL and Redis at {self.pod_host}")
        lines.append(f"logs:            {self.workdir}/*/*.log")
        return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description="Run the local stack until Ctrl-C.")
    parser.add_argument("command", choices=["up"])
    parser.add_argument("--workdir", type=Path, help="keep state here instead of a temporary directory")
    parser.add_argument("--node", action="store_true", help="with a real node: pods run, from the project's image")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="falachefe-stack-"))

    def interrupt(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the tear-down short
        raise KeyboardInterrupt

    # SIGTERM unwinds like Ctrl-C, during start-up too: whatever started is stopped.
    signal.signal(signal.SIGTERM, interrupt)
    stack = LocalStack(workdir, with_node=args.node)
    try:
        stack.start()
        print(stack.describe(), flush=True)
        print("Ctrl-C stops everything.", flush=True)
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
