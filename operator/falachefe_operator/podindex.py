"""The operator's worker pods, as its pod watch last showed them.

The autoscaler needs, for CPU utilisation, each pool's pods: their CPU
requests, Ready condition and start time. Listing them on every poll costs
one request per pool per polling interval (at 1,000 resources polling every
5 s, 400 requests a second); a watch by the managed-by label costs one
stream, and the API server sends only changes. This index is what that
watch feeds: a slim copy of each pod (not its managedFields, env or
volumes), enough for ``scaling.cpu.utilization`` and nothing more.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any


@functools.lru_cache(maxsize=16384)
def parse_selector(selector: str) -> Mapping[str, str]:
    """An equality-based label selector (``a=b,c=d``, as ``naming.selector_string`` writes them).

    Remembered (read-only): every pool's every poll selects by its own selector.
    """
    pairs = {}
    for term in filter(None, (part.strip() for part in selector.split(","))):
        key, sep, value = term.partition("=")
        if not sep or key.endswith("!"):
            raise ValueError(f"only equality selectors are indexed, not {term!r}")
        pairs[key.strip()] = value.lstrip("=").strip()
    return MappingProxyType(pairs)


def slim_pod(body: Mapping[str, Any]) -> dict[str, Any]:
    """What CPU utilisation reads of a pod: labels, phase, start, Ready, CPU requests."""
    metadata = body.get("metadata") or {}
    status = body.get("status") or {}
    spec = body.get("spec") or {}
    return {
        "metadata": {
            "name": metadata.get("name"),
            "labels": dict(metadata.get("labels") or {}),
            **({"deletionTimestamp": metadata["deletionTimestamp"]} if metadata.get("deletionTimestamp") else {}),
        },
        "status": {
            "phase": status.get("phase"),
            "startTime": status.get("startTime"),
            "conditions": [c for c in status.get("conditions") or [] if c.get("type") == "Ready"],
        },
        "spec": {
            "containers": [
                {
                    "name": container.get("name"),
                    "resources": {"requests": dict((container.get("resources") or {}).get("requests") or {})},
                }
                for container in spec.get("containers") or []
            ]
        },
    }


class PodIndex:
    """Pods by namespace and name; ``observe`` is fed by the watch, ``select`` read by the autoscaler.

    Also by label: every pool's poll selects its few pods, and scanning
    every pod of the namespace for each would cost pools x pods per interval.
    """

    def __init__(self) -> None:
        self._pods: dict[str, dict[str, dict[str, Any]]] = {}
        #: Names of the pods carrying each label, by (namespace, key, value).
        self._by_label: dict[tuple[str, str, str], set[str]] = {}
        #: Per namespace, a number that changes whenever any of its pods does (``version``).
        self._versions: dict[str, int] = {}

    def observe(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        metadata = body.get("metadata") or {}
        namespace, name = metadata.get("namespace"), metadata.get("name")
        if not namespace or not name:
            return
        self._versions[namespace] = self._versions.get(namespace, 0) + 1
        pods = self._pods.setdefault(namespace, {})
        previous = pods.pop(name, None)
        if previous is not None:
            self._unlabel(namespace, name, previous["metadata"]["labels"])
        if event_type == "DELETED":
            if not pods:
                del self._pods[namespace]
            return
        pod = pods[name] = slim_pod(body)
        for key, value in pod["metadata"]["labels"].items():
            self._by_label.setdefault((namespace, key, value), set()).add(name)

    def _unlabel(self, namespace: str, name: str, labels: Mapping[str, str]) -> None:
        for key, value in labels.items():
            names = self._by_label.get((namespace, key, value))
            if names is not None:
                names.discard(name)
                if not names:
                    del self._by_label[(namespace, key, value)]

    def version(self, namespace: str) -> int:
        """Changes whenever a pod of ``namespace`` is seen to change: what was selected before may be stale."""
        return self._versions.get(namespace, 0)

    def select(self, namespace: str, selector: Mapping[str, str]) -> list[dict[str, Any]]:
        """The pods in ``namespace`` whose labels hold every pair of ``selector``."""
        pods = self._pods.get(namespace, {})
        items = selector.items()
        if not items:
            return list(pods.values())
        fewest = min((self._by_label.get((namespace, key, value), set()) for key, value in items), key=len)
        return [pods[name] for name in sorted(fewest) if items <= pods[name]["metadata"]["labels"].items()]
