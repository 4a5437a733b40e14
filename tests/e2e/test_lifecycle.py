"""Lifecycle on the real node: the schema migrated by a Job, upgrades that lose nothing.

The "next release" is the image under test plus one migration file
(``images.derived_image``): v0004 forbids blank user names by a CHECK
constraint, which fails on a database holding one,
as a real release's migration fails on data it did not expect.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import asyncpg
import pytest
from kubernetes import client as k8s
from nodekit import SMALL_POOLS, App, replies, send_messages

from falachefe_devstack.images import derived_image
from falachefe_devstack.stack import LocalStack
from falachefe_devstack.waiting import async_wait_for, wait_for
from falachefe_operator import naming
from falachefe_operator.resource import GROUP, PLURAL, VERSION
from falachefe_runtime.config import WorkerKind
from falachefe_runtime.db.migrate import SCHEMA_VERSION
from falachefe_runtime.db.migrations import MIGRATIONS

pytestmark = pytest.mark.slow

MIGRATIONS_DIR = "/opt/falachefe/lib/python3.11/site-packages/falachefe_runtime/db/migrations"
#: The next release's migration: the version after this image's newest.
NEXT_VERSION = SCHEMA_VERSION + 1
NEXT_MIGRATION = f'''"""Users' names are not blank (the next release's migration, in the lifecycle tests)."""

from .base import Migration

MIGRATION = Migration(
    version={NEXT_VERSION},
    name="users_name_not_blank",
    statements=(
        "ALTER TABLE users ADD CONSTRAINT users_name_not_blank CHECK (name IS NULL OR btrim(name) <> '')",
    ),
)
'''


@pytest.fixture(scope="module")
def next_image(cluster: LocalStack) -> str:
    """The image under test with one more migration, imported into the node."""
    assert cluster.image is not None and cluster.node is not None
    ref, archive = derived_image(
        cluster.image, {f"{MIGRATIONS_DIR}/v{NEXT_VERSION:04d}_users_name_not_blank.py": NEXT_MIGRATION}, "next"
    )
    cluster.node.import_image(archive)
    return ref


def migration(app: App, name: str = "app") -> dict[str, Any]:
    return dict((app.get(name).get("status") or {}).get("migration") or {})


def condition(app: App, type_: str, name: str = "app") -> dict[str, Any]:
    found = [c for c in (app.get(name).get("status") or {}).get("conditions") or [] if c["type"] == type_]
    return found[0] if found else {}


def worker_images(app: App, name: str = "app") -> set[str]:
    deployments = k8s.AppsV1Api(app.api).list_namespaced_deployment(
        app.namespace, label_selector=naming.selector_string(naming.instance_selector(name))
    )
    return {d.spec.template.spec.containers[0].image for d in deployments.items}


def running_images(app: App) -> set[str]:
    """The images of the worker pods that are Ready now."""
    return {
        pod.spec.containers[0].image
        for pod in app.pods(naming.selector_string(naming.instance_selector("app")))
        if any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))
    }


def job(app: App, name: str) -> k8s.V1Job:
    return k8s.BatchV1Api(app.api).read_namespaced_job(name, app.namespace)


@contextlib.asynccontextmanager
async def connected(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(dsn)
    try:
        yield connection
    finally:
        await connection.close()


async def constraint_exists(dsn: str) -> bool:
    async with connected(dsn) as connection:
        return bool(await connection.fetchval("SELECT 1 FROM pg_constraint WHERE conname = 'users_name_not_blank'"))


@contextlib.asynccontextmanager
async def traffic(app: App, every: float = 0.5) -> AsyncIterator[list[str]]:
    """Messages sent one by one while the body runs; the list of their ids grows meanwhile."""
    sent: list[str] = []

    async def send() -> None:
        while True:
            sent.extend(await send_messages(app, 1, text=f"Mensagem {len(sent)}"))
            await asyncio.sleep(every)

    task = asyncio.create_task(send())
    try:
        yield sent
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def all_answered(app: App, sent: list[str], timeout: float = 300) -> None:
    async def answered() -> bool:
        return set(sent) <= set(await replies(app.queues))

    await async_wait_for(answered, timeout=timeout, interval=1.0, what=f"all {len(sent)} messages answered")


async def test_a_new_database_is_migrated_by_a_job_before_any_worker_starts(app: App) -> None:
    assert app.stack.postgres is not None
    database = f"e2e_fresh_{uuid.uuid4().hex[:8]}"
    fresh = await asyncio.to_thread(app.stack.postgres.create_database, database)
    try:
        core = k8s.CoreV1Api(app.api)
        pod_dsn = app.stack.postgres.dsn(database, host=app.stack.pod_host)
        core.create_namespaced_secret(
            app.namespace, k8s.V1Secret(metadata=k8s.V1ObjectMeta(name="fresh-db"), string_data={"dsn": pod_dsn})
        )
        app.apply(
            app.falachefe("fresh", database={"secretRef": {"name": "fresh-db"}}, pools={"auth": SMALL_POOLS["auth"]})
        )
        await asyncio.to_thread(app.wait_ready, "fresh")
        status = migration(app, "fresh")
        assert status["phase"] == "Succeeded" and status["schemaVersion"] == SCHEMA_VERSION
        assert status["image"] == app.stack.image
        done = job(app, status["job"])
        assert done.status.succeeded == 1
        # The workers' Deployment was created only after the Job completed.
        deployment = k8s.AppsV1Api(app.api).read_namespaced_deployment(
            naming.deployment_name("fresh", WorkerKind.AUTH), app.namespace
        )
        completed: datetime = done.status.completion_time
        assert deployment.metadata.creation_timestamp >= completed.replace(microsecond=0)
        async with connected(fresh) as connection:
            versions = [row["version"] for row in await connection.fetch("SELECT version FROM schema_migrations")]
        assert sorted(versions) == [migration.version for migration in MIGRATIONS]
    finally:
        k8s.CustomObjectsApi(app.api).delete_namespaced_custom_object(GROUP, VERSION, app.namespace, PLURAL, "fresh")


async def test_an_upgrade_with_a_new_migration_under_traffic_answers_every_message_once(
    app: App, next_image: str
) -> None:
    app.apply(app.falachefe(pools=SMALL_POOLS))
    await asyncio.to_thread(app.wait_ready)
    assert migration(app)["image"] == app.stack.image

    async with traffic(app) as sent:
        app.apply(app.falachefe(image=next_image, pools=SMALL_POOLS))
        # While the Job runs, the old image serves.
        await asyncio.to_thread(
            wait_for,
            lambda: condition(app, "Progressing").get("reason") == "Migrating",
            timeout=60,
            interval=0.5,
            what="Progressing: Migrating",
        )
        assert worker_images(app) == {app.stack.image}
        await asyncio.to_thread(
            wait_for, lambda: migration(app).get("image") == next_image, timeout=180, interval=1.0, what="migrated"
        )
        await asyncio.to_thread(
            wait_for,
            lambda: running_images(app) == {next_image} and condition(app, "Ready").get("status") == "True",
            timeout=300,
            interval=1.0,
            what="every worker on the new image and Ready",
        )
    await all_answered(app, sent)
    assert len(sent) >= 10, "traffic flowed during the upgrade"
    answers = await replies(app.queues)  # fails on a message answered twice
    assert all(answers[message].text for message in sent)
    assert await constraint_exists(app.dsn)
    assert migration(app)["schemaVersion"] == NEXT_VERSION


async def test_a_failed_migration_keeps_the_old_workers_serving_and_says_why(app: App, next_image: str) -> None:
    app.apply(app.falachefe(pools=SMALL_POOLS))
    await asyncio.to_thread(app.wait_ready)
    # A blank name, which the new constraint refuses: the next release's migration will fail on it.
    async with connected(app.dsn) as connection:
        await connection.execute(
            "INSERT INTO users (company_id, phone_number, name) VALUES ($1, '+5511987650001', '   ')",
            app.tenant.company_id,
        )

    app.apply(app.falachefe(image=next_image, pools=SMALL_POOLS))
    degraded = await asyncio.to_thread(
        wait_for,
        lambda: condition(app, "Degraded") if condition(app, "Degraded").get("reason") == "MigrationFailed" else None,
        timeout=300,
        interval=1.0,
        what="Degraded: MigrationFailed",
    )
    failed = migration(app)
    assert failed["phase"] == "Failed" and failed["image"] == app.stack.image
    # The reason comes from the migration's own report, read from the real pod's termination message.
    assert 'check constraint "users_name_not_blank"' in degraded["message"], degraded
    assert failed["job"] in degraded["message"]
    assert job(app, failed["job"]).status.failed == 3  # backoffLimit 2: three attempts, the Job kept
    assert worker_images(app) == {app.stack.image}
    assert running_images(app) == {app.stack.image}

    # The old workers still serve.
    sent = await send_messages(app, 5)
    await all_answered(app, sent, timeout=180)

    # Fix the data, delete the failed Job: the operator runs it again and the workers roll.
    async with connected(app.dsn) as connection:
        await connection.execute("DELETE FROM users WHERE phone_number = '+5511987650001'")
    k8s.BatchV1Api(app.api).delete_namespaced_job(failed["job"], app.namespace, propagation_policy="Background")
    await asyncio.to_thread(
        wait_for,
        lambda: running_images(app) == {next_image} and condition(app, "Degraded").get("status") == "False",
        timeout=300,
        interval=1.0,
        what="the workers on the new image, Degraded cleared",
    )
    assert migration(app) | {"job": None} == {
        "image": next_image,
        "schemaVersion": NEXT_VERSION,
        "job": None,
        "phase": "Succeeded",
    }
