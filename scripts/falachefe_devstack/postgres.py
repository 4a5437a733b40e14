"""A throwaway PostgreSQL server: initdb into a temporary directory, on loopback (and a node's link)."""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from .process import ManagedProcess, free_port, port_open

SUPERUSER = "postgres"
PASSWORD = "falachefe-local"  # noqa: S105 - a throwaway server on loopback


def find_bindir() -> Path:
    """The directory of ``initdb``/``postgres``: Debian keeps them off PATH."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for directory in candidates:
        if Path(directory, "initdb").exists():
            return Path(directory)
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise FileNotFoundError("PostgreSQL server binaries not found: install postgresql (scripts/bootstrap.sh does)")


@dataclass
class PostgresServer:
    """One PostgreSQL cluster; ``dsn(db)`` gives a connection string for a database in it."""

    workdir: Path
    port: int = field(default_factory=free_port)
    #: Addresses to listen on besides loopback (the host end of a local node's link), and the
    #: networks allowed to connect from there (the node and its pods).
    extra_address: str | None = None
    clients: tuple[str, ...] = ()
    process: ManagedProcess | None = None
    #: Where the cluster's files live: ``workdir``, or as root a directory of
    #: nobody's own (see ``_unprivileged_rundir``).
    rundir: Path | None = None

    @property
    def datadir(self) -> Path:
        return (self.rundir or self.workdir) / "data"

    def dsn(self, database: str = "postgres", host: str = "127.0.0.1") -> str:
        return f"postgresql://{SUPERUSER}:{PASSWORD}@{host}:{self.port}/{database}"

    def start(self, timeout: float = 60.0) -> PostgresServer:
        bindir = find_bindir()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.rundir, run_as = _unprivileged_rundir()
        rundir = self.rundir or self.workdir
        pwfile = rundir / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        if self.rundir is not None:
            _give_to_nobody(pwfile)
        env = {**os.environ, "LC_ALL": "C.UTF-8"}
        subprocess.run(
            [
                *run_as,
                str(bindir / "initdb"),
                "-D",
                str(self.datadir),
                "-U",
                SUPERUSER,
                "--pwfile",
                str(pwfile),
                "-A",
                "scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            env=env,
        )
        with (self.datadir / "pg_hba.conf").open("a") as hba:
            for network in self.clients:
                hba.write(f"host all all {network} scram-sha-256\n")
        listen = ",".join(["127.0.0.1", *([self.extra_address] if self.extra_address else [])])
        argv = [
            *run_as,
            str(bindir / "postgres"),
            "-D",
            str(self.datadir),
            "-p",
            str(self.port),
            "-h",
            listen,
            "-k",
            str(rundir),
            # A test server: durability off, enough connections for pools of many workers.
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=400",
            "-c",
            "shared_buffers=128MB",
        ]
        self.process = ManagedProcess("postgres", argv, self.workdir / "postgres.log", env=env).start()
        self.process.wait_until(
            lambda: port_open(self.port) and self._accepts(bindir), timeout, "accepting connections"
        )
        return self

    def halt(self, timeout: float = 20.0) -> None:
        """Stop the server as an outage would (fast shutdown: sessions cut), keeping its data for ``resume``."""
        if self.process is None or self.process.popen is None or self.process.popen.poll() is not None:
            return
        self.process.popen.send_signal(signal.SIGINT)  # "fast": a smart SIGTERM would wait for pooled sessions
        self.process.popen.wait(timeout)

    def resume(self, timeout: float = 60.0) -> None:
        """Start a halted server again on the same data directory and port.

        From a thread that outlives the server: it dies with the thread that started it.
        """
        assert self.process is not None, "resume() after start() and halt()"
        bindir = find_bindir()
        self.process.start()
        self.process.wait_until(
            lambda: port_open(self.port) and self._accepts(bindir), timeout, "accepting connections again"
        )

    def create_database(self, name: str) -> str:
        """Create an empty database (``name`` is ours, never user input); returns its DSN."""
        self._admin(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _admin(self, sql: str) -> None:
        async def execute() -> None:
            connection = await asyncpg.connect(self.dsn())
            try:
                await connection.execute(sql)
            finally:
                await connection.close()

        asyncio.run(execute())

    def _accepts(self, bindir: Path) -> bool:
        result = subprocess.run(
            [str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER],
            capture_output=True,
            check=False,
        )
        return result.returncode == 0

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=20)
        if self.rundir is not None:
            shutil.rmtree(self.rundir, ignore_errors=True)


def _unprivileged_rundir() -> tuple[Path | None, list[str]]:
    """PostgreSQL refuses to run as root: as root, run it as ``nobody``.

    nobody gets a directory of its own directly under the system's temporary
    directory (world-traversable), rather than permissions widened on the
    caller's work directory: pytest resets its base directory to 0700 when a
    second session starts, which would cut a running server off its files.
    """
    if os.geteuid() != 0:
        return None, []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise FileNotFoundError("running as root needs setpriv (util-linux) to drop to 'nobody' for PostgreSQL")
    rundir = Path(tempfile.mkdtemp(prefix="falachefe-pg-"))
    _give_to_nobody(rundir)
    nobody = pwd.getpwnam("nobody")
    return rundir, [setpriv, f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]


def _give_to_nobody(path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    os.chown(path, nobody.pw_uid, nobody.pw_gid)
