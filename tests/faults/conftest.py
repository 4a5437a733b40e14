"""Fixtures for the fault suite: a PostgreSQL and a Redis of its own, which its tests stop and start.

The session's servers (tests/conftest.py) are shared by every other test,
so the faults are injected into servers this folder starts for itself, the
same way (``falachefe_devstack``: the Redis with AOF, as production runs it).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from falachefe_devstack.postgres import PostgresServer
from falachefe_devstack.redis import RedisServer

# The workers' harness (real worker processes, the Node producer) lives with the runtime's tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))


@pytest.fixture(scope="module")
def fault_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = PostgresServer(tmp_path_factory.mktemp("fault-postgres")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fault_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("fault-redis"), persist=True).start()
    yield server
    server.stop()
