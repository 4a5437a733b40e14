"""A small asyncio client for the Kubernetes API: what the reconciler needs, nothing more.

The official ``kubernetes`` client is synchronous; calling it from Kopf's
event loop would block every other resource while one request waits. This
client speaks HTTP with aiohttp on the same loop, returns plain dicts (no
model classes to build and throw away), and does server-side apply the way
the API documents it: a PATCH with ``application/apply-patch+yaml`` and a
field manager.

Credentials come from the ``kubernetes`` library's own loaders (kubeconfig,
in-cluster service account, exec plugins), read per request through the
``Configuration`` so that a rotated service-account token is picked up. The
reconcilers and the autoscaler share one ``KubeApi``; the leader elector has
one of its own (its renewals must not wait behind theirs); Kopf logs in
with the same ``Configuration``: one identity for the whole operator.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from . import metrics

APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
#: A Table of one row and no object (``includeObject=None``): the name, type, key count and age of a
#: Secret, and nothing of its content. Not PartialObjectMetadata: the metadata of a Secret created with
#: ``kubectl apply`` carries its whole data in the last-applied-configuration annotation.
EXISTENCE_ONLY = "application/json;as=Table;g=meta.k8s.io;v=v1"
USER_AGENT = "falachefe-operator"


class ApiError(Exception):
    """The API server said no; ``message`` is its own explanation (it names the field)."""

    def __init__(self, status: int, reason: str, message: str, method: str, path: str) -> None:
        super().__init__(f"{method} {path}: {status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


def load_configuration(kubeconfig: str | None = None) -> k8s.Configuration:
    """The operator's identity: an explicit kubeconfig, $KUBECONFIG, the pod's service account, ~/.kube/config."""
    configuration = k8s.Configuration()
    if kubeconfig or os.environ.get("KUBECONFIG"):
        k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        k8s_config.load_incluster_config(client_configuration=configuration)
    else:
        k8s_config.load_kube_config(client_configuration=configuration)
    return configuration


def in_cluster_namespace() -> str | None:
    """The namespace of the pod this process runs in, if it runs in one."""
    path = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    return path.read_text().strip() if path.is_file() else None


@dataclass(frozen=True)
class Applied:
    """The object as the API server stored it, and whether this apply created it."""

    body: dict[str, Any]
    created: bool


class KubeApi:
    """Async requests to one API server with one identity.

    ``max_in_flight`` bounds concurrent requests, so a burst of reconciles
    (an operator restart over hundreds of resources) queues here instead of
    hitting the API server's priority-and-fairness limits.
    """

    def __init__(
        self,
        configuration: k8s.Configuration,
        *,
        timeout_seconds: float = 30.0,
        max_in_flight: int = 32,
    ) -> None:
        self._configuration = configuration
        self._server = configuration.host.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds, sock_connect=min(timeout_seconds, 10.0))
        self._ssl = _ssl_context(configuration)
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._max_in_flight = max_in_flight
        self._session: aiohttp.ClientSession | None = None

    @property
    def configuration(self) -> k8s.Configuration:
        return self._configuration

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=self._max_in_flight),
                timeout=self._timeout,
                headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        accept: str = "application/json",
    ) -> tuple[int, dict[str, Any]]:
        """One request; a non-2xx answer raises ``ApiError`` with the server's message."""
        headers = {"Content-Type": content_type, "Accept": accept}
        headers.update(_auth_headers(self._configuration))
        data = None if body is None else json.dumps(body, separators=(",", ":"))
        async with self._in_flight:
            with metrics.API_SECONDS.labels(method).time():
                async with self._client().request(
                    method, self._server + path, params=params, data=data, headers=headers
                ) as response:
                    text = await response.text()
                    metrics.API_REQUESTS.labels(method, str(response.status)).inc()
        try:
            payload = json.loads(text) if text else {}
        except json.JSONDecodeError:
            payload = {}  # an error page from something in front of the API server
        if response.status >= 400:
            raise ApiError(
                response.status,
                str(payload.get("reason") or response.reason),
                str(payload.get("message") or text[:500]),
                method,
                path,
            )
        return response.status, payload

    async def get(self, path: str) -> dict[str, Any] | None:
        """The object at ``path``, or None if there is none."""
        try:
            return (await self.request("GET", path))[1]
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def exists(self, path: str) -> bool:
        """Whether there is an object at ``path``, without receiving anything of its content."""
        try:
            await self.request("GET", path, params={"includeObject": "None"}, accept=EXISTENCE_ONLY)
        except ApiError as error:
            if error.status == 404:
                return False
            raise
        return True

    async def apply(self, path: str, manifest: Mapping[str, Any], *, manager: str) -> Applied:
        """Server-side apply ``manifest`` as ``manager``, taking over fields others changed (force)."""
        status, body = await self.request(
            "PATCH",
            path,
            params={"fieldManager": manager, "force": "true"},
            body=manifest,
            content_type=APPLY_PATCH,
        )
        return Applied(body=body, created=status == 201)

    async def merge_patch(self, path: str, patch: Mapping[str, Any], *, manager: str) -> dict[str, Any]:
        return (
            await self.request("PATCH", path, params={"fieldManager": manager}, body=patch, content_type=MERGE_PATCH)
        )[1]

    async def delete(self, path: str) -> bool:
        """Delete the object at ``path`` (dependents in the background); False if it was already gone."""
        try:
            await self.request("DELETE", path, body={"propagationPolicy": "Background"})
        except ApiError as error:
            if error.status == 404:
                return False
            raise
        return True


def _auth_headers(configuration: k8s.Configuration) -> dict[str, str]:
    # auth_settings() runs the loaders' refresh hook: rotated tokens are re-read here.
    settings = configuration.auth_settings().get("BearerToken")
    if settings and settings.get("value"):
        return {"Authorization": str(settings["value"])}
    return {}


def _ssl_context(configuration: k8s.Configuration) -> ssl.SSLContext | bool:
    if not configuration.verify_ssl:
        return False
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file)
    return context
