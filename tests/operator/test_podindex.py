"""The pod index the autoscaler reads pools' pods from: selection by labels as the watch changes them."""

from __future__ import annotations

from typing import Any

from falachefe_operator.podindex import PodIndex


def pod(name: str, namespace: str = "shop", **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace, "labels": labels}, "status": {}, "spec": {}}


def names(found: list[dict[str, Any]]) -> list[str]:
    return sorted(p["metadata"]["name"] for p in found)


def test_select_follows_added_relabelled_and_deleted_pods() -> None:
    index = PodIndex()
    index.observe(None, pod("a-1", instance="a", pool="auth"))
    index.observe("ADDED", pod("a-2", instance="a", pool="crew"))
    index.observe("ADDED", pod("b-1", instance="b", pool="auth"))
    index.observe("ADDED", pod("x-1", namespace="other", instance="a", pool="auth"))
    assert names(index.select("shop", {"instance": "a", "pool": "auth"})) == ["a-1"]
    assert names(index.select("shop", {"pool": "auth"})) == ["a-1", "b-1"]
    assert names(index.select("shop", {})) == ["a-1", "a-2", "b-1"]
    assert index.select("shop", {"instance": "c"}) == []

    index.observe("MODIFIED", pod("a-2", instance="a", pool="auth"))  # relabelled: leaves crew
    assert names(index.select("shop", {"instance": "a", "pool": "auth"})) == ["a-1", "a-2"]
    assert index.select("shop", {"pool": "crew"}) == []

    index.observe("DELETED", pod("a-1", instance="a", pool="auth"))
    assert names(index.select("shop", {"instance": "a"})) == ["a-2"]
    index.observe("DELETED", pod("a-2"))
    index.observe("DELETED", pod("b-1"))
    assert index.select("shop", {}) == []
    assert names(index.select("other", {"pool": "auth"})) == ["x-1"]
