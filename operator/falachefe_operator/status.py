"""The ``Falachefe`` status: its shape (declared in the CRD) and how it is worked out.

``summarize`` is a pure function from what the operator observed (the spec's
generation, problems found while reconciling, each pool's Deployment as last
seen, each pool's last autoscaler report) to the whole status. The
controller writes its result, and only when it differs from what is there,
so an idle resource costs no writes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from falachefe_runtime.config import WorkerKind

from . import conditions
from .conditions import Condition
from .migration import Phase

# -- the shape -----------------------------------------------------------------


class _Status(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


Timestamp = str


class ConditionStatusModel(_Status):
    """A metav1.Condition."""

    type: str = Field(
        min_length=1, max_length=316, description="Ready, Progressing, Degraded or ScalingActive; Ready sums up."
    )
    status: Literal["True", "False", "Unknown"] = Field(description="Whether the condition holds.")
    reason: str = Field(
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="Why, in one CamelCase word (WorkersReady, SecretNotFound, MetricsUnavailable...).",
    )
    message: str = Field(max_length=32_768, description="Why, for a person: what is wrong and where.")
    observed_generation: int | None = Field(
        None, ge=0, description="The spec generation the condition was worked out from."
    )
    last_transition_time: Timestamp = Field(
        json_schema_extra={"format": "date-time"}, description="When status last changed (not reason or message)."
    )


class PoolStatus(_Status):
    """One worker pool as last seen."""

    replicas: int = Field(description="Replicas the Deployment asks for now.")
    ready_replicas: int = Field(description="Workers Ready to take jobs.")
    desired_replicas: int | None = Field(None, description="What the autoscaler last decided.")
    queue_depth: int | None = Field(None, description="Jobs waiting, prioritized, delayed or active.")
    cpu_utilization: int | None = Field(None, description="Percent of the pods' CPU requests.")
    last_scale_time: Timestamp | None = Field(
        None, json_schema_extra={"format": "date-time"}, description="When the autoscaler last resized the pool."
    )
    last_scale_reason: str | None = Field(None, max_length=1024, description="The numbers behind the last resize.")


class PoolsStatus(_Status):
    """Each pool of the spec, by kind."""

    auth: PoolStatus | None = None
    crew: PoolStatus | None = None
    admin: PoolStatus | None = None


class MigrationStatus(_Status):
    """The database schema, as the operator's migration Jobs left it."""

    image: str | None = Field(None, max_length=1024, description="The last image the database was migrated for.")
    schema_version: int | None = Field(None, description="The schema version that image's migrations reached.")
    job: str | None = Field(None, max_length=253, description="The migration Job of spec.image (kept for its logs).")
    phase: Phase | None = Field(None, description="Where that Job is.")


class FalachefeStatus(_Status):
    """What the operator last saw and did; written by the operator only."""

    observed_generation: int | None = Field(None, description="The generation the operator last acted on.")
    conditions: list[ConditionStatusModel] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
        description="Ready, Progressing, Degraded and ScalingActive, one of each.",
    )
    pools: PoolsStatus | None = Field(None, description="Replicas, queue depth, CPU and last scale of each pool.")
    workers: str | None = Field(None, max_length=64, description="Ready/desired workers over all pools.")
    queue_depth: int | None = Field(None, description="Jobs waiting or running over all pools' queues.")
    pool_summary: str | None = Field(None, max_length=1024, description="Per pool: ready/desired and queue depth.")
    migration: MigrationStatus | None = Field(
        None, description="The schema the workers run on and the migration Job of the current image."
    )


# -- what was observed -----------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """Something that keeps the resource from working, in words for its owner."""

    reason: str
    message: str


@dataclass(frozen=True)
class ScalingReport:
    """The last autoscaler pass over one pool, as the status shows it."""

    desired_replicas: int | None
    queue_depth: int | None
    cpu_utilization: int | None
    metrics_available: bool
    message: str
    last_scale_time: str | None = None
    last_scale_reason: str | None = None


@dataclass(frozen=True)
class Rollout:
    """A Deployment's progress, read the way ``kubectl rollout status`` reads it."""

    replicas: int
    ready: int
    available: int
    updated: int
    total: int
    observed: bool
    stuck: bool

    @property
    def complete(self) -> bool:
        return (
            self.observed
            and self.updated >= self.replicas
            and self.available >= self.replicas
            and self.total <= self.replicas
        )

    @classmethod
    def of(cls, deployment: Mapping[str, Any]) -> Rollout:
        spec = deployment.get("spec") or {}
        status = deployment.get("status") or {}
        generation = (deployment.get("metadata") or {}).get("generation", 0)
        stuck = any(
            entry.get("type") == "Progressing" and entry.get("reason") == "ProgressDeadlineExceeded"
            for entry in status.get("conditions") or []
        )
        return cls(
            replicas=int(spec.get("replicas", 1)),
            ready=int(status.get("readyReplicas", 0)),
            available=int(status.get("availableReplicas", 0)),
            updated=int(status.get("updatedReplicas", 0)),
            total=int(status.get("replicas", 0)),
            observed=int(status.get("observedGeneration", 0)) >= int(generation),
            stuck=stuck,
        )


@dataclass(frozen=True)
class MigrationObservation:
    """The migration for ``spec.image`` and the schema the workers serve on."""

    #: The image the database was last migrated for, and the version it reached.
    migrated_image: str | None
    schema_version: int | None
    #: The Job for ``spec.image``: its name, "Running", "Succeeded" or "Failed", and why it failed.
    job: str | None
    phase: Phase | None
    failure: str | None = None

    @property
    def pending(self) -> bool:
        return self.phase == "Running"


@dataclass(frozen=True)
class PoolObservation:
    autoscaling: bool
    deployment: Mapping[str, Any] | None = None
    scaling: ScalingReport | None = None


@dataclass(frozen=True)
class Observation:
    generation: int
    paused: bool = False
    #: The spec's pools (empty when the spec could not be read).
    pools: Mapping[WorkerKind, PoolObservation] = field(default_factory=dict)
    #: Found in the last pass: invalid spec, missing secrets, refused objects.
    problems: Sequence[Problem] = ()
    #: The generation whose objects were last applied without a problem.
    applied_generation: int | None = None
    #: None: migrations are not the operator's to run.
    migration: MigrationObservation | None = None


# -- working it out --------------------------------------------------------------


def summarize(observation: Observation, previous: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The whole status (camelCase, ready to write) for ``observation``."""
    rollouts = {
        kind: Rollout.of(pool.deployment) for kind, pool in observation.pools.items() if pool.deployment is not None
    }
    pool_statuses = {kind: _pool_status(pool, rollouts.get(kind)) for kind, pool in observation.pools.items()}
    ready = sum(status.ready_replicas for status in pool_statuses.values())
    desired = sum(status.replicas for status in pool_statuses.values())
    depths = [status.queue_depth for status in pool_statuses.values() if status.queue_depth is not None]

    current = [
        _ready(observation, rollouts, ready, desired),
        _progressing(observation, rollouts),
        _degraded(observation, rollouts),
        _scaling_active(observation),
    ]
    merged = conditions.merge(previous.get("conditions") or [], current, generation=observation.generation, now=now)
    status = FalachefeStatus(
        observed_generation=observation.generation,
        conditions=[ConditionStatusModel.model_validate(entry) for entry in merged],
        pools=PoolsStatus.model_validate({kind.value: pool for kind, pool in pool_statuses.items()}),
        workers=f"{ready}/{desired}" if observation.pools else None,
        queue_depth=sum(depths) if depths else None,
        pool_summary=", ".join(_pool_summary(kind, status) for kind, status in pool_statuses.items()) or None,
        migration=_migration_status(observation.migration),
    )
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


#: Status figures (see ``without_live_figures``): written with the next meaningful change, or at most this often.
LIVE_STATUS_SECONDS = 60.0

#: Conditions whose message carries live figures; their status and reason are meaningful, their wording is not.
_FIGURES_IN_MESSAGE = frozenset({conditions.READY, conditions.PROGRESSING, conditions.SCALING_ACTIVE})


def without_live_figures(status: Mapping[str, Any]) -> dict[str, Any]:
    """``status`` less its figures: queue depths, CPU, replica counts, and the wording that repeats them.

    Two statuses equal under this differ only in figures that move as
    pools poll and pods start, which the controller writes at most every
    ``LIVE_STATUS_SECONDS`` (they are in the operator's metrics, and the
    Deployments carry their replicas, as they change). Meaningful, written
    at once: the observed generation, every condition's status and reason,
    Degraded's message (the problems), each pool's decision and last
    scale, the migration. So a new resource's status is written when it is
    first reconciled and when it turns Ready, not as each pod starts.
    """
    kept = {key: value for key, value in status.items() if key not in {"queueDepth", "poolSummary", "pools", "workers"}}
    kept["pools"] = {
        name: {
            key: value
            for key, value in pool.items()
            if key not in {"queueDepth", "cpuUtilization", "replicas", "readyReplicas"}
        }
        for name, pool in (status.get("pools") or {}).items()
    }
    kept["conditions"] = [
        {**condition, "message": ""} if condition.get("type") in _FIGURES_IN_MESSAGE else condition
        for condition in status.get("conditions") or []
    ]
    return kept


def _migration_status(migration: MigrationObservation | None) -> MigrationStatus | None:
    if migration is None:
        return None
    return MigrationStatus(
        image=migration.migrated_image,
        schema_version=migration.schema_version,
        job=migration.job,
        phase=migration.phase,
    )


def _pool_status(pool: PoolObservation, rollout: Rollout | None) -> PoolStatus:
    scaling = pool.scaling
    return PoolStatus(
        replicas=rollout.replicas if rollout else 0,
        ready_replicas=rollout.ready if rollout else 0,
        desired_replicas=scaling.desired_replicas if scaling else None,
        queue_depth=scaling.queue_depth if scaling else None,
        cpu_utilization=scaling.cpu_utilization if scaling else None,
        last_scale_time=scaling.last_scale_time if scaling else None,
        last_scale_reason=scaling.last_scale_reason if scaling else None,
    )


def _pool_summary(kind: WorkerKind, status: PoolStatus) -> str:
    depth = "" if status.queue_depth is None else f" q{status.queue_depth}"
    return f"{kind.value} {status.ready_replicas}/{status.replicas}{depth}"


def _ready(observation: Observation, rollouts: Mapping[WorkerKind, Rollout], ready: int, desired: int) -> Condition:
    status, reason, message = _readiness(observation, rollouts, ready, desired)
    if observation.paused:
        return Condition(
            conditions.READY,
            status,
            "Paused",
            f"spec.paused is true: the operator neither reconciles nor autoscales this resource ({message})",
        )
    return Condition(conditions.READY, status, reason, message)


def _readiness(
    observation: Observation, rollouts: Mapping[WorkerKind, Rollout], ready: int, desired: int
) -> tuple[conditions.ConditionStatus, str, str]:
    if observation.problems:
        first = observation.problems[0]
        return "False", first.reason, first.message
    missing = [kind.value for kind in observation.pools if kind not in rollouts]
    if missing:
        return "False", "Reconciling", f"waiting for the Deployments of pools {', '.join(missing)}"
    behind = [f"{kind.value} {r.available}/{r.replicas} available" for kind, r in rollouts.items() if not r.complete]
    if behind:
        return "False", "WorkersNotReady", "; ".join(behind)
    return "True", "WorkersReady", f"{ready}/{desired} workers ready in {len(rollouts)} pool(s)"


def _progressing(observation: Observation, rollouts: Mapping[WorkerKind, Rollout]) -> Condition:
    if observation.paused:
        return Condition(conditions.PROGRESSING, "False", "Paused", "spec.paused is true: nothing is rolled out")
    if any(problem.reason == "InvalidSpec" for problem in observation.problems):
        return Condition(conditions.PROGRESSING, "False", "InvalidSpec", "the spec is invalid: nothing is rolled out")
    if observation.applied_generation != observation.generation:
        return Condition(conditions.PROGRESSING, "True", "Reconciling", f"applying generation {observation.generation}")
    migration = observation.migration
    if migration is not None and migration.pending:
        return Condition(
            conditions.PROGRESSING,
            "True",
            "Migrating",
            f"migration Job {migration.job} is bringing the database schema up to the new image; "
            "the workers roll to it once the Job succeeds",
        )
    rolling = [kind.value for kind, rollout in rollouts.items() if not rollout.complete]
    missing = [kind.value for kind in observation.pools if kind not in rollouts]
    if rolling or missing:
        return Condition(
            conditions.PROGRESSING, "True", "RollingOut", f"rolling out pools {', '.join(rolling + missing)}"
        )
    return Condition(conditions.PROGRESSING, "False", "RolloutComplete", "every pool runs the current spec")


def _degraded(observation: Observation, rollouts: Mapping[WorkerKind, Rollout]) -> Condition:
    if observation.problems:
        return Condition(
            conditions.DEGRADED,
            "True",
            observation.problems[0].reason,
            "; ".join(problem.message for problem in observation.problems),
        )
    migration = observation.migration
    if migration is not None and migration.phase == "Failed":
        serving = (
            f"the workers keep serving {migration.migrated_image}" if migration.migrated_image else "no worker runs"
        )
        return Condition(
            conditions.DEGRADED,
            "True",
            "MigrationFailed",
            f"migration Job {migration.job} failed: {migration.failure or 'see its logs'}; {serving}",
        )
    stuck = [kind.value for kind, rollout in rollouts.items() if rollout.stuck]
    if stuck:
        return Condition(
            conditions.DEGRADED,
            "True",
            "RolloutStuck",
            f"the Deployments of pools {', '.join(stuck)} exceeded their progress deadline",
        )
    return Condition(conditions.DEGRADED, "False", "AsExpected", "no problem found")


def _scaling_active(observation: Observation) -> Condition:
    if observation.paused:
        return Condition(
            conditions.SCALING_ACTIVE, "False", "Paused", "spec.paused is true: replicas are left as they are"
        )
    autoscaled = {kind: pool for kind, pool in observation.pools.items() if pool.autoscaling}
    if not autoscaled:
        return Condition(
            conditions.SCALING_ACTIVE,
            "False",
            "AutoscalingDisabled",
            "no pool has autoscaling enabled; replicas are kept within minReplicas..maxReplicas",
        )
    unavailable = [
        f"{kind.value}: {pool.scaling.message}"
        for kind, pool in autoscaled.items()
        if pool.scaling is not None and not pool.scaling.metrics_available
    ]
    if unavailable:
        return Condition(
            conditions.SCALING_ACTIVE,
            "False",
            "MetricsUnavailable",
            "holding the current size: " + "; ".join(unavailable),
        )
    waiting = [kind.value for kind, pool in autoscaled.items() if pool.scaling is None]
    if waiting:
        return Condition(
            conditions.SCALING_ACTIVE,
            "Unknown",
            "AwaitingMetrics",
            f"no autoscaler pass yet for pools {', '.join(waiting)}",
        )
    return Condition(
        conditions.SCALING_ACTIVE,
        "True",
        "ScalingActive",
        "; ".join(f"{kind.value}: {pool.scaling.message}" for kind, pool in autoscaled.items() if pool.scaling),
    )
