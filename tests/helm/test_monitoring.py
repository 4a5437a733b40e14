"""The chart's monitoring: off by default, alert rules that promtool passes, a PodMonitor that finds the
workers the operator builds, and a dashboard and rules that only name series the programs really export."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helmchart import Helm, Manifest, objects_of, one
from prometheus_client.parser import text_string_to_metric_families

from falachefe_devstack import toolchain
from falachefe_devstack.kube import ControlPlane, kubectl, temporary_namespace
from falachefe_devstack.process import ManagedProcess, free_port, http_ok, program_path
from falachefe_operator import builders, crd
from falachefe_operator.builders import Resource
from falachefe_operator.spec import FalachefeSpec
from falachefe_runtime.config import WorkerKind

HERE = Path(__file__).parent
REPO = HERE.parents[1]
MONITORING = {
    "serviceMonitor": {"enabled": True},
    "podMonitor": {"enabled": True},
    "prometheusRule": {"enabled": True},
    "grafanaDashboard": {"enabled": True},
}
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def dashboard_of(manifests: list[Manifest]) -> dict[str, Any]:
    config_map = one(
        [m for m in manifests if m["kind"] == "ConfigMap"], "ConfigMap", "rel-falachefe-operator-dashboard"
    )
    return dict(json.loads(config_map["data"]["falachefe.json"]))


def rule_groups(manifests: list[Manifest]) -> list[dict[str, Any]]:
    return list(one(manifests, "PrometheusRule")["spec"]["groups"])


def test_monitoring_is_off_by_default(helm: Helm) -> None:
    manifests = helm.template()
    assert not [m for m in manifests if m["kind"] in MONITORING_KINDS]
    assert not [m for m in objects_of(manifests, "ConfigMap") if "grafana_dashboard" in m["metadata"]["labels"]]


def test_alert_rules_pass_promtool(helm: Helm, tmp_path: Path) -> None:
    """`promtool check rules` on what the chart renders, then every case of alerts.promtool.yaml."""
    promtool = toolchain.ensure_promtool() / "promtool"
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups(helm.template(MONITORING))}))
    shutil.copy(HERE / "alerts.promtool.yaml", tmp_path / "alerts.promtool.yaml")
    for args in (["check", "rules", "rules.yaml"], ["test", "rules", "alerts.promtool.yaml"]):
        done = subprocess.run(
            [str(promtool), *args], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
    assert (
        "SUCCESS: 7 rules found"
        in subprocess.run(
            [str(promtool), "check", "rules", "rules.yaml"], cwd=tmp_path, capture_output=True, text=True, check=True
        ).stdout
    )


def test_alerts_can_be_left_out_and_thresholds_set(helm: Helm) -> None:
    values = {**MONITORING, "prometheusRule": {"enabled": True, "disabled": ["FalachefeOperatorDown"]}}
    values["prometheusRule"]["queueWaitSeconds"] = 120
    [group] = rule_groups(helm.template(values))
    alerts = {rule["alert"]: rule for rule in group["rules"]}
    assert "FalachefeOperatorDown" not in alerts and len(alerts) == 6
    assert alerts["FalachefeQueueWaitHigh"]["expr"].rstrip().endswith("> 120")


def test_pod_monitor_selects_the_workers_the_operator_builds(helm: Helm) -> None:
    spec = FalachefeSpec.model_validate(
        {
            "image": "falachefe:1",
            "database": {"secretRef": {"name": "db"}},
            "redis": {"secretRef": {"name": "redis"}},
            "auth": {"otpSecretRef": {"name": "otp"}},
            "pools": {"auth": {}},
        }
    )
    resource = Resource("shop", "team-a", "uid", spec, worker_image=spec.image)
    pod = builders.deployment(resource, WorkerKind.AUTH, spec.pools.auth, "hash")["spec"]["template"]  # type: ignore[arg-type]
    monitor = one(helm.template(MONITORING), "PodMonitor")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    [endpoint] = monitor["podMetricsEndpoints"]
    assert endpoint["port"] in {port["name"] for port in pod["spec"]["containers"][0]["ports"]}
    # The pool and Falachefe labels come from the pod's labels, as the operator's series carry them.
    relabeled = {r["targetLabel"]: r["sourceLabels"][0] for r in endpoint["relabelings"]}
    pod_labels = {
        "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", k): v
        for k, v in pod["metadata"]["labels"].items()
    }
    assert {target: pod_labels[source] for target, source in relabeled.items()} == {
        "falachefe": "shop",
        "pool": "auth",
    }
    # By default the operator serves its release namespace: so does the PodMonitor.
    assert monitor["namespaceSelector"] == {"matchNames": ["ops"]}
    everywhere = {**MONITORING, "watch": {"allNamespaces": True}}
    assert one(helm.template(everywhere), "PodMonitor")["spec"]["namespaceSelector"] == {"any": True}
    namespaced = {**MONITORING, "watch": {"allNamespaces": False, "namespaces": ["team-a", "team-b"]}}
    assert one(helm.template(namespaced), "PodMonitor")["spec"]["namespaceSelector"] == {
        "matchNames": ["team-a", "team-b"]
    }
    # The operator's own series carry the Falachefe's namespace: the scrape must keep it.
    [operator_endpoint] = one(helm.template(MONITORING), "ServiceMonitor")["spec"]["endpoints"]
    assert operator_endpoint["honorLabels"] is True


def test_dashboard_is_a_grafana_sidecar_config_map(helm: Helm) -> None:
    manifests = helm.template(MONITORING)
    config_map = one([m for m in manifests if m["kind"] == "ConfigMap"], "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = dashboard_of(manifests)
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "namespace", "falachefe", "pool"}
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["description"], panel["title"]
        assert all(target["expr"] for target in panel["targets"]), panel["title"]
    elsewhere = {**MONITORING, "grafanaDashboard": {"enabled": True, "namespace": "grafana", "labels": {"dash": "x"}}}
    moved = dashboard_of(helm.template(elsewhere))
    assert moved == dashboard
    moved_map = next(m for m in helm.template(elsewhere) if m["kind"] == "ConfigMap")
    assert moved_map["metadata"]["namespace"] == "grafana" and moved_map["metadata"]["labels"]["dash"] == "x"


# -- every series named is one the programs export ------------------------------------------


def exported_series(metrics_text: str) -> set[str]:
    """The series names a /metrics page offers, whether or not a labelled series has a sample yet."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("_count", "_sum", "_created"),
        "gauge": ("",),
        "info": ("_info",),
        "unknown": ("",),
    }
    return {
        family.name + suffix
        for family in text_string_to_metric_families(metrics_text)
        for suffix in suffixes[family.type]
    }


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


@pytest.fixture
def worker_metrics(pg_dsn: str, redis_url: str, tmp_path: Path) -> Iterator[str]:
    """A real auth worker's /metrics, on real PostgreSQL (migrated: workers refuse a bare one) and Redis."""
    subprocess.run(
        [program_path("falachefe-runtime"), "migrate"],
        env={"FALACHEFE_DATABASE__DSN": pg_dsn, "PATH": "/usr/bin:/bin"},
        check=True,
        capture_output=True,
        timeout=120,
    )
    metrics_port = free_port()
    env = {
        "FALACHEFE_DATABASE__DSN": pg_dsn,
        "FALACHEFE_DATABASE__PRIMARY__MIN_SIZE": "1",
        "FALACHEFE_REDIS__URL": redis_url,
        "FALACHEFE_AUTH__OTP_SECRET": "an HMAC key",
        "FALACHEFE_OBSERVABILITY__HEALTH_PORT": str(free_port()),
        "FALACHEFE_OBSERVABILITY__METRICS_PORT": str(metrics_port),
    }
    worker = ManagedProcess(
        "worker", [program_path("falachefe-runtime"), "worker", "--pool", "auth"], tmp_path / "worker.log", env=env
    ).start()
    try:
        worker.wait_until(lambda: http_ok(f"http://127.0.0.1:{metrics_port}/metrics"), 60, "/metrics answers")
        yield scrape(metrics_port)
    finally:
        worker.stop()


@pytest.fixture
def operator_metrics(kube: ControlPlane, kube_api: Any, tmp_path: Path) -> Iterator[str]:
    """A real operator's /metrics, serving a namespace of its own."""
    kubectl(kube.kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", str(REPO / crd.CRD_PATH))
    with temporary_namespace(kube_api, "monitoring") as namespace:
        metrics_port, liveness_port = free_port(), free_port()
        argv = [
            program_path("falachefe-operator"),
            "--standalone",
            f"--namespace={namespace}",
            f"--metrics-port={metrics_port}",
            f"--liveness-port={liveness_port}",
        ]
        operator = ManagedProcess("operator", argv, tmp_path / "operator.log", env={"KUBECONFIG": str(kube.kubeconfig)})
        operator.start()
        try:
            operator.wait_until(lambda: http_ok(f"http://127.0.0.1:{liveness_port}/healthz"), 60, "/healthz answers")
            yield scrape(metrics_port)
        finally:
            operator.stop()


def queries(helm: Helm) -> dict[str, str]:
    """Every PromQL expression the chart ships: the alert rules, the dashboard's panels and variables."""
    manifests = helm.template(MONITORING)
    found = {f"alert {rule['alert']}": rule["expr"] for group in rule_groups(manifests) for rule in group["rules"]}
    dashboard = dashboard_of(manifests)
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found[f"panel {panel['title']} {target['refId']}"] = target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found[f"variable {variable['name']}"] = variable["query"]["query"]
    return found


def test_every_query_names_only_series_the_programs_export(
    helm: Helm, worker_metrics: str, operator_metrics: str
) -> None:
    exported = exported_series(worker_metrics) | exported_series(operator_metrics)
    assert "falachefe_job_queue_wait_seconds_bucket" in exported
    assert "falachefe_operator_pool_queue_jobs_added_total" in exported
    shipped = queries(helm)
    assert len(shipped) > 30
    for where, expr in shipped.items():
        named = set(re.findall(r"\b(falachefe_[a-z0-9_]+)\b", expr))
        assert named, f"{where} reads no Falachefe series: {expr}"
        assert named <= exported, f"{where} names series nobody exports: {sorted(named - exported)}"
