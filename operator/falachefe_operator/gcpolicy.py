"""Garbage collection for a heap that is mostly long-lived.

The operator keeps what lives as long as the process (its modules, and a
body of every object it watches) and makes short-lived objects on every
poll. CPython's full collection walks the whole heap, and runs whenever the
objects promoted since the last one reach a quarter of what it found alive:
at 1,000 resources a poll's objects live until the next poll (5 s), long
enough to be promoted, and the operator made a full collection every few
seconds, each walking millions of objects that never die
(``bench/operator_scale.py`` prints the collector's share,
``falachefe_operator_gc_seconds_total``).

The policy (``install(freeze=True)``): what a full collection leaves alive
is frozen at once (``gc.freeze``: moved to a generation the collector no
longer walks), so the next full collection walks only what was made since.
A full collection has just proven every survivor reachable, so freezing
them costs no walk of its own. Objects freed by reference counting are
freed as before, frozen or not, and cyclic garbage among unfrozen objects is
found as before. Cyclic garbage among frozen objects (an object alive at a
freeze that later dies in a reference cycle) waits for ``keep_frozen``'s
periodic full walk (hourly by default), which unfreezes, collects and
freezes again.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

from prometheus_client import Counter, Gauge

log = logging.getLogger("falachefe.operator.gc")

GC_SECONDS = Counter(
    "falachefe_operator_gc_seconds_total",
    "Time the process spent in the garbage collector, by generation (2: full collections).",
    ("generation",),
)
FROZEN = Gauge("falachefe_operator_gc_frozen_objects", "Objects frozen out of the collector's walks (gc.freeze).")

#: The periodic walk of the whole heap, frozen part included.
FULL_WALK_SECONDS = 3600.0


#: Allocations between young collections (CPython's default: 700): fewer,
#: larger young collections. At 1,000 resources the operator spent 3 to 4
#: points of a core less with it than at 700, one run each, which the
#: collector's own counter does not show (bench/README.md): no credit
#: claimed; it costs no memory.
YOUNG_THRESHOLD = 10_000


class _Collector:
    """A ``gc.callbacks`` entry: times each collection (thread CPU time); freezes a full collection's survivors."""

    def __init__(self) -> None:
        self.freeze = False
        self._started = 0.0
        self._seconds = {generation: GC_SECONDS.labels(str(generation)) for generation in (0, 1, 2)}

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.thread_time()
            return
        generation = info["generation"]
        self._seconds[generation].inc(time.thread_time() - self._started)
        if generation == 2 and self.freeze:
            gc.freeze()
            FROZEN.set(gc.get_freeze_count())


_collector = _Collector()


def install(*, freeze: bool, young_threshold: int | None = None) -> None:
    """Count the collector's time; with ``freeze``, freeze what is alive now and every full collection's survivors.

    ``young_threshold``: allocations between young collections (None: leave CPython's).
    """
    _collector.freeze = freeze
    if _collector not in gc.callbacks:
        gc.callbacks.append(_collector)
    if young_threshold is not None:
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(young_threshold, older, oldest)
    if freeze:
        gc.collect()  # the modules and start-up objects: frozen by the callback


def full_walk() -> int:
    """Unfreeze, collect over the whole heap, freeze again; the objects frozen."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()  # the callback has, when installed: moving an empty list costs nothing
    frozen = gc.get_freeze_count()
    FROZEN.set(frozen)
    return frozen


async def keep_frozen(interval: float = FULL_WALK_SECONDS) -> None:
    """A full walk every ``interval`` seconds, until cancelled."""
    while True:
        await asyncio.sleep(interval)
        started = time.perf_counter()
        frozen = full_walk()
        log.debug("heap walked", extra={"frozen_objects": frozen, "seconds": round(time.perf_counter() - started, 4)})
