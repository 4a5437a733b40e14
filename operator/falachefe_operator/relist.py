"""Deletions a relist cannot show: noticed, confirmed, and passed on as the DELETED events they were.

When a watch cannot resume (the API server restarted, or the watch expired
with ``410 Gone``), Kopf lists the kind again and replays each object it
finds as an event of type None. An object deleted while the watch was down
is simply absent from that listing: Kopf sends nothing for it, so without
this module the operator would go on believing in a Deployment that is gone
(no drift repair until the next resync), a ``Falachefe`` that was deleted
(its controller polling on), or a worker pod that no longer exists (counted
by the autoscaler).

``Relists`` remembers, per watch scope, a small tombstone of each object it
was told about and the listing it was last seen in. A listing is a burst of
type-None events; once none has come for ``quiet_seconds`` it is over, and
every remembered object it did not contain is a candidate. A candidate
costs one existence check (a Table of one row, no content); only a 404
makes it a deletion, so a listing judged over too early (a slow, chunked
relist on a busy machine) loses nothing and deletes nothing. A relist in
which nothing vanished costs no request at all. The check is a list of the
kind filtered to the one name (``KubeApi.named_exists``): the operator may
list every kind it watches, so it needs no permission beyond its watches.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import metrics
from .builders import ObjectRef

log = logging.getLogger(__name__)

#: (kind's plural, namespace or None for a cluster-wide watch): one Kopf watch stream.
Scope = tuple[str, str | None]
#: (the kind's collection path, the object's name) -> whether it exists now.
Exists = Callable[[str, str], Awaitable[bool]]
Gone = Callable[[dict[str, Any]], None]


def tombstone(body: Mapping[str, Any]) -> dict[str, Any]:
    """What a DELETED event's handler needs of an object: its kind, identity, owners and labels."""
    metadata = body.get("metadata") or {}
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {
            key: metadata[key]
            for key in ("name", "namespace", "uid", "labels", "ownerReferences", "resourceVersion")
            if key in metadata
        },
    }


@dataclass
class _Watch:
    epoch: int = 0
    listing: bool = False
    timer: asyncio.TimerHandle | None = None
    #: (namespace, name) -> (the listing it was last seen in, its tombstone)
    seen: dict[tuple[str, str], tuple[int, dict[str, Any]]] = field(default_factory=dict)


class Relists:
    """Turns "absent from a relist, and confirmed gone" into the DELETED event Kopf never sends."""

    def __init__(self, exists: Exists, *, clusterwide: bool, quiet_seconds: float = 2.0) -> None:
        self._exists = exists
        self._clusterwide = clusterwide
        self._quiet = quiet_seconds
        self._watches: dict[Scope, _Watch] = {}
        self._sweeps: set[asyncio.Task[None]] = set()

    def observe(self, plural: str, event_type: str | None, body: Mapping[str, Any], gone: Gone) -> None:
        """Note an event of ``plural`` before its handler runs; ``gone`` is that handler, for a vanished object."""
        metadata = body.get("metadata") or {}
        namespace, name = metadata.get("namespace"), metadata.get("name")
        if not namespace or not name:
            return
        scope: Scope = (plural, None if self._clusterwide else str(namespace))
        watch = self._watches.setdefault(scope, _Watch())
        key = (str(namespace), str(name))
        if event_type == "DELETED":
            watch.seen.pop(key, None)
            return
        if event_type is None:
            if not watch.listing:
                watch.listing = True
                watch.epoch += 1
            if watch.timer is not None:
                watch.timer.cancel()
            watch.timer = asyncio.get_running_loop().call_later(self._quiet, self._listed, scope, gone)
        watch.seen[key] = (watch.epoch, tombstone(body))

    def _listed(self, scope: Scope, gone: Gone) -> None:
        watch = self._watches[scope]
        watch.listing, watch.timer = False, None
        missing = [(key, body) for key, (epoch, body) in watch.seen.items() if epoch < watch.epoch]
        if not missing:
            return
        task = asyncio.create_task(self._confirm(scope, watch.epoch, missing, gone), name=f"relist sweep {scope}")
        self._sweeps.add(task)
        task.add_done_callback(self._sweeps.discard)

    async def _confirm(
        self, scope: Scope, epoch: int, missing: list[tuple[tuple[str, str], dict[str, Any]]], gone: Gone
    ) -> None:
        plural = scope[0]
        watch = self._watches[scope]
        for key, body in missing:
            try:
                ref = ObjectRef(str(body["apiVersion"]), str(body["kind"]), plural, *key)
                if await self._exists(ref.collection, ref.name):
                    continue
            except Exception as error:  # the next relist (or resync) tries again
                log.warning("could not check whether %s %s/%s still exists: %s", plural, *key, error)
                continue
            current = watch.seen.get(key)
            if current is None or current[0] >= epoch:
                continue  # an event about it arrived meanwhile: the watch has it again
            del watch.seen[key]
            log.info("%s %s/%s was deleted while the watch was down; handling it as deleted", plural, *key)
            metrics.RELIST_DELETIONS.labels(plural).inc()
            gone(body)

    async def aclose(self) -> None:
        for watch in self._watches.values():
            if watch.timer is not None:
                watch.timer.cancel()
        for task in list(self._sweeps):
            task.cancel()
        await asyncio.gather(*self._sweeps, return_exceptions=True)
