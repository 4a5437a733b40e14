"""A throwaway PostgreSQL server: initdb into a temporary directory, loopback only."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

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
    process: ManagedProcess | None = None

    @property
    def datadir(self) -> Path:
        return self.workdir / "data"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 60.0) -> PostgresServer:
        bindir = find_bindir()
        self.workdir.mkdir(parents=True, exist_ok=True)
        pwfile = self.workdir / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        env = {**os.environ, "LC_ALL": "C.UTF-8"}
        run_as = _unprivileged_prefix(self.workdir)
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
        argv = [
            *run_as,
            str(bindir / "postgres"),
            "-D",
            str(self.datadir),
            "-p",
            str(self.port),
            "-h",
            "127.0.0.1",
            "-k",
            str(self.workdir),
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


def _unprivileged_prefix(workdir: Path) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as ``nobody``."""
    if os.geteuid() != 0:
        return []
    nobody = pwd.getpwnam("nobody")
    for path in [workdir, *workdir.parents]:
        if path == Path("/"):
            break
        # nobody needs to traverse to its data directory.
        os.chmod(path, os.stat(path).st_mode | 0o011)  # noqa: S103 - search (x) bit only
    os.chown(workdir, nobody.pw_uid, nobody.pw_gid)
    for child in workdir.iterdir():
        os.chown(child, nobody.pw_uid, nobody.pw_gid)
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise FileNotFoundError("running as root needs setpriv (util-linux) to drop to 'nobody' for PostgreSQL")
    return [setpriv, f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]
