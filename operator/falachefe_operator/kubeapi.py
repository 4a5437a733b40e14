"""A small asyncio client for the Kubernetes API: what the reconciler needs, nothing more.

The official ``kubernetes`` client is synchronous; calling it from Kopf's
event loop would block every other resource while one request waits. This
client speaks HTTP with aiohttp on the same loop, returns plain dicts (no
model classes to build and throw away), and does server-side apply the way
the API documents it: a PATCH with ``application/apply-patch+yaml`` and a
field manager.

Credentials come from ``credentials`` (the pod's service account or a
kubeconfig), asked for the headers per request so that a rotated
service-account token is picked up.

One client for the whole operator: the reconcilers and the autoscaler share
one ``KubeApi``, and Kopf runs its watches over that ``KubeApi``'s session
(``kopf.AiohttpSession``); the leader elector has a ``KubeApi`` of its own
(its renewals must not wait behind a burst of reconciles, nor share a hung
connection). Every request any of them sends passes one client middleware
that authorises it and counts it by verb, group, resource and subresource,
as the API server's own ``apiserver_request_total`` does, so the two can be
compared.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp.client_middlewares import ClientHandlerType

from . import metrics
from .credentials import Credentials

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
        credentials: Credentials,
        *,
        timeout_seconds: float = 30.0,
        max_in_flight: int = 32,
    ) -> None:
        self._credentials = credentials
        self._server: str = credentials.server.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds, sock_connect=min(timeout_seconds, 10.0))
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._session: aiohttp.ClientSession | None = None

    @property
    def credentials(self) -> Credentials:
        return self._credentials

    @property
    def server(self) -> str:
        return self._server

    def session(self) -> aiohttp.ClientSession:
        """The open session (a new one if the last was closed, as Kopf closes it on a 401 or at exit).

        Its connector has no connection limit: Kopf's watches hold one
        connection each for minutes; this client's own requests are bounded
        by ``max_in_flight`` instead.
        """
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._credentials.ssl, limit=0),
                timeout=self._timeout,
                headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
                middlewares=(self._authorise_and_count,),
            )
        return self._session

    async def _authorise_and_count(
        self, request: aiohttp.ClientRequest, send: ClientHandlerType
    ) -> aiohttp.ClientResponse:
        if "Authorization" not in request.headers:
            request.headers.update(self._credentials.headers())
        target = describe_request(request.method, request.url.path, request.url.query)
        started = time.perf_counter()
        try:
            response = await send(request)
        except Exception:  # not a cancellation: the operator stopping is no failed request
            metrics.API_REQUESTS.labels(*target, "error").inc()
            raise
        metrics.API_SECONDS.labels(*target[:3]).observe(time.perf_counter() - started)
        metrics.API_REQUESTS.labels(*target, str(response.status)).inc()
        return response

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
        data = None if body is None else json.dumps(body, separators=(",", ":"))
        async with (
            self._in_flight,
            self.session().request(method, self._server + path, params=params, data=data, headers=headers) as response,
        ):
            raw = await response.read()
        try:
            # orjson: the largest answers (a cluster's PodMetricsList) are parsed several times a minute.
            payload = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            payload = {}  # an error page from something in front of the API server
        if response.status >= 400:
            raise ApiError(
                response.status,
                str(payload.get("reason") or response.reason),
                str(payload.get("message") or raw[:500].decode(errors="replace")),
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

    async def named_exists(self, collection: str, name: str) -> bool:
        """Whether ``collection`` holds an object named ``name``: a list filtered to that name, as a Table.

        The list verb, not get: it is what a watcher of the kind is granted already.
        """
        _, table = await self.request(
            "GET",
            collection,
            params={"fieldSelector": f"metadata.name={name}", "includeObject": "None"},
            accept=EXISTENCE_ONLY,
        )
        return bool(table.get("rows"))

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


def describe_request(method: str, path: str, query: Mapping[str, str]) -> tuple[str, str, str, str]:
    """``(verb, group, resource, subresource)`` of a request, named as the API server's metrics name them.

    ``GET`` of a collection is ``LIST``, of one with ``watch`` set ``WATCH``;
    ``DELETE`` of a collection is ``DELETECOLLECTION``. Discovery and other
    paths outside a resource have an empty resource.
    """
    parts = [part for part in path.split("/") if part]
    if parts[:1] == ["api"]:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"]:
        group, rest = (parts[1] if len(parts) > 1 else ""), parts[3:]
    else:
        group, rest = "", []
    if len(rest) > 2 and rest[0] == "namespaces":
        rest = rest[2:]  # a namespaced resource: skip namespaces/<name>
    resource = rest[0] if rest else ""
    named = len(rest) > 1
    subresource = rest[2] if len(rest) > 2 else ""
    verb = method.upper()
    if not resource:
        pass  # discovery, /version, /healthz: the method is the verb
    elif verb == "GET":
        if query.get("watch") in {"true", "1"}:
            verb = "WATCH"
        elif not named:
            verb = "LIST"
    elif verb == "POST":
        verb = "CREATE"
    elif verb == "PUT":
        verb = "UPDATE"
    elif verb == "DELETE" and not named:
        verb = "DELETECOLLECTION"
    return verb, group, resource, subresource
