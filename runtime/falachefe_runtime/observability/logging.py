"""One log schema for both programs, the workers and the operator: a line per record.

Every line has the same fields, in JSON (the default: what log pipelines
parse) or as text for a terminal (``key=value`` after the message, so
nothing is lost either way):

- ``time``: RFC 3339 in UTC with its zone, to the millisecond
  (``2025-01-02T03:04:05.678Z``);
- ``level``: ``debug``, ``info``, ``warning``, ``error`` or ``critical``;
- ``logger`` and ``message``; the message is a fixed sentence, and what
  it is about goes in fields;
- the context: ``namespace`` and ``name`` (the ``Falachefe``), ``pool``,
  ``queue``, ``job_id``..., from ``log_context`` (a ``contextvars``
  value, so concurrent jobs or resources in one process keep their own),
  then whatever the call passed as ``extra``;
- ``exception``: the traceback, when one was logged.

Kopf's records carry the object they are about as ``k8s_ref``; it is
mapped onto ``namespace``, ``name`` and ``kind``, so the framework's lines
fit the same schema as ours.

Personal data never goes out whole: ``mask_phone`` keeps a phone number's
country code and last digits, enough to correlate with a support ticket,
not enough to identify someone. Secrets and one-time codes are never passed
to a logger at all, and any URL or DSN a library's message quotes has its
password masked (``falachefe_runtime.redact``).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Literal

from falachefe_runtime.redact import redact_text

LogFormat = Literal["json", "text"]

_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "falachefe_log_context", default=MappingProxyType({})
)

#: Attributes every LogRecord has: the schema's own fields come from these, the rest are ``extra``.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
#: What Kopf attaches to its records besides the object reference: not for a log line.
_KOPF_INTERNALS = frozenset({"settings", "k8s_skip", "k8s_ref"})
#: Python's level names, as the schema spells them.
_LEVELS = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Attach ``fields`` (namespace, name, pool, job_id, ...) to every record logged inside the block.

    Tasks created inside the block inherit the fields (asyncio copies the
    context into each new task); the block's end does not take them back.
    """
    token = _context.set({**_context.get(), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def rfc3339(created: float) -> str:
    """A record's time: UTC, milliseconds, ``Z``."""
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The schema's fields of ``record``, in order: time, level, logger, message, context, extras, exception."""
    fields: dict[str, Any] = {
        "time": rfc3339(record.created),
        "level": _LEVELS.get(record.levelno, record.levelname.lower()),
        "logger": record.name,
        "message": record.getMessage(),
    }
    reference = getattr(record, "k8s_ref", None)
    if isinstance(reference, Mapping):
        fields.update({key: reference[key] for key in ("namespace", "name", "kind") if reference.get(key)})
    # A context field without a value (a worker run outside a Falachefe) is left out, not written as null.
    fields.update({key: value for key, value in _context.get().items() if value is not None})
    for key, value in vars(record).items():
        if key not in _RECORD_ATTRIBUTES and key not in _KOPF_INTERNALS and not key.startswith("_"):
            fields[key] = value
    if record.exc_info:
        fields["exception"] = logging.Formatter().formatException(record.exc_info)
    elif record.stack_info:
        fields["exception"] = record.stack_info
    # A library's message or traceback may quote a connection string: its password never reaches a line.
    return {key: redact_text(value) if isinstance(value, str) else value for key, value in fields.items()}


class JsonFormatter(logging.Formatter):
    """One JSON object per line; values JSON cannot hold are written as their ``str``."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(record_fields(record), default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time level logger message key=value ...``, the traceback on the lines after."""

    def format(self, record: logging.LogRecord) -> str:
        fields = record_fields(record)
        exception = fields.pop("exception", None)
        head = [fields.pop(key) for key in ("time", "level", "logger", "message")]
        line = f"{head[0]} {head[1].upper():<8} {head[2]}: {head[3]}"
        pairs = " ".join(f"{key}={_text_value(value)}" for key, value in fields.items())
        line = f"{line} {pairs}" if pairs else line
        return f"{line}\n{exception}" if exception else line


def _text_value(value: Any) -> str:
    """logfmt: bare when it can be, quoted when it holds a space, a quote or an ``=``; lists comma-joined."""
    if isinstance(value, list | tuple) and all(isinstance(item, str | int | float) for item in value):
        text = ",".join(str(item) for item in value)
    else:
        text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    if text and not any(char in text for char in ' "=\n\t'):
        return text
    return json.dumps(text, ensure_ascii=False)


def formatter(fmt: LogFormat) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else TextFormatter()


def configure_logging(level: str = "INFO", fmt: LogFormat = "json") -> None:
    """Send the root logger to stderr in the schema; every library's records go through it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    # Libraries that log request bodies or URLs at INFO/DEBUG (prompts, hosts with credentials).
    for noisy in ("httpx", "httpcore", "openai", "LiteLLM", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def mask_phone(phone: str) -> str:
    """``+5511987654321`` -> ``+55*******4321``: loggable, not identifying."""
    if len(phone) <= 7:
        return "*" * len(phone)
    return phone[:3] + "*" * (len(phone) - 7) + phone[-4:]
