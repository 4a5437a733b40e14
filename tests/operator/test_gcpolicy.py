"""The operator's garbage-collection policy: survivors of a full collection are frozen, cycles still found."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from falachefe_operator import gcpolicy


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> weakref.ref[Node]:
    """A two-object reference cycle nothing else holds; a weak reference to tell when it is collected."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def gc_seconds(generation: str) -> float:
    value = REGISTRY.get_sample_value("falachefe_operator_gc_seconds_total", {"generation": generation})
    return value or 0.0


@pytest.fixture
def policy() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.set_threshold(*thresholds)
    gc.callbacks[:] = [c for c in gc.callbacks if c is not gcpolicy._collector]
    gcpolicy._collector.freeze = False
    gc.unfreeze()


def test_freezes_what_a_full_collection_leaves_alive(policy: None) -> None:
    gcpolicy.install(freeze=True)
    assert gc.get_freeze_count() > 1000  # the modules and everything alive at start-up
    kept = [Node() for _ in range(500)]
    before = gc.get_freeze_count()
    gc.collect()  # a full collection, as the collector runs one itself
    assert gc.get_freeze_count() >= before + len(kept)
    # As counted at the freeze (frozen objects freed by reference counting since leave the list).
    assert (REGISTRY.get_sample_value("falachefe_operator_gc_frozen_objects") or 0) >= before + len(kept)


def test_cycles_made_after_the_freeze_are_still_collected(policy: None) -> None:
    gcpolicy.install(freeze=True)
    garbage = cycle()
    gc.collect(0)
    assert garbage() is None


def test_a_cycle_among_frozen_objects_waits_for_the_full_walk(policy: None) -> None:
    gcpolicy.install(freeze=True)
    holder = [Node(), Node()]
    holder[0].other, holder[1].other = holder[1], holder[0]
    gc.collect()  # frozen while alive
    probe = weakref.ref(holder[0])
    holder.clear()  # now cyclic garbage, all of it frozen
    gc.collect()
    assert probe() is not None, "a frozen cycle is out of the automatic collections' reach"
    gcpolicy.full_walk()
    assert probe() is None
    assert gc.get_freeze_count() > 0


def test_sets_the_young_threshold_only_when_asked(policy: None) -> None:
    before = gc.get_threshold()
    _, older, oldest = before
    gcpolicy.install(freeze=False)
    assert gc.get_threshold() == before
    gcpolicy.install(freeze=False, young_threshold=12_345)
    assert gc.get_threshold() == (12_345, older, oldest)


def test_counts_collector_time_by_generation_even_without_freezing(policy: None) -> None:
    gcpolicy.install(freeze=False)
    assert gc.get_freeze_count() == 0
    before = gc_seconds("2")
    gc.collect()
    assert gc_seconds("2") > before
    assert gc.get_freeze_count() == 0
