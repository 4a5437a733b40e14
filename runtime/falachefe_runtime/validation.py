"""Validation errors told without the values that failed.

Payloads carry phone numbers and message text, configuration carries DSNs
and keys: a message that names the field and what is wrong with it is
enough to fix the input, and safe to log, store in a failed job or print.
"""

from __future__ import annotations

from pydantic import ValidationError


def describe_validation_error(error: ValidationError, root: str | None = None) -> str:
    """``messageData.phoneNumber: String should match pattern ...; ...``; with a ``root``, ``data.messageData...``."""
    problems = []
    for item in error.errors(include_url=False, include_input=False, include_context=False):
        where = ".".join(str(part) for part in ([root] if root else []) + list(item["loc"])) or "(top level)"
        problems.append(f"{where}: {item['msg']}")
    return "; ".join(problems)
