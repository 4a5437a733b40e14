"""Fixtures for the real local stack: PostgreSQL, Redis and a Kubernetes control plane.

Servers are session-scoped and start on first use, so a test of a pure
function starts nothing. Each test gets its own database, its own Redis
logical database and its own namespace, so tests cannot see each other's
data.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from falachefe_devstack import toolchain
from falachefe_devstack.kube import ControlPlane, temporary_namespace
from falachefe_devstack.metrics_standin import MetricsServerStandIn, registered
from falachefe_devstack.postgres import PostgresServer
from falachefe_devstack.redis import DATABASES, RedisServer

REPO = Path(__file__).resolve().parents[1]


# -- servers -------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = PostgresServer(tmp_path_factory.mktemp("postgres")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tools() -> toolchain.Toolchain:
    return toolchain.ensure_all()


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory, tools: toolchain.Toolchain) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path_factory.mktemp("kube"), tools).start()
    yield plane
    plane.stop()


# -- per-test isolation --------------------------------------------------------

_database_numbers = itertools.count(1)
_redis_numbers = itertools.count(1)


@pytest.fixture
def pg_dsn(pg_server: PostgresServer) -> Iterator[str]:
    """A DSN to a fresh, empty database that only this test uses."""
    name = f"test_{next(_database_numbers)}_{uuid.uuid4().hex[:8]}"
    yield pg_server.create_database(name)
    pg_server.drop_database(name)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """A URL to a Redis logical database that only this test uses, empty at start."""
    number = next(_redis_numbers) % DATABASES or 1
    url = redis_server.url(number)
    connection = redis.Redis.from_url(url)
    connection.flushdb()
    connection.close()
    yield url


# -- Kubernetes ----------------------------------------------------------------


@pytest.fixture(scope="session")
def kube_api(kube: ControlPlane) -> k8s.ApiClient:
    """An admin API client for the local control plane."""
    return k8s_config.new_client_from_config(config_file=str(kube.kubeconfig))


@pytest.fixture
def namespace(request: pytest.FixtureRequest, kube_api: k8s.ApiClient) -> Iterator[str]:
    """A namespace for this test alone, deleted (with its contents) afterwards."""
    with temporary_namespace(kube_api, request.node.name) as name:
        yield name


@pytest.fixture(scope="module")
def metrics_server(kube_api: k8s.ApiClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetricsServerStandIn]:
    """metrics.k8s.io, served by the stand-in behind a real APIService, for the module that asks for it."""
    server = MetricsServerStandIn(tmp_path_factory.mktemp("metrics-server")).start()
    try:
        with registered(kube_api, server):
            yield server
    finally:
        server.stop()
