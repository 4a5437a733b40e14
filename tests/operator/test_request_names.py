"""The operator names each API request as the API server's ``apiserver_request_total`` does."""

from __future__ import annotations

import pytest

from falachefe_operator.kubeapi import describe_request

CASES = [
    ("GET", "/api/v1/namespaces/ns/pods", {}, ("LIST", "", "pods", "")),
    ("GET", "/api/v1/namespaces/ns/pods", {"watch": "true"}, ("WATCH", "", "pods", "")),
    ("GET", "/api/v1/pods", {"watch": "1", "labelSelector": "a=b"}, ("WATCH", "", "pods", "")),
    ("GET", "/api/v1/namespaces/ns/secrets/db", {}, ("GET", "", "secrets", "")),
    ("GET", "/api/v1/namespaces/ns", {}, ("GET", "", "namespaces", "")),
    ("GET", "/api/v1/namespaces", {}, ("LIST", "", "namespaces", "")),
    ("PATCH", "/apis/apps/v1/namespaces/ns/deployments/x-auth", {}, ("PATCH", "apps", "deployments", "")),
    ("PATCH", "/apis/apps/v1/namespaces/ns/deployments/x-auth/scale", {}, ("PATCH", "apps", "deployments", "scale")),
    (
        "PATCH",
        "/apis/falachefe.io/v1alpha1/namespaces/ns/falachefes/x/status",
        {},
        ("PATCH", "falachefe.io", "falachefes", "status"),
    ),
    ("POST", "/api/v1/namespaces/ns/events", {}, ("CREATE", "", "events", "")),
    (
        "PUT",
        "/apis/coordination.k8s.io/v1/namespaces/ns/leases/op",
        {},
        ("UPDATE", "coordination.k8s.io", "leases", ""),
    ),
    ("DELETE", "/apis/batch/v1/namespaces/ns/jobs/migrate", {}, ("DELETE", "batch", "jobs", "")),
    ("DELETE", "/apis/batch/v1/namespaces/ns/jobs", {}, ("DELETECOLLECTION", "batch", "jobs", "")),
    ("GET", "/apis/metrics.k8s.io/v1beta1/pods", {"labelSelector": "x"}, ("LIST", "metrics.k8s.io", "pods", "")),
    (
        "GET",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        {},
        ("LIST", "apiextensions.k8s.io", "customresourcedefinitions", ""),
    ),
    ("GET", "/apis", {}, ("GET", "", "", "")),
    ("GET", "/apis/apps/v1", {}, ("GET", "apps", "", "")),
    ("GET", "/version", {}, ("GET", "", "", "")),
]


@pytest.mark.parametrize(("method", "path", "query", "expected"), CASES)
def test_requests_are_named_as_the_api_server_names_them(
    method: str, path: str, query: dict[str, str], expected: tuple[str, str, str, str]
) -> None:
    assert describe_request(method, path, query) == expected
