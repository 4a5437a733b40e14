"""The Lease algorithm against the real API server: expiry observed locally, one winner, release."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from kubernetes import client as k8s

from falachefe_devstack.kube import ControlPlane
from falachefe_operator.kubeapi import KubeApi, load_configuration
from falachefe_operator.leader import LeaderElector, LeadershipLost, LeaseConfig


@pytest.fixture
async def api(kube: ControlPlane) -> AsyncIterator[KubeApi]:
    client = KubeApi(load_configuration(str(kube.kubeconfig)))
    yield client
    await client.close()


def config(namespace: str, identity: str) -> LeaseConfig:
    return LeaseConfig(
        namespace=namespace, name="leader", identity=identity, lease_duration=2.0, renew_deadline=1.5, retry_period=0.2
    )


async def test_a_lease_held_by_a_silent_holder_is_taken_only_after_it_expires(
    api: KubeApi, kube_api: k8s.ApiClient, namespace: str
) -> None:
    # A holder that crashed: its renewTime is recent, and it never renews again.
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    k8s.CoordinationV1Api(kube_api).create_namespaced_lease(
        namespace,
        {
            "metadata": {"name": "leader"},
            "spec": {"holderIdentity": "ghost", "leaseDurationSeconds": 2, "renewTime": now, "acquireTime": now},
        },
    )
    elector = LeaderElector(api, config(namespace, "me"))
    started = time.monotonic()
    assert await asyncio.wait_for(elector.acquire(asyncio.Event()), timeout=30)
    waited = time.monotonic() - started
    # Not before the lease duration had passed as seen from here (clocks are never compared).
    assert waited >= 2.0, waited
    lease = k8s.CoordinationV1Api(kube_api).read_namespaced_lease("leader", namespace)
    assert lease.spec.holder_identity == "me"
    assert lease.spec.lease_transitions == 1


async def test_racing_candidates_elect_exactly_one(api: KubeApi, namespace: str) -> None:
    electors = [LeaderElector(api, config(namespace, f"candidate-{i}")) for i in range(4)]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(e.acquire(stop)) for e in electors]
    done, _ = await asyncio.wait(tasks, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    await asyncio.sleep(0.6)  # three more attempts each: none may win while the lease is fresh
    stop.set()
    results = await asyncio.gather(*tasks)
    assert done and results.count(True) == 1
    assert [e.leading for e in electors].count(True) == 1


async def test_a_leader_that_cannot_renew_stops_and_a_released_lease_is_free_at_once(
    api: KubeApi, kube_api: k8s.ApiClient, namespace: str
) -> None:
    first = LeaderElector(api, config(namespace, "first"))
    assert await first.acquire(asyncio.Event())
    # Someone else takes the Lease over (an administrator, a split brain): the leader must notice and stop.
    lease = k8s.CoordinationV1Api(kube_api).read_namespaced_lease("leader", namespace)
    lease.spec.holder_identity = "usurper"
    lease.spec.renew_time = datetime.now(UTC)
    k8s.CoordinationV1Api(kube_api).replace_namespaced_lease("leader", namespace, lease)
    with pytest.raises(LeadershipLost):
        await asyncio.wait_for(first.hold(), timeout=10)
    assert not first.leading

    # A leader that releases (clean shutdown) lets the next one in without waiting for expiry.
    second = LeaderElector(api, config(namespace, "second"))
    third = LeaderElector(api, config(namespace, "third"))
    started = time.monotonic()
    acquiring = asyncio.create_task(third.acquire(asyncio.Event()))
    await asyncio.sleep(0.5)  # third is standing by behind the usurper
    assert not acquiring.done()
    lease = k8s.CoordinationV1Api(kube_api).read_namespaced_lease("leader", namespace)
    lease.spec.holder_identity = "second"
    k8s.CoordinationV1Api(kube_api).replace_namespaced_lease("leader", namespace, lease)
    assert await asyncio.wait_for(second.acquire(asyncio.Event()), timeout=10)
    await second.release()
    assert await asyncio.wait_for(acquiring, timeout=10)
    # Well before the usurper's or second's lease could have expired on its own.
    assert time.monotonic() - started < 2.0
