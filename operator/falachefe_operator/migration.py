"""Which image the workers run while the database is migrated for a new one: pure functions.

The rule (the operator's part of "no worker runs on a schema it does not
know"): workers roll to ``spec.image`` only once that image's migration Job
succeeded. Until then they keep the image they run, the one the database
was last migrated for (``status.migration.image``); a failed migration
leaves them there. Workers check the schema at start too (they refuse one
that lacks a migration of theirs), so a mistake here stops a rollout rather
than serving on the wrong schema.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Phase = Literal["Running", "Succeeded", "Failed"]


def job_phase(job: Mapping[str, Any]) -> Phase:
    """A Job's outcome from its status conditions (``Complete`` or ``Failed``, else still running)."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("status") == "True" and condition.get("type") == "Complete":
            return "Succeeded"
        if condition.get("status") == "True" and condition.get("type") == "Failed":
            return "Failed"
    return "Running"


def job_failure(job: Mapping[str, Any]) -> str | None:
    """The Job controller's own words for a failed Job (``BackoffLimitExceeded``, ``DeadlineExceeded``)."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("status") == "True" and condition.get("type") == "Failed":
            return f"{condition.get('reason', 'Failed')}: {condition.get('message', '')}".rstrip(": ")
    return None


def worker_image(
    *, spec_image: str, enabled: bool, phase: Phase | None, migrated_image: str | None, running: Iterable[str]
) -> str | None:
    """The image the workers should run now (``None``: none yet, the first migration has not finished)."""
    if not enabled or phase == "Succeeded":
        return spec_image
    if migrated_image:
        return migrated_image
    # No record of a migration (an operator version before migrations, or
    # status lost): keep what runs rather than roll or stop it.
    return next(iter(sorted(set(running))), None)


@dataclass(frozen=True)
class Outcome:
    """What a migration container reported in its termination message."""

    schema_version: int | None
    error: str | None


def outcome(pods: Iterable[Mapping[str, Any]], container: str) -> Outcome | None:
    """The newest finished attempt's report: JSON from ``migrate --termination-log``, or the log's tail.

    The JSON's keys are the command's output's (``schema_version``,
    ``applied``, ``error``): one format for people and for the operator.
    """
    finished = []
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (status.get("state") or {}).get("terminated")
            if status.get("name") == container and terminated:
                finished.append((str(terminated.get("finishedAt") or ""), terminated))
    if not finished:
        return None
    terminated = max(finished, key=lambda item: item[0])[1]
    message = str(terminated.get("message") or "").strip()
    try:
        report = json.loads(message)
    except json.JSONDecodeError:
        report = None
    if isinstance(report, dict):
        version = report.get("schema_version")
        error = report.get("error")
        return Outcome(version if isinstance(version, int) else None, str(error) if error else None)
    if terminated.get("exitCode") == 0:
        return Outcome(None, None)
    reason = f"exit code {terminated.get('exitCode')}"
    return Outcome(None, f"{reason}: {message[-1000:]}" if message else reason)
