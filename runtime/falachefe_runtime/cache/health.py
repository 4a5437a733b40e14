"""Redis outages: stop calling a Redis that just failed, log once in a while, recover by itself.

While Redis is down every cache call goes to the loader; paying a connect
timeout on each of them first would make the outage slower than no cache.
After a failure Redis is skipped for a short, growing pause; the first call
after the pause tries again, and a success closes the breaker.
"""

from __future__ import annotations

import logging
import time

from .metrics import ERRORS, REDIS_UP

log = logging.getLogger("falachefe_runtime.cache")


class RedisHealth:
    def __init__(
        self,
        *,
        first_pause_s: float = 0.25,
        max_pause_s: float = 5.0,
        log_interval_s: float = 30.0,
    ) -> None:
        self.first_pause_s = first_pause_s
        self.max_pause_s = max_pause_s
        self.log_interval_s = log_interval_s
        self._pause_s = 0.0
        self._skip_until = 0.0
        self._down_since: float | None = None
        self._next_log = 0.0
        self._failures_since_log = 0
        REDIS_UP.set(1)

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def available(self) -> bool:
        """Whether to try Redis now (always, unless it failed within the current pause)."""
        return time.monotonic() >= self._skip_until

    def failed(self, operation: str, error: BaseException) -> None:
        ERRORS.labels(operation).inc()
        REDIS_UP.set(0)
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
        self._pause_s = min(self.max_pause_s, max(self.first_pause_s, self._pause_s * 2))
        self._skip_until = now + self._pause_s
        self._failures_since_log += 1
        if now >= self._next_log:
            log.warning(
                "cache Redis unavailable (%s during %s); serving from the loader (%d failures since last report)",
                type(error).__name__,
                operation,
                self._failures_since_log,
                extra={
                    "event": "cache_redis_down",
                    "operation": operation,
                    "error": type(error).__name__,
                    "failures": self._failures_since_log,
                },
            )
            self._next_log = now + self.log_interval_s
            self._failures_since_log = 0

    def succeeded(self) -> None:
        if self._down_since is None:
            return
        outage_s = time.monotonic() - self._down_since
        self._down_since = None
        self._pause_s = 0.0
        self._skip_until = 0.0
        self._next_log = 0.0
        self._failures_since_log = 0
        REDIS_UP.set(1)
        log.warning(
            "cache Redis is back after %.1fs",
            outage_s,
            extra={"event": "cache_redis_up", "outage_s": round(outage_s, 3)},
        )
