"""The engine on the real control plane and a real Redis, as the chart's RBAC allows it.

A pool's queue is filled by the real bullmq (``Queue.addBulk``) and drained
by real bullmq workers; the engine reads the Deployment, the queue, decides
and writes the Deployment's scale subresource, with the ServiceAccount
identity the Helm chart's rules grant and nothing more.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from bullmq import Queue, Worker
from kubernetes import client as k8s
from prometheus_client import CollectorRegistry

from falachefe_devstack.kube import ControlPlane
from falachefe_devstack.process import free_port
from falachefe_devstack.redis import RedisServer
from falachefe_operator.scaling.engine import OUTAGE_POLLS, Autoscaler, PoolTarget, StepOutcome
from falachefe_operator.scaling.metrics import ScalingMetrics
from falachefe_operator.scaling.outages import SourceBack, SourceDown
from falachefe_operator.scaling.policy import RuleType, ScalingPolicy, ScalingRule, ScalingRules
from falachefe_operator.scaling.queue import QueueRef

from .cluster import create_worker_deployment, operator_identity, pool_labels, scale_of, selector

pytestmark = pytest.mark.slow

QUEUE = "whatsapp-processing"
WINDOW_SECONDS = 3
EAGER = ScalingRules(0, (ScalingRule(RuleType.PODS, 100, 1),))
POLICY = ScalingPolicy(
    min_replicas=1,
    max_replicas=6,
    target_queue_depth_per_replica=50,
    scale_up=EAGER,
    scale_down=ScalingRules(WINDOW_SECONDS, (ScalingRule(RuleType.PERCENT, 100, 1),)),
)


def target_for(namespace: str, redis_url: str, deployment: str = "demo-auth") -> PoolTarget:
    return PoolTarget(
        namespace=namespace,
        falachefe="demo",
        pool="auth",
        deployment=deployment,
        policy=POLICY,
        queue=QueueRef(QUEUE, redis_url),
        selector=selector(pool_labels("auth")),
        concurrency=5,
    )


@pytest.fixture
async def engine(
    kube: ControlPlane, kube_api: k8s.ApiClient, namespace: str, tmp_path: Path
) -> AsyncIterator[tuple[Autoscaler, CollectorRegistry]]:
    registry = CollectorRegistry()
    async with operator_identity(kube, kube_api, namespace, tmp_path) as api:
        autoscaler = Autoscaler(api, metrics=ScalingMetrics(registry))
        yield autoscaler, registry
        await autoscaler.aclose()


async def test_full_queue_scales_to_the_bound_and_back_to_min_after_the_window(
    kube_api: k8s.ApiClient, namespace: str, redis_url: str, engine: tuple[Autoscaler, CollectorRegistry]
) -> None:
    autoscaler, registry = engine
    create_worker_deployment(kube_api, namespace, "demo-auth", "auth", replicas=1)
    target = target_for(namespace, redis_url)
    queue = Queue(QUEUE, {"connection": redis_url})
    worker: Worker | None = None
    try:
        for chunk in range(3):
            await queue.addBulk([{"name": "message", "data": {"n": chunk * 1000 + n}} for n in range(1000)])

        # One poll: 3000 jobs / 50 per replica -> 60, bounded at 6.
        outcome = await autoscaler.step(target)
        assert outcome.metrics_available, outcome.message
        assert outcome.queue_depth == 3000
        assert (outcome.current, outcome.desired, outcome.scaled, outcome.direction) == (1, 6, True, "up")
        assert "queue 3000 jobs / 50 per replica -> 60" in outcome.reason
        assert scale_of(kube_api, namespace, "demo-auth") == 6

        # Real workers drain the queue while the engine keeps polling.
        async def noop(job, token):  # bullmq's processor signature
            return None

        worker = Worker(QUEUE, noop, {"connection": redis_url, "concurrency": 50})
        last_busy = time.monotonic()
        outcomes: list[StepOutcome] = []
        deadline = time.monotonic() + 120
        while scale_of(kube_api, namespace, "demo-auth") != 1:
            assert time.monotonic() < deadline, [o.reason for o in outcomes[-3:]]
            outcome = await autoscaler.step(target)
            outcomes.append(outcome)
            assert outcome.decision is not None
            if outcome.decision.recommendation > 1:
                last_busy = time.monotonic()
            await asyncio.sleep(0.25)
        emptied = time.monotonic()

        # Down to min only once the window held no recommendation above it.
        assert emptied - last_busy >= WINDOW_SECONDS - 0.5
        assert any("scaleDown stabilized" in o.reason for o in outcomes)
        assert outcomes[-1].queue_depth == 0
        assert outcomes[-1].decision is not None and outcomes[-1].decision.rates is not None
        assert outcomes[-1].decision.rates.completion_rate > 0
    finally:
        if worker is not None:
            await worker.close()
        await queue.close()

    sample = {"namespace": namespace, "falachefe": "demo", "pool": "auth"}
    assert registry.get_sample_value("falachefe_operator_pool_queue_depth", sample) == 0
    assert registry.get_sample_value("falachefe_operator_pool_desired_replicas", sample) == 1
    assert registry.get_sample_value("falachefe_operator_pool_current_replicas", sample) >= 1
    assert registry.get_sample_value("falachefe_operator_pool_scale_actions_total", {**sample, "direction": "up"}) == 1
    assert (
        registry.get_sample_value("falachefe_operator_pool_scale_actions_total", {**sample, "direction": "down"}) >= 1
    )
    assert registry.get_sample_value("falachefe_operator_pool_metrics_available", {**sample, "source": "queue"}) == 1
    assert registry.get_sample_value("falachefe_operator_pool_max_replicas", sample) == 6
    # Counters from the first poll on: the 3000 jobs were there before it, and all of them left the queue since.
    assert registry.get_sample_value("falachefe_operator_pool_queue_jobs_added_total", sample) == 0
    assert registry.get_sample_value("falachefe_operator_pool_queue_jobs_finished_total", sample) == 3000
    # Every step counted once for the pool, and timed in the one histogram of every pool's steps.
    polls = 1 + len(outcomes)
    assert registry.get_sample_value("falachefe_operator_pool_autoscale_polls_total", sample) == polls
    assert registry.get_sample_value("falachefe_operator_autoscale_step_duration_seconds_count") == polls


async def test_sources_down_hold_the_pool(
    kube_api: k8s.ApiClient, namespace: str, redis_url: str, engine: tuple[Autoscaler, CollectorRegistry]
) -> None:
    autoscaler, registry = engine
    create_worker_deployment(kube_api, namespace, "demo-auth", "auth", replicas=3)

    # Redis down: hold at 3, though an empty queue would shrink the pool to 1.
    port = free_port()
    down = target_for(namespace, f"redis://:hunter2@127.0.0.1:{port}/0")
    outcome = await autoscaler.step(down)
    assert not outcome.metrics_available
    assert (outcome.current, outcome.desired, outcome.scaled) == (3, 3, False)
    assert f"queue unavailable: redis 127.0.0.1:{port}/0" in outcome.message
    assert "not scaling down" in outcome.reason
    assert "hunter2" not in outcome.message + outcome.reason
    sample = {"namespace": namespace, "falachefe": "demo", "pool": "auth"}
    assert registry.get_sample_value("falachefe_operator_pool_metrics_available", {**sample, "source": "queue"}) == 0
    assert registry.get_sample_value("falachefe_operator_pool_queue_depth", sample) is None

    # A queue paused in bullmq holds too: its backlog is not being worked on.
    queue = Queue(QUEUE, {"connection": redis_url})
    try:
        await queue.addBulk([{"name": "message", "data": {"n": n}} for n in range(500)])
        await queue.pause()
        paused = await autoscaler.step(target_for(namespace, redis_url))
        assert paused.metrics_available
        assert (paused.desired, paused.scaled) == (3, False)
        assert "queue paused in bullmq" in paused.reason
    finally:
        await queue.close()
    assert scale_of(kube_api, namespace, "demo-auth") == 3

    # No Deployment (yet): said so, nothing raised.
    missing = await autoscaler.step(target_for(namespace, redis_url, deployment="demo-crew"))
    assert (missing.current, missing.desired, missing.scaled) == (None, None, False)
    assert f"Deployment {namespace}/demo-crew unreadable: API error 404" in missing.message


async def test_scale_write_survives_status_churn_but_not_a_concurrent_resize(
    kube_api: k8s.ApiClient, namespace: str, redis_url: str, engine: tuple[Autoscaler, CollectorRegistry]
) -> None:
    """The write is a compare-and-swap on the replicas the decision was made from."""
    autoscaler, _ = engine
    apps = k8s.AppsV1Api(kube_api)
    create_worker_deployment(kube_api, namespace, "demo-auth", "auth", replicas=2)
    target = target_for(namespace, redis_url)

    # Something else touches the Deployment (as the ReplicaSet controller
    # does with its status): the version moves on, replicas do not.
    apps.patch_namespaced_deployment("demo-auth", namespace, {"metadata": {"annotations": {"touched": "yes"}}})
    assert await autoscaler._scale(target, 2, 4) is None
    assert scale_of(kube_api, namespace, "demo-auth") == 4

    # From and to zero (a Scale of 0 has no spec.replicas at all).
    assert await autoscaler._scale(target, 4, 0) is None
    assert scale_of(kube_api, namespace, "demo-auth") == 0
    assert await autoscaler._scale(target, 0, 1) is None
    assert scale_of(kube_api, namespace, "demo-auth") == 1

    # Someone resizes it after the decision was made: their size stands.
    apps.patch_namespaced_deployment_scale("demo-auth", namespace, {"spec": {"replicas": 5}})
    problem = await autoscaler._scale(target, 1, 4)
    assert problem == "replicas changed concurrently to 5; deciding again next poll"
    assert scale_of(kube_api, namespace, "demo-auth") == 5


async def test_after_a_redis_outage_the_pool_keeps_its_size_for_a_whole_window(
    kube: ControlPlane, kube_api: k8s.ApiClient, namespace: str, tmp_path: Path
) -> None:
    """The issue's case on the real servers: 10 replicas, Redis stopped for 150 s, back with an empty queue.

    The engine's clock is the test's (the outage's 150 s pass in a few
    seconds); Redis is really stopped and started again, and the scale is
    really read and written.
    """
    redis = RedisServer(tmp_path / "redis").start()
    url = redis.url(0)
    policy = ScalingPolicy(
        min_replicas=1,
        max_replicas=10,
        target_queue_depth_per_replica=20,
        scale_up=EAGER,
        scale_down=ScalingRules(30, (ScalingRule(RuleType.PERCENT, 100, 15),)),
    )
    target = PoolTarget(
        namespace=namespace,
        falachefe="demo",
        pool="auth",
        deployment="demo-auth",
        policy=policy,
        queue=QueueRef(QUEUE, url),
        selector=selector(pool_labels("auth")),
        concurrency=5,
    )
    create_worker_deployment(kube_api, namespace, "demo-auth", "auth", replicas=10)
    clock = [0.0]
    queue = Queue(QUEUE, {"connection": url})
    async with operator_identity(kube, kube_api, namespace, tmp_path) as api:
        autoscaler = Autoscaler(api, metrics=ScalingMetrics(CollectorRegistry()), clock=lambda: clock[0])
        try:
            await queue.addBulk([{"name": "message", "data": {"n": n}} for n in range(400)])
            await queue.close()
            busy = await autoscaler.step(target)
            assert (busy.current, busy.desired, busy.transitions) == (10, 10, ())

            redis.stop()
            outage = []
            for second in range(2, 152, 2):
                clock[0] = float(second)
                outage.append(await autoscaler.step(target))
            assert [o.desired for o in outage] == [10] * len(outage)
            # Announced on the OUTAGE_POLLS-th failed poll in a row, once: one Event's worth, not one per poll.
            announced = [index for index, o in enumerate(outage) if o.transitions]
            assert announced == [OUTAGE_POLLS - 1]
            assert outage[OUTAGE_POLLS - 1].transitions == (SourceDown("queue", "cannot connect to Redis"),)

            redis.start()
            flush = Queue(QUEUE, {"connection": url})
            await flush.obliterate({"force": True})  # drained while Redis was down, as far as the pool can tell
            await flush.close()
            clock[0] = 150.7
            back = await autoscaler.step(target)
            assert back.transitions == (SourceBack("queue", pytest.approx(148.7)),)
            assert back.queue_depth == 0
            assert (back.desired, back.scaled) == (10, False), back.reason  # was 10 -> 1 in one step
            assert "size held while metrics were unavailable" in back.reason
            for second in range(152, 180, 2):
                clock[0] = float(second)
                held = await autoscaler.step(target)
                assert (held.desired, held.transitions) == (10, ()), held.reason
            assert scale_of(kube_api, namespace, "demo-auth") == 10
            clock[0] = 150.0 + 30 + 0.5  # a whole window after the last poll that could not read the queue
            after = await autoscaler.step(target)
            assert (after.desired, after.scaled, after.direction) == (1, True, "down"), after.reason
            assert scale_of(kube_api, namespace, "demo-auth") == 1
        finally:
            await autoscaler.aclose()
            redis.stop()
