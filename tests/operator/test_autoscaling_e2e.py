"""End to end: the operator process autoscales a Falachefe's pools from a real bullmq queue.

The real ``falachefe-operator``, as the chart runs it (the module's
``operator`` fixture: its RBAC identity, one namespace), serves a resource
with an auth pool (1..5) and a crew pool (0..3, scale to zero) applied with
kubectl; the real bullmq fills the queues and real bullmq workers drain
them. The Deployments' replicas are watched from outside, as a platform
team would.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from bullmq import Queue, Worker
from kubernetes import client as k8s
from opkit import Operator, apply, create_secrets, sample

from falachefe_devstack.kube import ControlPlane
from falachefe_devstack.redis import RedisServer
from falachefe_devstack.waiting import async_wait_for, wait_for

pytestmark = pytest.mark.slow

POLL_SECONDS = 2
WINDOW_SECONDS = 8


def scaling(target: int, min_replicas: int, max_replicas: int, window: int = WINDOW_SECONDS) -> dict[str, Any]:
    return {
        "minReplicas": min_replicas,
        "maxReplicas": max_replicas,
        "autoscaling": {
            "pollingIntervalSeconds": POLL_SECONDS,
            "targetQueueDepthPerReplica": target,
            "targetCPUUtilizationPercentage": 0,  # the queue alone: no metrics-server here
            "rateWindowSeconds": 5,
            "behavior": {
                "scaleUp": {
                    "stabilizationWindowSeconds": 0,
                    "policies": [{"type": "Pods", "value": 10, "periodSeconds": 1}],
                },
                "scaleDown": {
                    "stabilizationWindowSeconds": window,
                    "policies": [{"type": "Percent", "value": 100, "periodSeconds": 1}],
                },
            },
        },
    }


async def test_operator_scales_pools_up_on_a_full_queue_and_back_after_the_window(
    operator: Operator, kube: ControlPlane, kube_api: k8s.ApiClient, op_namespace: str, redis_url: str
) -> None:
    create_secrets(kube_api, op_namespace, "busy", redis_url)
    apply(kube, sample("busy", op_namespace, pools={"auth": scaling(100, 1, 5), "crew": scaling(3, 0, 3)}))
    apps = k8s.AppsV1Api(kube_api)

    def replicas(deployment: str) -> int | None:
        try:
            # The scale omits replicas when they are 0.
            return int(apps.read_namespaced_deployment_scale(deployment, op_namespace).spec.replicas or 0)
        except k8s.ApiException:
            return None

    wait_for(lambda: replicas("busy-auth") == 1 and replicas("busy-crew") == 0, timeout=60, what="pools at min")

    auth = Queue("whatsapp-processing", {"connection": redis_url})
    crew = Queue("crewai-processing", {"connection": redis_url})
    workers: list[Worker] = []
    try:
        # Thousands of messages: 3000 / 100 per replica -> 30, bounded at 5.
        for chunk in range(3):
            await auth.addBulk([{"name": "message", "data": {"n": chunk * 1000 + n}} for n in range(1000)])
        # One crew job wakes the idle crew pool.
        await crew.add("crew", {"message": "olá"})
        await async_wait_for(
            lambda: _is(replicas, "busy-auth", 5), timeout=POLL_SECONDS + 20, what="auth scaled to its bound"
        )
        await async_wait_for(lambda: _is(replicas, "busy-crew", 1), timeout=POLL_SECONDS + 20, what="crew woken")

        # Workers drain both queues; the pools stay up through the window, then go back to min.
        async def noop(job: Any, token: str) -> None:
            return None

        workers = [
            Worker(name, noop, {"connection": redis_url, "concurrency": 50})
            for name in ("whatsapp-processing", "crewai-processing")
        ]
        emptied: dict[str, float] = {}
        # The last moment each queue still asked for the pool's current size:
        # auth holds 5 replicas while more than 4 x 100 jobs are in it, crew 1
        # while any is. The scale-down window counts from the last poll that
        # saw that much, which on a slow machine can be seconds before empty.
        draining = time.monotonic()
        needed: dict[str, float] = {"busy-auth": draining, "busy-crew": draining}
        holds = {"busy-auth": 4 * 100, "busy-crew": 0}

        async def drained() -> bool:
            for deployment, queue in (("busy-auth", auth), ("busy-crew", crew)):
                if deployment in emptied:
                    continue
                backlog = await _backlog(queue)
                now = time.monotonic()
                if backlog > holds[deployment]:
                    needed[deployment] = now
                if backlog == 0:
                    emptied[deployment] = now
            return len(emptied) == 2

        await async_wait_for(drained, timeout=60, what="queues drained")
        first_drop: dict[str, float] = {}

        async def back_to_min() -> bool:
            now = time.monotonic()
            sizes = {"busy-auth": replicas("busy-auth"), "busy-crew": replicas("busy-crew")}
            if sizes["busy-auth"] is not None and sizes["busy-auth"] < 5:
                first_drop.setdefault("busy-auth", now)
            if sizes["busy-crew"] == 0:
                first_drop.setdefault("busy-crew", now)
            return sizes == {"busy-auth": 1, "busy-crew": 0}

        await async_wait_for(back_to_min, timeout=WINDOW_SECONDS + 60, interval=0.2, what="pools back to min")
    finally:
        for worker in workers:
            await worker.close()
        await auth.close()
        await crew.close()

    # The window was honoured: no drop within the window after the queue last
    # asked for the size (less one polling interval and a probe: the last
    # poll to see that backlog may come that much before this test saw it).
    for deployment, dropped in first_drop.items():
        assert dropped - needed[deployment] >= WINDOW_SECONDS - POLL_SECONDS - 1, (deployment, first_drop, needed)
    # Each scale has its Event, with the numbers behind it (written just after the scale).
    expected = ("pool auth: 1 -> 5 replicas", "pool crew: 0 -> 1 replicas", "pool crew: 1 -> 0 replicas")

    def scaled_events() -> list[str]:
        events = k8s.CoreV1Api(kube_api).list_namespaced_event(op_namespace).items
        return [e.message for e in events if e.reason == "Scaled"]

    messages = wait_for(
        lambda: (found := scaled_events()) and all(any(m.startswith(e) for m in found) for e in expected) and found,
        timeout=30,
        what="Scaled Events for each scale",
    )
    assert any(m.startswith(expected[0]) and "per replica" in m and "queue depth" in m for m in messages), messages


async def test_redis_outage_is_one_warning_one_recovery_and_no_step_down_on_the_first_reading(
    operator: Operator, kube: ControlPlane, kube_api: k8s.ApiClient, op_namespace: str, tmp_path: Path
) -> None:
    """The queue's real Redis is stopped for longer than the scale-down window, then started again, empty."""
    window = 10
    redis = RedisServer(tmp_path / "redis").start()
    url = redis.url(0)
    apps = k8s.AppsV1Api(kube_api)
    core = k8s.CoreV1Api(kube_api)

    def replicas() -> int | None:
        try:
            return int(apps.read_namespaced_deployment_scale("outage-auth", op_namespace).spec.replicas or 0)
        except k8s.ApiException:
            return None  # not created yet

    def events(reason: str) -> list[str]:
        return [
            e.message
            for e in core.list_namespaced_event(op_namespace).items
            if e.reason == reason and e.involved_object.name == "outage"
        ]

    try:
        create_secrets(kube_api, op_namespace, "outage", url)
        apply(kube, sample("outage", op_namespace, pools={"auth": scaling(10, 1, 4, window)}))
        queue = Queue("whatsapp-processing", {"connection": url})
        await queue.addBulk([{"name": "message", "data": {"n": n}} for n in range(100)])
        await queue.close()
        wait_for(lambda: replicas() == 4, timeout=60, what="auth scaled to 4")

        redis.stop()
        wait_for(lambda: events("MetricUnavailable"), timeout=30, what="a Warning Event for the outage")
        # Longer than the window: the recommendations from before the outage age out meanwhile.
        await asyncio.sleep(window + 2 * POLL_SECONDS)
        assert replicas() == 4  # a metric that cannot be read never shrinks the pool

        redis.start()
        flush = Queue("whatsapp-processing", {"connection": url})
        await flush.obliterate({"force": True})  # the jobs were done meanwhile, as far as the pool can tell
        await flush.close()
        back = time.monotonic()
        wait_for(lambda: events("MetricAvailable"), timeout=30, what="a Normal Event for the recovery")
        # No step on the first readings: the scale-down window starts afresh...
        dropped = wait_for(
            lambda: replicas() != 4 and time.monotonic(), timeout=window + 30, interval=0.2, what="the first step down"
        )
        print(f"\nfirst step down {dropped - back:.1f}s after Redis came back (scale-down window {window}s)")
        assert dropped - back >= window - POLL_SECONDS - 1, dropped - back
        wait_for(lambda: replicas() == 1, timeout=30, what="back to min")
    finally:
        redis.stop()

    # ...and one Event each way, whatever the number of polls in between.
    (warning,) = events("MetricUnavailable")
    (recovered,) = events("MetricAvailable")
    assert warning.startswith("pool auth: queue depth (Redis) unavailable: cannot connect to Redis; holding 4 replicas")
    assert recovered.startswith("pool auth: queue depth (Redis) available again after ")
    assert f"the {window}s scale-down window starts afresh from 4 replicas" in recovered
    assert url not in warning + recovered


async def _is(replicas: Any, deployment: str, expected: int) -> bool:
    return bool(await asyncio.to_thread(replicas, deployment) == expected)


async def _backlog(queue: Queue) -> int:
    counts = await queue.getJobCounts("wait", "prioritized", "delayed", "active")
    return sum(counts.values())
