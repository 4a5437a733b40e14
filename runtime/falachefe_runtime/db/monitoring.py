"""The one place every statement goes through: timed, counted, and logged when slow.

The seed wrote a row per query into a table, which doubles the database's
write load to watch it. Here a statement costs a histogram observation; a
slow one adds a counter increment and a log line that names the statement
(its label and its normalised text) and never its parameter values.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .fingerprint import loggable, query_label, session_state
from .metrics import QUERY_DURATION, QUERY_ERRORS, SLOW_QUERIES

T = TypeVar("T")

log = logging.getLogger("falachefe_runtime.db")


class QueryMonitor:
    """Times statements sent through one pool (``role`` is ``primary`` or ``replica``)."""

    def __init__(self, role: str, slow_threshold_s: float) -> None:
        self.role = role
        self.slow_threshold_s = slow_threshold_s
        # ``Histogram.labels()`` costs more than the observation itself; a
        # process runs a bounded set of statements, so keep each one's child.
        self._durations: dict[str, Any] = {}

    async def run(self, sql: str, name: str | None, param_count: int, call: Callable[[], Awaitable[T]]) -> T:
        label = query_label(sql, name)
        if (state := session_state(sql)) is not None:
            raise ValueError(
                f"{label}: {state} outlives its transaction, and the pool's connections are not reset between "
                "checkouts; use the transaction-scoped form (SET LOCAL, pg_advisory_xact_lock, ...)"
            )
        started = time.perf_counter()
        try:
            return await call()
        except Exception as error:
            QUERY_ERRORS.labels(self.role, label, type(error).__name__).inc()
            raise
        finally:
            elapsed = time.perf_counter() - started
            duration = self._durations.get(label)
            if duration is None:
                duration = self._durations[label] = QUERY_DURATION.labels(self.role, label)
            duration.observe(elapsed)
            if elapsed >= self.slow_threshold_s:
                SLOW_QUERIES.labels(self.role, label).inc()
                log.warning(
                    "slow query: %s took %.3fs on the %s pool",
                    label,
                    elapsed,
                    self.role,
                    extra={
                        "event": "slow_query",
                        "query_name": label,
                        "db_pool": self.role,
                        "duration_s": round(elapsed, 6),
                        "threshold_s": self.slow_threshold_s,
                        "sql": loggable(sql),
                        "param_count": param_count,
                    },
                )
