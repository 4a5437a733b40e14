"""The ``Falachefe`` resource's identity in the Kubernetes API."""

from __future__ import annotations

GROUP = "falachefe.io"
VERSION = "v1alpha1"
KIND = "Falachefe"
PLURAL = "falachefes"
SINGULAR = "falachefe"
SHORT_NAMES = ("fc",)
API_VERSION = f"{GROUP}/{VERSION}"
CRD_NAME = f"{PLURAL}.{GROUP}"


def status_path(namespace: str, name: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}/status"
