"""End-to-end fixtures on a real node: the image from the Dockerfile, the chart, pods that really run.

One stack per session (PostgreSQL, Redis, the control plane and a node with
containerd, kubelet, kube-proxy and metrics-server); the operator chart is
installed once by the real Helm, watching every namespace; each test gets
its own namespace, database and Redis logical database, with the Secrets a
Falachefe needs pointing at the servers where pods reach them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from nodekit import OPERATOR_NAMESPACE, OPERATOR_RELEASE, App

from falachefe_devstack import toolchain
from falachefe_devstack.helm import Helm, operator_values
from falachefe_devstack.kube import temporary_namespace
from falachefe_devstack.llm_standin import FakeOpenAI
from falachefe_devstack.seed import seed_tenant
from falachefe_devstack.stack import LocalStack
from falachefe_runtime.db.migrate import migrate
from falachefe_runtime.queues import Queues

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    stack = LocalStack(tmp_path_factory.mktemp("cluster"), with_node=True).start()
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def cluster_api(cluster: LocalStack) -> k8s.ApiClient:
    assert cluster.kube is not None
    return k8s_config.new_client_from_config(config_file=str(cluster.kube.kubeconfig))


@pytest.fixture(scope="session")
def pod_llm(cluster: LocalStack) -> Iterator[FakeOpenAI]:
    """The LLM stand-in where pods reach it (the host end of the node's link)."""
    server = FakeOpenAI(host=cluster.pod_host).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def helm(cluster: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    assert cluster.kube is not None
    return Helm(toolchain.ensure_helm() / "helm", tmp_path_factory.mktemp("helm"), cluster.kube.kubeconfig)


@pytest.fixture(scope="session")
def operator_release(cluster: LocalStack, helm: Helm) -> str:
    """The operator chart installed as a platform team does, its pod running the image built from this tree."""
    assert cluster.image is not None
    values = operator_values(cluster.image, [], watch={"allNamespaces": True, "namespaces": []})
    # The session's release owns the CRD, whichever release had it before (test_operator_upgrade's).
    flags = ("--create-namespace", "--take-ownership", "--wait", "--timeout", "5m")
    helm.install(OPERATOR_RELEASE, OPERATOR_NAMESPACE, values, flags=flags)
    return OPERATOR_RELEASE


_redis_databases = itertools.count(1)


@pytest.fixture
async def app(
    request: pytest.FixtureRequest,
    cluster: LocalStack,
    cluster_api: k8s.ApiClient,
    operator_release: str,
    pod_llm: FakeOpenAI,
) -> AsyncIterator[App]:
    """One test's Falachefe world, served by the session's operator."""
    async with world(request, cluster, cluster_api, pod_llm) as made:
        yield made


@pytest.fixture
async def app_without_operator(
    request: pytest.FixtureRequest, cluster: LocalStack, cluster_api: k8s.ApiClient, pod_llm: FakeOpenAI
) -> AsyncIterator[App]:
    """One test's Falachefe world for a test that installs its own operator."""
    async with world(request, cluster, cluster_api, pod_llm) as made:
        yield made


@contextlib.asynccontextmanager
async def world(
    request: pytest.FixtureRequest, cluster: LocalStack, cluster_api: k8s.ApiClient, pod_llm: FakeOpenAI
) -> AsyncIterator[App]:
    assert cluster.postgres is not None and cluster.redis is not None
    database = f"e2e_{uuid.uuid4().hex[:10]}"
    host_dsn = await asyncio.to_thread(cluster.postgres.create_database, database)
    await migrate(host_dsn)
    tenant = await seed_tenant(host_dsn, users=10)
    redis_db = next(_redis_databases)
    secrets = {
        "falachefe-db": {"dsn": cluster.postgres.dsn(database, host=cluster.pod_host)},
        "falachefe-redis": {"url": cluster.redis.url(redis_db, host=cluster.pod_host)},
        "falachefe-llm": {"apiKey": "e2e-key-not-secret"},
        "falachefe-otp": {"otpSecret": uuid.uuid4().hex},
    }
    with temporary_namespace(cluster_api, request.node.name) as namespace:
        core = k8s.CoreV1Api(cluster_api)
        for name, data in secrets.items():
            core.create_namespaced_secret(
                namespace, k8s.V1Secret(metadata=k8s.V1ObjectMeta(name=name), string_data=data)
            )
        queues = Queues(cluster.redis.url(redis_db))
        try:
            yield App(namespace, host_dsn, cluster.redis.url(redis_db), tenant, queues, cluster, cluster_api, pod_llm)
        finally:
            await queues.close()
    await asyncio.to_thread(cluster.postgres.drop_database, database)
