"""What the API server says it served: ``apiserver_request_total``, read from its own ``/metrics``.

No client is trusted to count itself: a test or benchmark of the
operator's cost reads the API server's counters before and after, and
takes the difference. The counters have no user label, so a caller
attributes them by resource and verb (and keeps other writers out of the
window, or subtracts them).
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from .kube import ControlPlane, kubectl

#: Long-running requests: a watch is counted when it ends, not per event it delivers.
STREAMING_VERBS = frozenset({"WATCH", "CONNECT"})


def request_counts(kube: ControlPlane) -> dict[tuple[str, str, str], float]:
    """Finished requests by ``(verb, group/resource, subresource)``, every verb included."""
    text = kubectl(kube.kubeconfig, "get", "--raw", "/metrics", timeout=60).stdout
    counts: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "apiserver_request":
            continue
        for point in family.samples:
            if not point.name.endswith("_total"):
                continue
            labels = point.labels
            key = (
                labels.get("verb", ""),
                f"{labels.get('group', '')}/{labels.get('resource', '')}",
                labels.get("subresource", ""),
            )
            counts[key] = counts.get(key, 0.0) + point.value
    return counts


def requests_by_resource(kube: ControlPlane) -> dict[str, float]:
    """The API server's count of finished non-watch requests, by ``group/resource``."""
    counts: dict[str, float] = {}
    for (verb, resource, _), value in request_counts(kube).items():
        if verb not in STREAMING_VERBS:
            counts[resource] = counts.get(resource, 0.0) + value
    return counts


def difference(
    after: dict[tuple[str, str, str], float], before: dict[tuple[str, str, str], float]
) -> dict[tuple[str, str, str], float]:
    """``after - before``, only the keys that grew."""
    return {key: value - before.get(key, 0.0) for key, value in after.items() if value > before.get(key, 0.0)}
