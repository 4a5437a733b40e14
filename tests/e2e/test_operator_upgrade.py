"""Operator upgrade on the real node: `helm upgrade` from the previous chart and image adopts without a restart.

The previous release is built from an earlier commit of this repository
(``images.release_image``: ``git archive`` of it, its own Dockerfile,
cached by commit), its chart taken from the same commit. It ran before
migrations were Jobs and before the chart upgraded the CRD: its chart
installs the CRD from ``crds/`` (once, with no Helm ownership), its
operator writes no ``status.migration``. The test installs it as a
platform team did, lets it run a Falachefe's workers, then upgrades to this
tree's chart and image the way the README says, and checks that the new
operator takes over what the old one made: the same pods (UIDs, restart
counts), the same ReplicaSets, the same pod templates, labels, selectors
and field managers, and the Falachefe reconciled (``observedGeneration``,
conditions, its migration recorded) and still answering.
"""

from __future__ import annotations

import asyncio
import difflib
import io
import json
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from nodekit import OPERATOR_NAMESPACE, SMALL_POOLS, App, replies, send_messages
from nodekit import OPERATOR_RELEASE as SESSION_RELEASE

from falachefe_devstack.helm import Helm, operator_values
from falachefe_devstack.images import release_image
from falachefe_devstack.kube import kubectl
from falachefe_devstack.stack import LocalStack
from falachefe_devstack.waiting import async_wait_for, wait_for
from falachefe_operator import crd, naming

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
#: The previous release: operator chart 0.1.0, before migrations as Jobs and CRDs as templates.
PREVIOUS = "11a8d93"
RELEASE = "operator"


@pytest.fixture(scope="module")
def previous_image(cluster: LocalStack) -> str:
    """The previous release's image, imported into the node."""
    assert cluster.node is not None
    ref, archive = release_image(PREVIOUS)
    cluster.node.import_image(archive)
    return ref


@pytest.fixture(scope="module")
def previous_chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The previous release's operator chart, as it was published."""
    directory = tmp_path_factory.mktemp("previous")
    archive = subprocess.run(
        ["git", "archive", PREVIOUS, "helm/falachefe-operator"], cwd=REPO, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(directory, filter="data")
    chart = directory / "helm" / "falachefe-operator"
    assert yaml.safe_load((chart / "Chart.yaml").read_text())["version"] == "0.1.0"
    return chart


@pytest.fixture
def session_operator_paused(cluster_api: k8s.ApiClient) -> Iterator[None]:
    """The session's operator (every namespace) stopped, if an earlier test installed it: one operator at a time."""
    apps = k8s.AppsV1Api(cluster_api)
    try:
        replicas = apps.read_namespaced_deployment(SESSION_RELEASE, OPERATOR_NAMESPACE).spec.replicas
    except k8s.ApiException as error:
        if error.status != 404:
            raise
        yield
        return
    apps.patch_namespaced_deployment_scale(SESSION_RELEASE, OPERATOR_NAMESPACE, {"spec": {"replicas": 0}})
    core = k8s.CoreV1Api(cluster_api)
    selector = f"app.kubernetes.io/instance={SESSION_RELEASE}"
    wait_for(
        lambda: not core.list_namespaced_pod(OPERATOR_NAMESPACE, label_selector=selector).items,
        timeout=90,
        what="the session's operator stopped",
    )
    try:
        yield
    finally:
        apps.patch_namespaced_deployment_scale(SESSION_RELEASE, OPERATOR_NAMESPACE, {"spec": {"replicas": replicas}})


def install_previous_crd(app: App, chart: Path) -> None:
    """The cluster as the previous chart left it: its CRD, with no Helm ownership (crds/ is installed so)."""
    assert app.stack.kube is not None
    kubeconfig = app.stack.kube.kubeconfig
    path = chart / "crds" / crd.CRD_PATH.name
    exists = kubectl(kubeconfig, "get", f"crd/{crd.CRD_NAME}", "-o", "name", check=False).returncode == 0
    # replace, not apply: the CRD becomes exactly the previous one, whoever set its fields.
    kubectl(kubeconfig, "replace" if exists else "create", "-f", str(path))

    def established() -> bool:
        found = json.loads(kubectl(kubeconfig, "get", f"crd/{crd.CRD_NAME}", "-o", "json").stdout)
        served = found["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        conditions = (found.get("status") or {}).get("conditions") or []
        return "migrations" not in served and any(
            c["type"] == "Established" and c["status"] == "True" for c in conditions
        )

    wait_for(established, timeout=60, what=f"the previous CRD {crd.CRD_NAME} established")


def workers(app: App) -> dict[str, Any]:
    """What a restart or a re-made Deployment would change: pods, ReplicaSets, Deployments."""
    selector = naming.selector_string(naming.instance_selector("app"))
    apps = k8s.AppsV1Api(app.api)
    deployments = apps.list_namespaced_deployment(app.namespace, label_selector=selector).items
    return {
        "pods": {
            pod.metadata.name: (pod.metadata.uid, {c.name: c.restart_count for c in pod.status.container_statuses})
            for pod in app.pods(selector)
        },
        "replicasets": sorted(
            rs.metadata.name for rs in apps.list_namespaced_replica_set(app.namespace, label_selector=selector).items
        ),
        "deployments": {
            d.metadata.name: {
                "uid": d.metadata.uid,
                "labels": d.metadata.labels,
                "spec": app.api.sanitize_for_serialization(d.spec),
                "managers": sorted({(f.manager, f.operation) for f in d.metadata.managed_fields or []}),
            }
            for d in deployments
        },
    }


def changes(app: App, before: dict[str, Any], after: dict[str, Any]) -> str:
    """What a person would look at when workers changed: the difference, the resource, the operator's log."""
    assert app.stack.kube is not None
    diff = difflib.unified_diff(
        yaml.safe_dump(before).splitlines(), yaml.safe_dump(after).splitlines(), "before", "after", lineterm=""
    )
    selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/name=falachefe-operator"
    logs = kubectl(
        app.stack.kube.kubeconfig, "logs", "-n", app.namespace, "-l", selector, "--tail=60", check=False
    ).stdout
    return "\n".join(["", *diff, app.diagnose(), "--- operator", logs])


def status(app: App) -> dict[str, Any]:
    return dict(app.get().get("status") or {})


def conditions(app: App) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status(app).get("conditions") or []}


async def test_helm_upgrade_from_the_previous_release_adopts_every_falachefe_without_restarting_its_workers(
    app_without_operator: App,
    helm: Helm,
    previous_image: str,
    previous_chart: Path,
    session_operator_paused: None,
) -> None:
    app = app_without_operator
    assert app.stack.image is not None
    install_previous_crd(app, previous_chart)
    wait = ("--wait", "--timeout", "5m")
    try:
        helm.install(RELEASE, app.namespace, operator_values(previous_image, []), chart=previous_chart, flags=wait)
        # The crew pool's default grace period grows with this version (30 -> 190 s, to
        # cover its job timeout): a pool relying on it rolls once, as the README says.
        # Set as the README advises before an upgrade, nothing may roll.
        pools = {**SMALL_POOLS, "crew": {**SMALL_POOLS["crew"], "terminationGracePeriodSeconds": 190}}
        app.apply(app.falachefe(image=previous_image, pools=pools))
        await asyncio.to_thread(app.wait_ready)
        assert "migration" not in status(app), "the previous operator knew no migrations"
        before = workers(app)
        assert len(before["pods"]) == 2 and len(before["deployments"]) == 2
        generation = app.get()["metadata"]["generation"]

        # The README's upgrade: the chart takes the CRD over (the previous chart installed it from crds/).
        helm.upgrade(RELEASE, app.namespace, operator_values(app.stack.image, []), flags=("--take-ownership", *wait))
        upgraded_crd = yaml.safe_load(
            kubectl(app.stack.kube.kubeconfig, "get", f"crd/{crd.CRD_NAME}", "-o", "yaml").stdout  # type: ignore[union-attr]
        )
        assert upgraded_crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == RELEASE
        (version,) = upgraded_crd["spec"]["versions"]
        assert "migrations" in version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]

        # The new operator has reconciled it: only it records the migration, here the image the workers run.
        reconciled = await asyncio.to_thread(
            wait_for,
            lambda: status(app) if status(app).get("migration") else None,
            timeout=180,
            interval=1.0,
            what="the new operator's status (status.migration)",
        )
        assert reconciled["observedGeneration"] == generation
        assert reconciled["migration"]["image"] == previous_image
        assert reconciled["migration"]["phase"] == "Succeeded"
        await asyncio.to_thread(app.wait_ready)
        found = conditions(app)
        assert found["Degraded"]["status"] == "False", found["Degraded"]
        assert found["Progressing"]["status"] == "False", found["Progressing"]
        assert all(c.get("observedGeneration", generation) == generation for c in found.values()), found

        # The workers served through it all: no pod re-made or restarted, no new ReplicaSet, templates as they were.
        after = workers(app)
        assert after == before, changes(app, before, after)
        # And they still answer.
        sent = await send_messages(app, 3)

        async def answered() -> bool:
            return set(sent) <= set(await replies(app.queues))

        await async_wait_for(answered, timeout=120, interval=1.0, what="messages answered after the upgrade")
        assert workers(app)["pods"] == before["pods"]
    finally:
        helm.run("uninstall", RELEASE, "--namespace", app.namespace, "--ignore-not-found")
