"""Resources that share Secrets share their reads: counted by the API server itself.

An operator start reconciles every resource at once, and each checks the
Secrets it references; resources of one namespace often reference the same
ones. ``SecretReads`` makes that one request per Secret, not one per
resource, without holding back a fix (a missing Secret is never kept).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from kubernetes import client as k8s
from opkit import Clock, create_secrets, put_secret, sample

from falachefe_devstack.apiserver_metrics import difference, request_counts
from falachefe_devstack.kube import ControlPlane
from falachefe_operator.apply import SecretReads, check_secrets
from falachefe_operator.credentials import load_credentials
from falachefe_operator.kubeapi import KubeApi
from falachefe_operator.spec import FalachefeSpec

REDIS_URL = "redis://redis.example:6379/0"


@pytest.fixture
async def api(kube: ControlPlane) -> AsyncIterator[KubeApi]:
    client = KubeApi(load_credentials(str(kube.kubeconfig)))
    yield client
    await client.close()


def secret_gets(kube: ControlPlane, before: dict[tuple[str, str, str], float]) -> float:
    return sum(
        value
        for (verb, resource, _), value in difference(request_counts(kube), before).items()
        if verb == "GET" and resource == "/secrets"
    )


def spec_of(name: str, namespace: str) -> FalachefeSpec:
    return FalachefeSpec.model_validate(sample(name, namespace)["spec"])


async def test_twenty_resources_sharing_three_secrets_read_each_once(
    kube: ControlPlane, kube_api: k8s.ApiClient, namespace: str, api: KubeApi
) -> None:
    create_secrets(kube_api, namespace, "shared", REDIS_URL)
    spec = spec_of("shared", namespace)
    clock = Clock(1000.0)
    reads = SecretReads(api, clock=clock)

    before = request_counts(kube)
    checks = await asyncio.gather(*(check_secrets(reads, namespace, spec) for _ in range(20)))
    assert all(check.problems == [] and check.redis_url == REDIS_URL for check in checks)
    assert secret_gets(kube, before) == 3

    # Within the interval, a later check is answered too; after it, the Secrets are read again.
    clock.now += 1.0
    before = request_counts(kube)
    assert (await check_secrets(reads, namespace, spec)).redis_url == REDIS_URL
    assert secret_gets(kube, before) == 0
    clock.now += 2.0
    put_secret(k8s.CoreV1Api(kube_api), namespace, "shared-redis", {"url": "redis://elsewhere:6379/1"})
    before = request_counts(kube)
    assert (await check_secrets(reads, namespace, spec)).redis_url == "redis://elsewhere:6379/1"
    assert secret_gets(kube, before) == 3


async def test_a_missing_secret_is_asked_again_at_once(
    kube: ControlPlane, kube_api: k8s.ApiClient, namespace: str, api: KubeApi
) -> None:
    spec = spec_of("late", namespace)
    reads = SecretReads(api, clock=Clock(1000.0))  # the clock never moves: only what is kept is reused
    create_secrets(kube_api, namespace, "late", REDIS_URL)
    k8s.CoreV1Api(kube_api).delete_namespaced_secret("late-otp", namespace)

    missing = await check_secrets(reads, namespace, spec)
    assert [problem.reason for problem in missing.problems] == ["SecretNotFound"]
    assert "late-otp" in missing.problems[0].message

    put_secret(k8s.CoreV1Api(kube_api), namespace, "late-otp", {"otpSecret": "an HMAC key"})
    before = request_counts(kube)
    fixed = await check_secrets(reads, namespace, spec)
    assert fixed.problems == []
    assert secret_gets(kube, before) == 1  # the two found before were kept; the missing one read again
