"""The operator and the workers as pods from the project's image, on a real kubelet.

What only a real pod shows: the Dockerfile builds an image that runs, the
non-root user and read-only root filesystem hold inside running containers,
Secrets and the ConfigMap arrive through the kubelet, probes gate
readiness, the kubelet restarts a crashed worker, and scale-down sends
SIGTERM and waits for in-flight jobs within the grace period.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import pytest
from kubernetes import client as k8s
from nodekit import SMALL_POOLS, App, replies, send_messages

from falachefe_devstack.kube import kubectl
from falachefe_devstack.waiting import async_wait_for, wait_for
from falachefe_operator import naming
from falachefe_runtime.config import WorkerKind

pytestmark = pytest.mark.slow


def pool_selector(kind: WorkerKind, name: str = "app") -> str:
    return naming.selector_string(naming.pool_selector(name, kind))


def exec_in(app: App, pod: str, *command: str) -> tuple[int, str]:
    assert app.stack.kube is not None
    result = kubectl(app.stack.kube.kubeconfig, "exec", "-n", app.namespace, pod, "--", *command, check=False)
    return result.returncode, result.stdout + result.stderr


async def test_workers_answer_messages_from_real_pods(app: App) -> None:
    app.apply(app.falachefe(pools=SMALL_POOLS))
    resource = await asyncio.to_thread(app.wait_ready)
    for kind in (WorkerKind.AUTH, WorkerKind.CREW):
        pods = app.pods(pool_selector(kind))
        assert pods, f"no {kind.value} pod"
        for pod in pods:
            assert pod.spec.containers[0].image == app.stack.image
            assert pod.spec.node_name == app.stack.node.name if app.stack.node else False
            assert pod.status.pod_ip.startswith(app.stack.node.network.pod_cidr.rsplit(".", 2)[0])  # type: ignore[union-attr]
    status = resource["status"]
    assert status["observedGeneration"] == resource["metadata"]["generation"]

    sent = await send_messages(app, 12)

    async def all_answered() -> bool:
        return set(sent) <= set(await replies(app.queues))

    await async_wait_for(all_answered, timeout=180, interval=1.0, what="every message answered by the pods")
    answers = await replies(app.queues)
    assert all(answers[message].text for message in sent)


async def test_containers_run_as_non_root_with_a_read_only_root(app: App) -> None:
    app.apply(app.falachefe(pools={"auth": SMALL_POOLS["auth"]}))
    await asyncio.to_thread(app.wait_ready)
    pod = app.pods(pool_selector(WorkerKind.AUTH))[0].metadata.name
    code, out = await asyncio.to_thread(exec_in, app, pod, "id", "-u")
    assert (code, out.strip()) == (0, "10001")
    code, out = await asyncio.to_thread(exec_in, app, pod, "sh", "-c", "touch /opt/falachefe/x")
    assert code != 0 and "Read-only file system" in out, out
    code, out = await asyncio.to_thread(exec_in, app, pod, "sh", "-c", "touch /tmp/x && echo writable")
    assert (code, out.strip()) == (0, "writable")
    # The config arrives as a file the kubelet mounted; the secrets as environment, never in the config.
    code, out = await asyncio.to_thread(exec_in, app, pod, "cat", f"{naming.CONFIG_DIR}/{naming.CONFIG_KEY}")
    assert code == 0 and "dsn" not in out and "e2e-key-not-secret" not in out, out


async def test_a_crashed_worker_is_restarted_by_the_kubelet(app: App) -> None:
    app.apply(app.falachefe(pools={"auth": SMALL_POOLS["auth"]}))
    await asyncio.to_thread(app.wait_ready)
    assert app.stack.node is not None
    pod = app.pods(pool_selector(WorkerKind.AUTH))[0]
    container_id = pod.status.container_statuses[0].container_id.removeprefix("containerd://")
    killed = await asyncio.create_subprocess_exec(
        *app.stack.node.ctr("tasks", "kill", "--signal", "SIGKILL", container_id)
    )
    assert await killed.wait() == 0

    def restarted_and_ready() -> bool:
        current = [p for p in app.pods(pool_selector(WorkerKind.AUTH)) if p.metadata.name == pod.metadata.name]
        if not current:
            return False
        status = current[0].status.container_statuses[0]
        return bool(status.restart_count >= 1 and status.ready)

    await asyncio.to_thread(wait_for, restarted_and_ready, 120, 1.0, "the worker restarted and Ready again")
    last = next(p for p in app.pods(pool_selector(WorkerKind.AUTH)) if p.metadata.name == pod.metadata.name)
    terminated = last.status.container_statuses[0].last_state.terminated
    assert terminated is not None and terminated.exit_code == 137, terminated


async def test_scale_down_lets_in_flight_crew_jobs_finish(app: App) -> None:
    """Two crew pods with slow LLM answers in flight, then one pod goes: its jobs still finish, once each."""
    pools = {**SMALL_POOLS, "crew": {**SMALL_POOLS["crew"], "minReplicas": 2, "maxReplicas": 2}}
    app.apply(app.falachefe(pools=pools))
    await asyncio.to_thread(app.wait_ready)
    crew_ips = {pod.status.pod_ip for pod in app.pods(pool_selector(WorkerKind.CREW))}
    assert len(crew_ips) == 2

    app.llm.delay_s = 8.0
    try:
        sent = await send_messages(app, 8, text="Uma pergunta demorada")

        async def both_pods_waiting_on_the_llm() -> bool:
            return crew_ips <= set(app.llm.callers_in_flight())

        await async_wait_for(both_pods_waiting_on_the_llm, timeout=120, interval=0.2, what="crew jobs in flight")
        started = time.monotonic()
        app.apply(app.falachefe(pools={**pools, "crew": {**pools["crew"], "minReplicas": 1, "maxReplicas": 1}}))

        async def one_crew_pod() -> bool:
            return len(app.pods(pool_selector(WorkerKind.CREW))) == 1

        await async_wait_for(one_crew_pod, timeout=120, interval=0.5, what="scaled down to one crew pod")
        print(f"the removed crew pod drained and exited {time.monotonic() - started:.1f}s after the scale-down")

        async def all_answered() -> bool:
            return set(sent) <= set(await replies(app.queues))

        await async_wait_for(all_answered, timeout=240, interval=1.0, what="every message answered")
    finally:
        app.llm.delay_s = 0.0
    counts = await app.queues.counts("crewai-processing", ("failed", "completed"))
    assert counts == {"failed": 0, "completed": len(sent)}, counts


async def test_time_from_scale_up_to_ready_per_pool(app: App) -> None:
    """Each pool goes 1 -> 3; every new pod's creation -> container start -> Ready, as the API recorded it."""
    app.apply(app.falachefe(pools=SMALL_POOLS))
    await asyncio.to_thread(app.wait_ready)
    before = {pod.metadata.name for pod in app.pods("")}
    bigger = {name: {**pool, "minReplicas": 3, "maxReplicas": 3} for name, pool in SMALL_POOLS.items()}
    app.apply(app.falachefe(pools=bigger))

    def new_pods_ready() -> list[k8s.V1Pod] | None:
        new = [pod for pod in app.pods("") if pod.metadata.name not in before]
        ready = [pod for pod in new if _ready_since(pod) is not None]
        return ready if len(ready) == 4 else None

    ready = await asyncio.to_thread(wait_for, new_pods_ready, 300, 1.0, "two new Ready pods in each pool")
    for pod in sorted(ready, key=lambda p: p.metadata.name):
        created = pod.metadata.creation_timestamp
        started = pod.status.container_statuses[0].state.running.started_at
        ready_at = _ready_since(pod)
        assert created <= started <= ready_at
        print(
            f"{pod.metadata.labels[naming.POOL_LABEL]:>5} {pod.metadata.name}: container started "
            f"{(started - created).total_seconds():.0f}s after creation, Ready "
            f"{(ready_at - created).total_seconds():.0f}s after creation"
        )


def _ready_since(pod: k8s.V1Pod) -> datetime | None:
    for condition in pod.status.conditions or []:
        if condition.type == "Ready" and condition.status == "True":
            return condition.last_transition_time  # type: ignore[no-any-return]
    return None


async def test_scale_in_during_a_long_crew_job_removes_the_idle_pods_and_loses_nothing(app: App) -> None:
    """Three crew pods, one answering slowly; the autoscaler shrinks the pool to one: the busy pod is the one kept."""

    def crew_pool(min_replicas: int) -> dict[str, Any]:
        return {
            **SMALL_POOLS["crew"],
            "minReplicas": min_replicas,
            "maxReplicas": 3,
            "autoscaling": {
                "pollingIntervalSeconds": 1,
                "targetQueueDepthPerReplica": 3,
                "targetCPUUtilizationPercentage": 0,
                "behavior": {
                    "scaleDown": {
                        "stabilizationWindowSeconds": 0,
                        "policies": [{"type": "Percent", "value": 100, "periodSeconds": 1}],
                    }
                },
            },
        }

    app.apply(app.falachefe(pools={"auth": SMALL_POOLS["auth"], "crew": crew_pool(3)}))
    await asyncio.to_thread(app.wait_ready, "app", 300)
    assert len(app.pods(pool_selector(WorkerKind.CREW))) == 3
    app.llm.delay_s = 20.0
    try:
        sent = await send_messages(app, 1, text="Uma pergunta longa")

        async def one_pod_on_the_llm() -> set[str] | None:
            callers = set(app.llm.callers_in_flight())
            return callers or None

        busy_ips = await async_wait_for(one_pod_on_the_llm, timeout=120, interval=0.2, what="a crew job in flight")
        busy = [pod.metadata.name for pod in app.pods(pool_selector(WorkerKind.CREW)) if pod.status.pod_ip in busy_ips]
        app.apply(app.falachefe(pools={"auth": SMALL_POOLS["auth"], "crew": crew_pool(1)}))

        async def one_crew_pod_left() -> list[str] | None:
            crew = app.pods(pool_selector(WorkerKind.CREW))
            pods = [pod.metadata.name for pod in crew if not pod.metadata.deletion_timestamp]
            return pods if len(pods) == 1 else None

        survivors = await async_wait_for(one_crew_pod_left, timeout=60, interval=0.2, what="scaled in to one crew pod")

        async def all_answered() -> bool:
            return set(sent) <= set(await replies(app.queues))

        await async_wait_for(all_answered, timeout=120, interval=1.0, what="the message answered")
    finally:
        app.llm.delay_s = 0.0
    assert survivors == busy, (survivors, busy)
    counts = await app.queues.counts("crewai-processing", ("failed", "completed", "wait", "delayed", "active"))
    assert counts == {"failed": 0, "completed": 1, "wait": 0, "delayed": 0, "active": 0}, counts
    assert len(await replies(app.queues)) == 1  # replies() also fails on a message answered twice
