"""The CRD: generated from the models, accepted by the API server, defaulting and refusing like the models."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from opkit import CRD_FILE, SAMPLE_FILE, apply, get
from pydantic import ValidationError

from falachefe_devstack.kube import ControlPlane, kubectl
from falachefe_devstack.waiting import wait_for
from falachefe_operator import crd
from falachefe_operator.controller import describe_validation_error
from falachefe_operator.spec import FalachefeSpec


def test_committed_crd_is_what_the_models_generate() -> None:
    assert crd.main(["--check", "--root", str(CRD_FILE.parents[1])]) == 0, (
        "run python -m falachefe_operator.crd --write"
    )


def _walk(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from _walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural_and_only_k8s_passthroughs_keep_unknown_fields() -> None:
    schema = crd.definition()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    preserved = []
    for path, node in _walk(schema, ""):
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        assert node.get("additionalProperties") is not False, path
        if node.get("x-kubernetes-preserve-unknown-fields"):
            preserved.append(path)
    # Only the pod-spec fields passed to Kubernetes unchanged (it validates them itself).
    assert sorted({p.rsplit(".", 1)[-1] for p in preserved}) == ["affinity", "topologySpreadConstraints[]"]


def test_every_field_is_described_for_kubectl_explain() -> None:
    """Each property of the schema, spec and status, nested and in lists, says what it is."""
    schema = crd.definition()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    # Fields are named properties; a list's items and a map's values are described by their field.
    fields = [(path, node) for path, node in _walk(schema, "") if path and not path.endswith(("[]", "{}"))]
    # metadata is the only exception: the API server allows nothing but its type (ObjectMeta describes it).
    undescribed = [
        path for path, node in fields if path != ".metadata" and not str(node.get("description", "")).strip()
    ]
    assert len(fields) > 200
    assert undescribed == []


def test_kubectl_explain_shows_the_descriptions(kube: ControlPlane, crd_installed: None) -> None:
    def explain(field: str) -> str:
        # The API server publishes a new CRD's OpenAPI a moment after it is Established.
        done = wait_for(
            lambda: (result := kubectl(kube.kubeconfig, "explain", field, check=False)).returncode == 0 and result,
            timeout=60,
            what=f"kubectl explain {field}",
        )
        return done.stdout

    assert "The window the limit applies to, in seconds." in explain(
        "falachefes.spec.pools.crew.autoscaling.behavior.scaleDown.policies.periodSeconds"
    )
    assert "HMAC" in explain("falachefes.spec.auth.otpSecretRef")


def test_printer_columns_answer_ready_workers_and_queue_depth() -> None:
    columns = {c["name"]: c for c in crd.definition()["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert [name for name, c in columns.items() if not c.get("priority")] == [
        "Ready",
        "Reason",
        "Workers",
        "Queue",
        "Age",
    ]
    assert {"Pools", "Scaling", "Image"} <= {name for name, c in columns.items() if c.get("priority") == 1}


@pytest.fixture
def crd_namespace(namespace: str, crd_installed: None) -> str:
    """The test's own namespace, once the CRD is served."""
    return namespace


def test_api_server_fills_in_exactly_the_models_defaults(
    kube: ControlPlane, kube_api: k8s.ApiClient, crd_namespace: str
) -> None:
    manifest = yaml.safe_load(SAMPLE_FILE.read_text())
    manifest["metadata"]["namespace"] = crd_namespace
    apply(kube, manifest)
    stored = get(kube_api, crd_namespace, manifest["metadata"]["name"])["spec"]
    expected = FalachefeSpec.model_validate(manifest["spec"]).model_dump(mode="json", by_alias=True, exclude_none=True)
    assert _normal(stored) == _normal(expected)


def _normal(value: Any) -> Any:
    """JSON has one number type (30.0 comes back as 30), and an empty list or map is as good as none."""
    if isinstance(value, dict):
        return {key: _normal(item) for key, item in value.items() if item not in ({}, [])}
    if isinstance(value, list):
        return [_normal(item) for item in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _resource(namespace: str, name: str = "bad", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "falachefe.io/v1alpha1",
        "kind": "Falachefe",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "image": "falachefe:1",
            "database": {"secretRef": {"name": "db"}},
            "redis": {"secretRef": {"name": "redis"}},
            "llm": {"model": "m"},
            "auth": {"otpSecretRef": {"name": "otp"}},
            "pools": {"auth": {}},
        },
    }
    body["spec"].update(spec)
    return body


INVALID = {
    "min-above-max": (
        {"pools": {"auth": {"minReplicas": 3, "maxReplicas": 2}}},
        ["spec.pools.auth.minReplicas", "minReplicas must not exceed maxReplicas"],
    ),
    "unknown-pool-field": ({"pools": {"auth": {"replicas": 3}}}, ['unknown field "spec.pools.auth.replicas"']),
    "unknown-pool": ({"pools": {"auth": {}, "billing": {}}}, ['unknown field "spec.pools.billing"']),
    "negative-concurrency": (
        {"pools": {"auth": {"concurrency": -1}}},
        ["spec.pools.auth.concurrency", "greater than or equal to 1"],
    ),
    "no-pools": ({"pools": {}}, ["spec.pools", "pools must define at least one worker pool"]),
    "crew-without-llm": ({"pools": {"crew": {}}, "llm": None}, ["spec.llm", "llm is required when pools.crew is set"]),
    "auth-without-otp-secret": (
        {"auth": {}},
        ["spec.auth", "auth.otpSecretRef is required when pools.auth is set"],
    ),
    "grace-shorter-than-job-timeout": (
        {"pools": {"auth": {}, "crew": {"terminationGracePeriodSeconds": 60}}},
        ["spec.pools.crew.terminationGracePeriodSeconds", "must be at least jobTimeoutSeconds + 5"],
    ),
    "reserved-env": (
        {"pools": {"auth": {"env": [{"name": "FALACHEFE_WORKER__QUEUE", "value": "x"}]}}},
        ["spec.pools.auth.env", "env may not set a variable the operator manages"],
    ),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_resources_are_refused_by_the_api_server_naming_the_field(
    kube: ControlPlane, crd_namespace: str, case: str
) -> None:
    spec, words = INVALID[case]
    manifest = _resource(crd_namespace, **spec)
    if manifest["spec"].get("llm") is None:
        manifest["spec"].pop("llm")
    result = apply(kube, manifest, check=False)
    assert result.returncode != 0, f"the API server accepted {case}"
    for word in words:
        assert word in result.stderr, result.stderr
    # The operator's model refuses the same spec (the CEL rules and validators are twins).
    with pytest.raises(ValidationError) as error:
        FalachefeSpec.model_validate(manifest["spec"])
    assert describe_validation_error(error.value)


def test_names_that_cannot_name_the_worker_objects_are_refused(kube: ControlPlane, crd_namespace: str) -> None:
    result = apply(kube, _resource(crd_namespace, name="a" * 51), check=False)
    assert result.returncode != 0
    assert "metadata.name must be a DNS-1035 label of at most 50 characters" in result.stderr


def test_short_name_and_category_work_with_kubectl(kube: ControlPlane, crd_namespace: str) -> None:
    apply(kube, _resource(crd_namespace, name="ok"))
    assert "ok" in kubectl(kube.kubeconfig, "get", "fc", "-n", crd_namespace, "-o", "name").stdout
    assert "ok" in kubectl(kube.kubeconfig, "get", "falachefe", "-n", crd_namespace, "-o", "name").stdout
