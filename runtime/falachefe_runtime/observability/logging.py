"""Structured logs: one JSON object per line, with the job being worked on.

Every record carries the job id, queue and job name of the job the current
asyncio task is processing (a ``contextvars`` value, so concurrent jobs in
one process do not mix up their ids). Personal data never goes out whole:
``mask_phone`` keeps a phone number's country code and last digits, enough
to correlate with a support ticket, not enough to identify someone. Secrets
and one-time codes are never passed to a logger at all.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from collections.abc import Iterator
from typing import Any

from pythonjsonlogger.json import JsonFormatter

_job_fields: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "falachefe_job_fields", default=None
)


@contextlib.contextmanager
def job_context(**fields: Any) -> Iterator[None]:
    """Attach ``fields`` (job_id, queue, ...) to every record logged inside the block."""
    token = _job_fields.set({**(_job_fields.get() or {}), **fields})
    try:
        yield
    finally:
        _job_fields.reset(token)


class _JobFieldsFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_job_fields.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def mask_phone(phone: str) -> str:
    """``+5511987654321`` -> ``+55*******4321``: loggable, not identifying."""
    if len(phone) <= 7:
        return "*" * len(phone)
    return phone[:3] + "*" * (len(phone) - 7) + phone[-4:]


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Send the root logger to stderr, as JSON (production) or text (a terminal)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_JobFieldsFilter())
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"levelname": "level", "asctime": "time", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    # Libraries that log request bodies or URLs at INFO/DEBUG (prompts, hosts with credentials).
    for noisy in ("httpx", "httpcore", "openai", "LiteLLM", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
