"""Kopf wiring: which watches feed the fleet, and the settings Kopf runs with.

The handlers are one line each: a watch event goes to the ``Fleet``, whose
per-resource controllers do the work. They are coroutines so that they run
on the event loop (Kopf runs plain functions in a thread pool). They are ``on.event`` handlers, which
Kopf keeps no state for: no finalizer, no progress annotation, nothing
written to the ``Falachefe`` except by its controller (its status).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, cast

import kopf

from . import naming
from .builders import OWNED_KINDS
from .controller import Fleet
from .kubeapi import KubeApi
from .podindex import PodIndex
from .relist import Relists
from .resource import GROUP, PLURAL, VERSION


def build_registry(
    fleet: Fleet, api: KubeApi, stop_flag: asyncio.Event, pods: PodIndex | None = None, *, clusterwide: bool = False
) -> kopf.OperatorRegistry:
    """The handlers; ``stop_flag`` is the one given to ``kopf.operator`` (set on cleanup, see below).

    Kopf sends its requests (the watches) over ``api``'s session: one
    identity, one connection pool and one set of request metrics for the
    whole operator.

    ``pods``: the index the autoscaler reads worker pods from; given, the
    operator watches its pods (by the managed-by label) to keep it.

    Every event passes ``Relists`` first: an object deleted while a watch
    was down, which the relist that follows never mentions, reaches its
    handler as the DELETED event it missed (``relist``).
    """
    registry = kopf.OperatorRegistry()
    relists = Relists(api.named_exists, clusterwide=clusterwide)

    @kopf.on.login(registry=registry)
    async def login(**_: Any) -> kopf.AiohttpSession:
        return kopf.AiohttpSession(server=api.server, aiohttp_session=api.session())

    def falachefe_gone(body: dict[str, Any]) -> None:
        fleet.resource_event("DELETED", body)

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def falachefe_changed(event: kopf.RawEvent, **_: Any) -> None:
        body = cast(dict[str, Any], event["object"])
        relists.observe(PLURAL, _event_type(event), body, falachefe_gone)
        fleet.resource_event(_event_type(event), body)

    def owned_gone(body: dict[str, Any]) -> None:
        fleet.owned_event("DELETED", body)

    def owned_handler(plural: str) -> Callable[..., Awaitable[None]]:
        async def owned_changed(event: kopf.RawEvent, **_: Any) -> None:
            body = cast(dict[str, Any], event["object"])
            relists.observe(plural, _event_type(event), body, owned_gone)
            fleet.owned_event(_event_type(event), body)

        return owned_changed

    for api_version, _, plural in OWNED_KINDS:
        group, _, version = api_version.rpartition("/")
        kopf.on.event(group=group, version=version, plural=plural, registry=registry, id=f"owned-{plural}")(
            owned_handler(plural)
        )

    if pods is not None:
        index = pods

        def pod_gone(body: dict[str, Any]) -> None:
            index.observe("DELETED", body)

        @kopf.on.event("", "v1", "pods", registry=registry, id="worker-pods")
        async def pod_changed(event: kopf.RawEvent, **_: Any) -> None:
            body = cast(dict[str, Any], event["object"])
            relists.observe("pods", _event_type(event), body, pod_gone)
            index.observe(_event_type(event), body)

    @kopf.on.cleanup(registry=registry)
    async def stop_controllers(**_: Any) -> None:
        # On a signal, Kopf stops by itself but still waits on its stop flag,
        # and would count that wait as a hung task for 5 s: release it.
        stop_flag.set()
        await relists.aclose()
        await fleet.stop()

    return registry


def _event_type(event: kopf.RawEvent) -> str | None:
    # Kopf reports the initial listing with type None; it means "exists".
    return cast(str | None, event.get("type"))


class NoDiffBase(kopf.DiffBaseStorage):
    """No diff-base: Kopf builds one for every watch event, a deep copy of the object, used only by change handlers.

    This operator registers ``on.event`` handlers alone (``build_registry``),
    which get the raw event and no diff; Kopf's own storage would deep-copy
    every Deployment, pod and resource it is told about (a profile of an
    operator at 1,000 resources had 23% of its samples there), only to
    compare it with a last-handled state that is never stored.
    """

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        return cast(kopf.BodyEssence, {})

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def operator_settings(*, identity: str, clusterwide: bool, watch_timeout: int = 300) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # A watch that silently stops delivering is Kopf's best-known failure in
    # production: bound each stream on both sides and reconnect.
    settings.watching.server_timeout = watch_timeout
    settings.watching.client_timeout = watch_timeout + 30
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10
    # Only the objects this operator manages, filtered by the API server.
    for api_version, _, plural in OWNED_KINDS:
        group, _, version = api_version.rpartition("/")
        settings.watching.label_selectors[(group, version, plural)] = naming.MANAGED_SELECTOR
    settings.watching.label_selectors[("", "v1", "pods")] = naming.MANAGED_SELECTOR
    # Kopf keeps no state here (on.event handlers only); if it ever did, it
    # would go to annotations, never to the status this operator owns.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = NoDiffBase()
    # Leader election is ours (a Lease), not Kopf's priority-based peering.
    settings.peering.standalone = True
    # Cluster-wide, Kopf watches CRDs, so the operator also serves a CRD
    # installed after it started. Confined to listed namespaces it would
    # also list namespaces, which a namespaced install does not grant: there
    # the CRD must exist first (the chart installs it before the operator).
    settings.scanning.disabled = not clusterwide
    settings.posting.reporting_component = naming.FIELD_MANAGER
    settings.posting.reporting_instance = identity
    settings.posting.event_name_prefix = "falachefe-"
    settings.posting.level = logging.INFO
    return settings
