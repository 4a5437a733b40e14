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

from collections.abc import Mapping
from typing import Any


def parse_selector(selector: str) -> dict[str, str]:
    """An equality-based label selector (``a=b,c=d``, as ``naming.selector_string`` writes them)."""
    pairs = {}
    for term in filter(None, (part.strip() for part in selector.split(","))):
        key, sep, value = term.partition("=")
        if not sep or key.endswith("!"):
            raise ValueError(f"only equality selectors are indexed, not {term!r}")
        pairs[key.strip()] = value.lstrip("=").strip()
    return pairs


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
    """Pods by namespace and name; ``observe`` is fed by the watch, ``select`` read by the autoscaler."""

    def __init__(self) -> None:
        self._pods: dict[str, dict[str, dict[str, Any]]] = {}

    def observe(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        metadata = body.get("metadata") or {}
        namespace, name = metadata.get("namespace"), metadata.get("name")
        if not namespace or not name:
            return
        if event_type == "DELETED":
            pods = self._pods.get(namespace)
            if pods is not None:
                pods.pop(name, None)
                if not pods:
                    del self._pods[namespace]
            return
        self._pods.setdefault(namespace, {})[name] = slim_pod(body)

    def select(self, namespace: str, selector: Mapping[str, str]) -> list[dict[str, Any]]:
        """The pods in ``namespace`` whose labels hold every pair of ``selector``."""
        items = selector.items()
        return [pod for pod in self._pods.get(namespace, {}).values() if items <= pod["metadata"]["labels"].items()]
