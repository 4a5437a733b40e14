"""What a platform team reads from the running operator: its log lines and its /metrics.

The module's operator (see conftest) logs as the chart runs it: JSON, the
same schema as the workers; Kopf's own lines included.
"""

from __future__ import annotations

import json
import re
from typing import Any

from kubernetes import client as k8s
from opkit import Operator, apply, create_secrets, put_secret, sample, wait_condition

from falachefe_devstack.kube import ControlPlane
from falachefe_devstack.waiting import wait_for

RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def records(operator: Operator) -> list[dict[str, Any]]:
    return [json.loads(line) for line in operator.log().splitlines() if line.strip()]


def test_events_are_logged_at_their_level_with_the_resource_as_fields(
    operator: Operator, kube: ControlPlane, kube_api: k8s.ApiClient, op_namespace: str, redis_url: str
) -> None:
    put_secret(k8s.CoreV1Api(kube_api), op_namespace, "noted-db", {"dsn": "postgresql://u:p@db/x"})
    apply(kube, sample("noted", op_namespace))
    wait_condition(kube_api, op_namespace, "noted", "Degraded", "True", "SecretNotFound")

    def logged(reason: str) -> dict[str, Any] | None:
        return next((r for r in records(operator) if r.get("reason") == reason and r.get("name") == "noted"), None)

    warning = wait_for(lambda: logged("SecretNotFound"), timeout=30, what="the Warning Event in the log")
    assert warning["level"] == "warning" and warning["event"] == "Warning"
    assert warning["namespace"] == op_namespace
    assert f"Secret {op_namespace}/noted-redis not found" in warning["message"]

    create_secrets(kube_api, op_namespace, "noted", redis_url)
    wait_condition(kube_api, op_namespace, "noted", "Degraded", "False", "AsExpected")
    reconciled = wait_for(lambda: logged("Reconciled"), timeout=30, what="the Reconciled Event in the log")
    assert reconciled["level"] == "info" and reconciled["event"] == "Normal"


def test_every_line_the_operator_writes_is_one_json_record_of_the_schema(operator: Operator) -> None:
    lines = records(operator)  # json.loads fails on any line that is not one JSON object
    assert lines
    for record in lines:
        assert RFC3339_UTC.match(record["time"]), record
        assert record["level"] in {"debug", "info", "warning", "error", "critical"}, record
        assert record["logger"] and "message" in record, record
    # Kopf's own lines go through the same schema.
    assert any(record["logger"].startswith("kopf.") for record in lines)


def test_metrics_follow_prometheus_conventions(operator: Operator) -> None:
    samples = operator.metrics()
    [build] = [key for key in samples if key.startswith("falachefe_operator_build_info{")]
    assert re.search(r'version="\d+\.\d+\.\d+"', build) and 'python="3.' in build
    assert samples[build] == 1
    counters = [key for key in samples if "_total{" in key or key.endswith("_total")]
    assert any(key.startswith("falachefe_operator_reconciles_total") for key in counters)
    # No precomputed rates, and no unit-less durations.
    assert not [key for key in samples if "_rate" in key.split("{")[0]]
    assert any(key.startswith("falachefe_operator_reconcile_duration_seconds_bucket") for key in samples)
