"""Scale-in removes idle pods first: each pod's ``pod-deletion-cost`` is the jobs it holds.

When a Deployment shrinks, its ReplicaSet controller picks the pods to
delete; among pods alike in node, phase and readiness it deletes those with
the lowest ``controller.kubernetes.io/pod-deletion-cost`` annotation first.
Before the autoscaler lowers replicas it sets that annotation on every pod
of the pool to the number of jobs the pod holds, so idle pods go and busy
ones stay.

Which pod holds which job is read where bullmq keeps it: each active job's
lock (``<prefix>:<queue>:<id>:lock``) holds the token of the worker running
it, and the runtime's workers name their pod in their tokens
(``<pod>/<suffix>:<n>``, ``worker.pod_name``). So nothing new runs in the
workers' hot path, and the numbers are the ones bullmq acts on. A pod that
takes a job between this read and its deletion is not lost either: it gives
the job back to the queue when its grace period ends.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp

from falachefe_runtime.config import LOCK_HOLDER_SEPARATOR

from .. import naming
from ..kubeapi import ApiError, KubeApi
from .queue import QueueReader, QueueRef

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"


def jobs_by_pod(tokens: Iterable[str | None]) -> Counter[str]:
    """Jobs held per pod, from the lock tokens of the active jobs (locks of other workers count for none)."""
    held: Counter[str] = Counter()
    for token in tokens:
        if not token:
            continue
        worker = token.rsplit(":", 1)[0]
        pod, separator, _ = worker.rpartition(LOCK_HOLDER_SEPARATOR)
        if separator and pod:
            held[pod] += 1
    return held


def cost_changes(pods: Iterable[Mapping[str, Any]], held: Mapping[str, int]) -> dict[str, str]:
    """The annotation each pod must get (only those whose value differs), by pod name."""
    changes = {}
    for pod in pods:
        metadata = pod.get("metadata") or {}
        if metadata.get("deletionTimestamp"):
            continue  # already going
        wanted = str(held.get(str(metadata["name"]), 0))
        if (metadata.get("annotations") or {}).get(DELETION_COST) != wanted:
            changes[str(metadata["name"])] = wanted
    return changes


async def mark_busy_pods(
    api: KubeApi, queues: QueueReader, *, namespace: str, selector: str, queue: QueueRef, timeout: float
) -> str | None:
    """Set every pool pod's deletion cost to the jobs it holds; the problem, if that could not be done.

    A problem does not stop the scale-in: the pods then keep the costs they
    had, and a busy pod removed gives its jobs back to the queue.
    """
    tokens = await queues.lock_tokens(queue)
    if isinstance(tokens, str):
        return f"jobs per pod unreadable ({tokens}); scale-in may remove busy pods"
    held = jobs_by_pod(tokens)
    path = f"/api/v1/namespaces/{namespace}/pods"
    try:
        async with asyncio.timeout(timeout):
            _, listed = await api.request("GET", path, params={"labelSelector": selector})
            changes = cost_changes(listed.get("items") or [], held)
            await asyncio.gather(
                *(
                    api.merge_patch(
                        f"{path}/{name}",
                        {"metadata": {"annotations": {DELETION_COST: cost}}},
                        manager=naming.FIELD_MANAGER,
                    )
                    for name, cost in changes.items()
                )
            )
    except (ApiError, aiohttp.ClientError, TimeoutError) as error:
        what = f"API error {error.status} {error.reason}" if isinstance(error, ApiError) else type(error).__name__
        return f"pod deletion costs not set ({what}); scale-in may remove busy pods"
    return None
