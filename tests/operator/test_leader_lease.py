"""The Lease algorithm against the real API server: expiry observed locally, one winner, release, hangs."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from kubernetes import client as k8s

from falachefe_devstack.kube import ControlPlane
from falachefe_devstack.tcp_proxy import HangingProxy
from falachefe_operator.credentials import Credentials, load_credentials
from falachefe_operator.leader import LeaderElector, LeadershipLost, LeaseConfig


@pytest.fixture
def api(kube: ControlPlane) -> Credentials:
    """The admin's connection settings; each elector opens its own connections from them."""
    return load_credentials(str(kube.kubeconfig))


@pytest.fixture
def proxy(kube: ControlPlane) -> Iterator[HangingProxy]:
    """A TCP proxy in front of the API server, which the test can make hang."""
    server = HangingProxy("127.0.0.1", kube.apiserver_port)
    server.start()
    yield server
    server.stop()


def through(proxy: HangingProxy, api: Credentials) -> Credentials:
    """The same identity, reaching the API server through ``proxy`` (its certificate names 127.0.0.1)."""
    return dataclasses.replace(api, server=f"https://127.0.0.1:{proxy.port}")


def config(namespace: str, identity: str) -> LeaseConfig:
    return LeaseConfig(
        namespace=namespace, name="leader", identity=identity, lease_duration=2, renew_deadline=1.5, retry_period=0.2
    )


async def test_a_lease_held_by_a_silent_holder_is_taken_only_after_it_expires(
    api: Credentials, kube_api: k8s.ApiClient, namespace: str
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


async def test_racing_candidates_elect_exactly_one(api: Credentials, namespace: str) -> None:
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
    api: Credentials, kube_api: k8s.ApiClient, namespace: str
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


async def test_a_renewal_that_hangs_is_cut_at_the_renew_deadline_before_anyone_else_may_lead(
    api: Credentials, proxy: HangingProxy, namespace: str
) -> None:
    lease = LeaseConfig(
        namespace=namespace, name="leader", identity="leader", lease_duration=3, renew_deadline=2.0, retry_period=0.3
    )
    leader = LeaderElector(through(proxy, api), lease)
    standby = LeaderElector(api, LeaseConfig(**{**vars(lease), "identity": "standby"}))
    assert await leader.acquire(asyncio.Event())
    holding = asyncio.create_task(leader.hold())
    taking_over = asyncio.create_task(standby.acquire(asyncio.Event()))
    last_leading = 0.0

    async def sample() -> None:
        nonlocal last_leading
        while True:
            if leader.leading:
                last_leading = time.monotonic()
            await asyncio.sleep(0.005)

    sampler = asyncio.create_task(sample())
    try:
        await asyncio.sleep(1.5)  # several renewals through the proxy
        assert leader.leading and not holding.done() and not taking_over.done()

        proxy.hang()  # the renewal in flight (or the next) never gets an answer
        hung_at = time.monotonic()
        with pytest.raises(LeadershipLost):
            await asyncio.wait_for(holding, timeout=10)
        lost_after = time.monotonic() - hung_at
        assert await asyncio.wait_for(taking_over, timeout=10)
        standby_led_at = time.monotonic()
    finally:
        sampler.cancel()
    # The leader stopped within the renew deadline of its last renewal, which began before the hang...
    assert not leader.leading
    assert lost_after <= lease.renew_deadline + 0.25, lost_after
    assert last_leading - hung_at <= lease.renew_deadline + 0.25, last_leading - hung_at
    # ...and the standby began only after that, with about lease - deadline to spare.
    gap = standby_led_at - last_leading
    print(f"leader stopped {last_leading - hung_at:.2f}s after the hang; standby led {gap:.2f}s later")
    assert gap >= lease.lease_duration - lease.renew_deadline - 0.1, gap

    # Once the network heals, the old leader reconnects afresh (no hung connection is reused):
    # it wins the Lease as soon as the standby lets it go.
    proxy.resume()
    await standby.release()
    assert await asyncio.wait_for(leader.acquire(asyncio.Event()), timeout=5)
    await leader.release()
    await standby.aclose()
