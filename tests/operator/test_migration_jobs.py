"""Migrations as Jobs, on a real API server with the real Job, Deployment and ReplicaSet controllers.

No kubelet runs here: the test plays its part for the migration pods
(``finish_migration``: the pod ran ``migrate`` and ended with an exit code
and a termination message). What a real pod does is proven on the real
node (tests/e2e/test_lifecycle.py); this proves the operator's rule:
workers roll to an image only after its migration succeeded, and a failed
one leaves them where they are, with the reason in Degraded.
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client as k8s
from opkit import Operator, apply, condition, create_secrets, finish_migration, get, sample, wait_condition

from falachefe_devstack.kube import ControlPlane
from falachefe_devstack.waiting import wait_for
from falachefe_operator import naming
from falachefe_runtime.config import WorkerKind

NAME = "schema"
MIGRATIONS_ON = {"enabled": True}


def jobs(api: k8s.ApiClient, namespace: str) -> list[k8s.V1Job]:
    return [
        job
        for job in k8s.BatchV1Api(api).list_namespaced_job(namespace).items
        if (job.metadata.labels or {}).get(naming.INSTANCE_LABEL) == NAME
    ]


def worker_images(api: k8s.ApiClient, namespace: str) -> dict[str, str]:
    found = {}
    for deployment in k8s.AppsV1Api(api).list_namespaced_deployment(namespace).items:
        if (deployment.metadata.labels or {}).get(naming.INSTANCE_LABEL) == NAME:
            found[deployment.metadata.name] = deployment.spec.template.spec.containers[0].image
    return found


def migration_status(api: k8s.ApiClient, namespace: str) -> dict[str, Any]:
    return dict((get(api, namespace, NAME).get("status") or {}).get("migration") or {})


def test_workers_roll_to_an_image_only_after_its_migration_and_a_failed_one_keeps_them(
    operator: Operator, kube: ControlPlane, kube_api: k8s.ApiClient, op_namespace: str, redis_url: str
) -> None:
    create_secrets(kube_api, op_namespace, NAME, redis_url)
    apply(kube, sample(NAME, op_namespace, image="falachefe:1.0", migrations=MIGRATIONS_ON))

    # First: the Job, and no worker until it succeeds.
    [job] = wait_for(lambda: jobs(kube_api, op_namespace), timeout=30, what="the migration Job")
    assert job.metadata.annotations[naming.IMAGE_ANNOTATION] == "falachefe:1.0"
    pod = job.spec.template.spec
    container = pod.containers[0]
    assert container.command == ["falachefe-runtime", "migrate", "--termination-log", "/dev/termination-log"]
    assert container.security_context.read_only_root_filesystem and pod.security_context.run_as_non_root
    assert pod.restart_policy == "Never" and pod.automount_service_account_token is False
    # The Job gets the database's Secret only.
    mounted = [source.secret.name for source in pod.volumes[1].projected.sources]
    assert mounted == [f"{NAME}-db"]
    progressing = wait_condition(kube_api, op_namespace, NAME, "Progressing", "True", "Migrating")
    assert job.metadata.name in condition(progressing, "Progressing")["message"]
    assert worker_images(kube_api, op_namespace) == {}

    finish_migration(kube_api, op_namespace, NAME, message=json.dumps({"schema_version": 3, "applied": [1, 2, 3]}))
    wait_for(
        lambda: (
            worker_images(kube_api, op_namespace)
            == {naming.deployment_name(NAME, kind): "falachefe:1.0" for kind in (WorkerKind.AUTH, WorkerKind.CREW)}
        ),
        timeout=60,
        what="the workers applied with the migrated image",
    )
    wait_for(
        lambda: (
            migration_status(kube_api, op_namespace)
            == {"image": "falachefe:1.0", "schemaVersion": 3, "job": job.metadata.name, "phase": "Succeeded"}
        ),
        timeout=30,
        what="status.migration after the first migration",
    )

    # A new image whose migration fails: the old workers stay, Degraded says why.
    apply(kube, sample(NAME, op_namespace, image="falachefe:2.0", migrations=MIGRATIONS_ON))
    second = wait_for(
        lambda: next((j for j in jobs(kube_api, op_namespace) if j.metadata.name != job.metadata.name), None),
        timeout=30,
        what="the new image's migration Job",
    )
    wait_for(lambda: len(jobs(kube_api, op_namespace)) == 1, timeout=30, what="the previous Job replaced")
    wait_condition(kube_api, op_namespace, NAME, "Progressing", "True", "Migrating")
    failure = json.dumps({"schema_version": 4, "error": 'UndefinedColumnError: column "tier" does not exist'})
    for _ in range(3):  # backoffLimit 2: three attempts
        finish_migration(kube_api, op_namespace, NAME, exit_code=1, message=failure)
    degraded = wait_condition(kube_api, op_namespace, NAME, "Degraded", "True", "MigrationFailed", timeout=60)
    message = condition(degraded, "Degraded")["message"]
    assert second.metadata.name in message and 'column "tier" does not exist' in message
    assert "the workers keep serving falachefe:1.0" in message
    assert set(worker_images(kube_api, op_namespace).values()) == {"falachefe:1.0"}
    assert migration_status(kube_api, op_namespace)["image"] == "falachefe:1.0"
    assert migration_status(kube_api, op_namespace)["phase"] == "Failed"

    # The fixed image migrates: the workers roll to it, Degraded clears.
    apply(kube, sample(NAME, op_namespace, image="falachefe:2.1", migrations=MIGRATIONS_ON))
    wait_condition(kube_api, op_namespace, NAME, "Progressing", "True", "Migrating")
    assert set(worker_images(kube_api, op_namespace).values()) == {"falachefe:1.0"}
    third = finish_migration(kube_api, op_namespace, NAME, message=json.dumps({"schema_version": 4, "applied": [4]}))
    wait_for(
        lambda: set(worker_images(kube_api, op_namespace).values()) == {"falachefe:2.1"},
        timeout=60,
        what="the workers rolled to the migrated image",
    )
    wait_condition(kube_api, op_namespace, NAME, "Degraded", "False", "AsExpected")
    # The status is written after the pass's apply: wait for it rather than race it.
    wait_for(
        lambda: (
            migration_status(kube_api, op_namespace)
            == {"image": "falachefe:2.1", "schemaVersion": 4, "job": third, "phase": "Succeeded"}
        ),
        timeout=30,
        what="status.migration after the fixed image's migration",
    )
