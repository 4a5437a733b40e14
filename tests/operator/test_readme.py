"""The README's "Using it" path, run as written against the real API server and the real operator.

The README's own commands create the Secrets and apply the sample (only
the Redis URL placeholder is pointed at this test's Redis, so the queue
can be read); the operator, as its chart identity, reconciles it. No
kubelet runs here, so the test plays its part (the migration Job's pod
ends, worker pods marked Ready) and
metrics-server's (a stand-in behind the aggregation layer reporting the
pods' CPU). Then ``kubectl get falachefe -o wide`` must show what the
README shows, column by column (the age aside).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from kubernetes import client as k8s
from opkit import REPO, Operator, condition, finish_migration, wait_condition

from falachefe_devstack.kube import ControlPlane, kubectl
from falachefe_devstack.metrics_standin import MetricsServerStandIn
from falachefe_devstack.pods import mark_pods_ready
from falachefe_devstack.waiting import wait_for
from falachefe_operator import naming
from falachefe_runtime.config import WorkerKind

README = REPO / "README.md"
SAMPLE_NAME = "demo"


def using_it() -> tuple[list[str], str]:
    """The commands of the README's block that ends in ``kubectl get falachefe -o wide``, and the output shown."""
    section = README.read_text().split("## Using it", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(\w*)\n(.*?)```", section, re.S)
    for index, (language, body) in enumerate(blocks):
        if language == "sh" and "kubectl get falachefe -o wide" in body:
            commands = [line for line in body.splitlines() if line.strip()]
            return commands, blocks[index + 1][1]
    raise AssertionError("the README's Using it section has no `kubectl get falachefe -o wide` block")


def columns(table: str) -> list[dict[str, str]]:
    """A kubectl table's rows as {header: cell}, cut at the header's column starts (cells hold spaces)."""
    header, *rows = [line for line in table.splitlines() if line.strip()]
    starts = [match.start() for match in re.finditer(r"\S+", header)]
    names = header.split()
    bounds = [*starts[1:], None]
    return [
        {name: row[start:end].strip() for name, start, end in zip(names, starts, bounds, strict=True)} for row in rows
    ]


def test_the_readme_path_works_as_written_and_shows_what_the_readme_shows(
    operator: Operator,
    kube: ControlPlane,
    kube_api: k8s.ApiClient,
    op_namespace: str,
    redis_url: str,
    metrics_server: MetricsServerStandIn,
    tmp_path: Path,
) -> None:
    commands, shown = using_it()
    assert any("kubectl apply -f crds/samples/falachefe.yaml" in command for command in commands)
    # A person's kubeconfig, its context in the namespace the operator watches.
    kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig", "admin", kube.admin_token, op_namespace)
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    for written in commands:
        command = re.sub(r"--from-literal=url='[^']*'", f"--from-literal=url='{redis_url}'", written)
        done = subprocess.run(
            ["bash", "-c", command], cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, f"{command}\n{done.stderr}"

    # The sample's database is migrated by the operator's Job first (its pod's part played here).
    finish_migration(kube_api, op_namespace, SAMPLE_NAME, message=json.dumps({"schema_version": 3, "applied": []}))
    # Every Secret the sample names exists: nothing is Degraded.
    wait_condition(kube_api, op_namespace, SAMPLE_NAME, "Degraded", "False", "AsExpected")
    for pool in (WorkerKind.AUTH, WorkerKind.ADMIN):
        selector = naming.pool_selector(SAMPLE_NAME, pool)
        wait_for(
            lambda selector=selector: mark_pods_ready(kube_api, op_namespace, selector),
            timeout=30,
            what=f"the {pool.value} pool's pod created",
        )
        for pod in (
            k8s.CoreV1Api(kube_api)
            .list_namespaced_pod(op_namespace, label_selector=naming.selector_string(selector))
            .items
        ):
            metrics_server.set_usage(op_namespace, pod.metadata.name, dict(pod.metadata.labels), "10m")
    ready = wait_condition(kube_api, op_namespace, SAMPLE_NAME, "Ready", "True", "WorkersReady", timeout=90)
    wait_condition(kube_api, op_namespace, SAMPLE_NAME, "ScalingActive", "True", "ScalingActive", timeout=60)
    assert condition(ready, "Progressing")["status"] == "False"

    real = kubectl(kubeconfig, "get", "falachefe", "-o", "wide").stdout
    [real_row], [shown_row] = columns(real), columns(shown)
    assert list(real_row) == list(shown_row), f"columns differ:\n{real}"
    for column in real_row:
        if column == "AGE":
            assert re.fullmatch(r"\d+[smhd]", shown_row[column]), shown_row[column]
        else:
            assert real_row[column] == shown_row[column], f"{column}: README {shown_row[column]!r}, real:\n{real}"
