"""Status conditions, the Kubernetes API conventions' way (Kopf has no helper for them).

A condition is keyed by ``type``; ``status`` is True, False or Unknown;
``reason`` is one CamelCase word a machine can match on; ``message`` is for
people. ``lastTransitionTime`` moves only when ``status`` changes, so "since
when has it not been Ready" survives any number of reason or message updates.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from falachefe_runtime.redact import redact_text

ConditionStatus = Literal["True", "False", "Unknown"]

READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
SCALING_ACTIVE = "ScalingActive"


@dataclass(frozen=True)
class Condition:
    """What a condition should say now; the transition time is worked out by ``merge``."""

    type: str
    status: ConditionStatus
    reason: str
    message: str


def rfc3339(moment: datetime) -> str:
    """Kubernetes' timestamp format: UTC, whole seconds, a ``Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge(
    previous: Sequence[Mapping[str, Any]],
    current: Iterable[Condition],
    *,
    generation: int,
    now: datetime,
) -> list[dict[str, Any]]:
    """The condition list to write: ``current``, keeping transition times whose status did not change.

    Conditions of other types in ``previous`` are dropped: this operator is
    the only writer of the list, so whatever it does not say is stale.
    """
    before = {str(entry.get("type")): entry for entry in previous}
    merged = []
    for condition in current:
        old = before.get(condition.type)
        unchanged = old is not None and old.get("status") == condition.status and old.get("lastTransitionTime")
        merged.append(
            {
                "type": condition.type,
                "status": condition.status,
                "reason": condition.reason,
                "message": redact_text(condition.message),
                "observedGeneration": generation,
                "lastTransitionTime": old["lastTransitionTime"] if old is not None and unchanged else rfc3339(now),
            }
        )
    return merged
