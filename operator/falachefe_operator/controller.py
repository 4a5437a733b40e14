"""One asyncio task per ``Falachefe``: reconcile, autoscale, report.

Why not Kopf's change handlers, daemons or timers: daemons and timers make
Kopf put a finalizer on every resource (so it can stop them before the
object goes), and a finalizer blocks ``kubectl delete`` for as long as the
operator is down. Nothing here needs cleanup outside the cluster (owner
references let the garbage collector delete the owned objects), so there is
no finalizer, and the per-resource loop is ours: Kopf's watch events only
update what the loop knows and wake it up.

The loop is level-based. Each pass starts from the resource's latest spec
and what the watches last showed of its objects, and:

1. re-applies every owned object when the spec's generation is new, when an
   owned object drifted (someone changed a field the operator owns, or
   deleted the object), on a retry after a problem, or every resync period;
2. runs the autoscaler for each pool whose polling interval is up;
3. works out the whole status and writes it if it changed.

This task is the only writer of the resource's status, so conditions are
never lost to two writers replacing each other's list.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, cast

import aiohttp
import kopf
from pydantic import ValidationError

from falachefe_runtime.config import WorkerKind
from falachefe_runtime.observability.logging import log_context
from falachefe_runtime.redact import redact_text

from . import apply, autoscaling, metrics, migration, naming
from .builders import (
    MIGRATION_CONTAINER_NAME,
    OWNED_KINDS,
    ObjectRef,
    Resource,
    desired_keys,
    kept_config_hashes,
    migration_job,
)
from .conditions import rfc3339
from .kubeapi import ApiError, KubeApi
from .resource import API_VERSION, GROUP, KIND, status_path
from .scaling.engine import PoolTarget, StepOutcome
from .spec import FalachefeSpec, PoolSpec
from .status import (
    LIVE_STATUS_SECONDS,
    MigrationObservation,
    Observation,
    PoolObservation,
    Problem,
    ScalingReport,
    summarize,
    without_live_figures,
)

log = logging.getLogger("falachefe.operator")

#: Retry delays after a pass found a problem (a missing secret, a refused object).
RETRY_SECONDS = (2.0, 4.0, 8.0, 15.0, 30.0)
#: While a pool's queue cannot be read, the Secret with the Redis URL is read
#: again this often: the fix may be a corrected URL.
SECRETS_RECHECK_SECONDS = 10.0
#: How long a pass waits for more of the burst of events that woke it.
COALESCE_SECONDS = 0.02
#: Timed waits end on a grid of this step (the event loop's clock): the
#: passes falling due within one step run in one turn of the loop, one
#: wake-up for some forty pools at 1,000 resources instead of one each.
#: A poll is at most this late.
TICK_SECONDS = 0.1


class Scaler(Protocol):
    """The autoscaler engine as the controller uses it (``scaling.engine.Autoscaler``)."""

    async def step(self, target: PoolTarget, deployment: Mapping[str, Any] | None = None) -> StepOutcome: ...

    def forget(self, target: PoolTarget) -> None: ...


#: Re-apply every resource's objects this often (+-10%): a net under the
#: owned objects' watches, which repair drift as it happens. At 10 minutes,
#: 1,000 resources reconciled together fell due together, and an idle minute
#: held 1.65 API requests per resource (bench/README.md, "Operator at scale").
RESYNC_SECONDS = 36000.0


@dataclass(frozen=True)
class Owned:
    """What the watches last showed of one owned object."""

    ref: ObjectRef
    fingerprint: str
    resource_version: str
    pool: WorkerKind | None
    #: For Deployments: generation, replicas and status, enough for readiness.
    deployment: Mapping[str, Any] | None = None
    #: For Jobs: their status (the migration's progress).
    job: Mapping[str, Any] | None = None

    def older_than(self, other: Owned) -> bool:
        """Whether this is an earlier state of the object than ``other``.

        resourceVersions are opaque by contract but etcd revisions in
        practice; a watch can deliver a state older than the one an apply
        just returned, and that must not count as drift.
        """
        try:
            return int(self.resource_version) < int(other.resource_version)
        except ValueError:
            return False


def _slim_deployment(body: Mapping[str, Any]) -> dict[str, Any]:
    spec = body.get("spec") or {}
    return {
        "metadata": {"generation": (body.get("metadata") or {}).get("generation", 0)},
        "spec": {"replicas": spec.get("replicas", 1), "paused": bool(spec.get("paused"))},
        "status": dict(body.get("status") or {}),
        "images": sorted(
            {str(c.get("image")) for c in ((spec.get("template") or {}).get("spec") or {}).get("containers") or []}
        ),
        **_config_annotations(body),
    }


def _config_annotations(body: Mapping[str, Any]) -> dict[str, str | None]:
    """A Deployment's config digest and its pod template's config hash (``builders.kept_config_hashes``)."""
    template = ((body.get("spec") or {}).get("template") or {}).get("metadata") or {}
    return {
        "configDigest": ((body.get("metadata") or {}).get("annotations") or {}).get(naming.CONFIG_DIGEST_ANNOTATION),
        "configHash": (template.get("annotations") or {}).get(naming.CONFIG_HASH_ANNOTATION),
    }


def _reconciled_at(body: Mapping[str, Any], generation: int) -> bool:
    """Whether the resource's status says its workers were applied for ``generation`` and are Ready."""
    status = body.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    return ready and status.get("observedGeneration") == generation


def _slim_resource(body: Mapping[str, Any]) -> dict[str, Any]:
    """What a pass and its Events need of the resource, without managedFields and annotations.

    Those two (kubectl's last-applied annotation repeats the whole spec)
    are most of an object's size, and a controller holds its resource for
    as long as it lives.
    """
    metadata = body["metadata"]
    kept = ("name", "namespace", "uid", "generation", "resourceVersion", "deletionTimestamp")
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {key: metadata[key] for key in kept if key in metadata},
        "spec": body.get("spec"),
        "status": body.get("status"),
    }


def _owned(body: Mapping[str, Any]) -> Owned:
    metadata = body["metadata"]
    api_version, kind = body["apiVersion"], body["kind"]
    plural = next(p for v, k, p in OWNED_KINDS if k == kind)
    return Owned(
        ref=ObjectRef(api_version, kind, plural, metadata["namespace"], metadata["name"]),
        fingerprint=apply.fingerprint(body),
        resource_version=str(metadata.get("resourceVersion", "")),
        pool=naming.pool_of(metadata.get("labels")),
        deployment=_slim_deployment(body) if kind == "Deployment" else None,
        job={"status": dict(body.get("status") or {})} if kind == "Job" else None,
    )


class Controller:
    """Reconciles one ``Falachefe``: its objects, its pools' sizes, its status."""

    def __init__(
        self,
        namespace: str,
        name: str,
        *,
        api: KubeApi,
        scaler: Scaler,
        resync_seconds: float,
        slots: asyncio.Semaphore,
        secrets: apply.SecretReads,
        tick_seconds: float = TICK_SECONDS,
    ) -> None:
        self.namespace = namespace
        self.name = name
        self._api = api
        self._scaler = scaler
        self._resync = resync_seconds
        self._tick = tick_seconds
        self._slots = slots
        self._secrets = secrets
        self._clock = asyncio.get_running_loop().time
        self._body: dict[str, Any] | None = None
        self._owned: dict[tuple[str, str], Owned] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._reset()

    def _reset(self) -> None:
        """Forget everything learned about the resource's objects (it is a new resource)."""
        self._uid: str | None = None
        self._applied_generation: int | None = None
        #: Each object as the last apply left it, and what the last apply wanted.
        self._applied: dict[tuple[str, str], Owned] = {}
        self._desired: set[tuple[str, str]] | None = None
        self._applying = False
        self._drifted: set[str] = set()
        self._next_apply = 0.0
        self._next_secrets = float("inf")
        self._failures = 0
        self._secret_problems: list[Problem] = []
        self._apply_problems: list[Problem] = []
        self._announced: tuple[str, ...] = ()
        self._redis_url: str | None = None
        self._scaling: dict[WorkerKind, ScalingReport] = {}
        self._targets: dict[WorkerKind, PoolTarget] = {}
        self._built_targets: dict[WorkerKind, tuple[FalachefeSpec, str, PoolTarget]] = {}
        #: The last status worked out: from which previous status and observation (``_write_status``).
        self._summary: tuple[Mapping[str, Any], Observation, dict[str, Any]] | None = None
        self._next_poll: dict[WorkerKind, float] = {}
        self._written_status: dict[str, Any] | None = None
        self._written_at = 0.0
        #: When figures a pass held back from the status are to be written (``_write_status``).
        self._held_status_due = float("inf")
        self._spec: tuple[int, FalachefeSpec] | None = None
        self._invalid = False
        #: The image the last apply gave the workers, and what each finished migration Job reported.
        self._applied_worker_image: str | None = None
        self._outcomes: dict[str, migration.Outcome | None] = {}
        self._migration_job_name: tuple[FalachefeSpec, str | None] | None = None
        #: This pass: the workers run spec.image with no Job of ours (``_migration_adopted``).
        self._adopted = False

    # -- fed by the watches ---------------------------------------------------------

    @property
    def forgettable(self) -> bool:
        """Nothing left to look after: the resource and its objects are gone."""
        return self._body is None and not self._owned

    def observe(self, body: dict[str, Any]) -> None:
        """The resource as the API server has it now."""
        uid = body["metadata"].get("uid")
        if self._uid is not None and uid != self._uid:
            self._reset()
        self._uid = uid
        self._body = _slim_resource(body)
        self._wake.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"falachefe {self.namespace}/{self.name}")

    def observe_owned(self, event_type: str | None, body: dict[str, Any]) -> None:
        """An owned object changed: note drift, or just what the status needs."""
        seen = _owned(body)
        key = seen.ref.key
        if event_type == "DELETED":
            self._owned.pop(key, None)
            if key in self._applied:
                self._drift(seen.ref.kind)
            return
        previous = self._owned.get(key)
        self._owned[key] = seen
        if self._desired is not None and key not in self._desired:
            # Owned but not desired: a removed pool's object, seen after the last apply.
            self._drift(seen.ref.kind)
        elif not self._applying and self._changed_by_others(seen):
            self._drift(seen.ref.kind)
        elif previous is None or previous.deployment != seen.deployment or previous.job != seen.job:
            self._wake.set()

    def _changed_by_others(self, seen: Owned) -> bool:
        applied = self._applied.get(seen.ref.key)
        return applied is not None and seen.fingerprint != applied.fingerprint and not seen.older_than(applied)

    def _drift(self, kind: str) -> None:
        self._drifted.add(kind)
        self._wake.set()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._forget_pools()

    def gone(self) -> None:
        """The resource was deleted: stop acting on it (the garbage collector takes its objects)."""
        self._body = None
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._forget_pools()

    def _forget_pools(self) -> None:
        """Drop the autoscaler's history and series of this resource's pools."""
        for target in self._targets.values():
            self._scaler.forget(target)
        self._targets.clear()

    # -- the loop ---------------------------------------------------------------------

    async def _run(self) -> None:
        # Every line this task logs (and its children's: apply, autoscale) says which resource it is about.
        with log_context(namespace=self.namespace, name=self.name):
            await self._loop()

    async def _loop(self) -> None:
        while True:
            due = self._next_due()
            if due > self._clock():
                # asyncio.timeout_at, not wait_for: no task per wait (a pass every poll of every resource).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(None if due == float("inf") else _on_tick(due, self._tick)):
                        await self._wake.wait()
            if self._wake.is_set():
                # Changes come in bursts (an apply echoes back as several events): one pass for the burst.
                # A pass that is simply due (a poll) has no burst to wait for.
                await asyncio.sleep(COALESCE_SECONDS)
            self._wake.clear()
            try:
                await self._pass()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconcile failed; retrying")
                metrics.RECONCILES.labels("error").inc()
                self._retry_later()

    def _next_due(self) -> float:
        if self._wake.is_set():
            return self._clock()
        body = self._body
        if body is None or body["metadata"].get("deletionTimestamp"):
            return float("inf")  # nothing more to do for it
        if (body.get("spec") or {}).get("paused") or self._invalid:
            return self._held_status_due  # until the resource changes (or held-back figures are due)
        return min([self._next_apply, self._next_secrets, self._held_status_due, *self._next_poll.values()])

    def _retry_later(self) -> None:
        delay = RETRY_SECONDS[min(self._failures, len(RETRY_SECONDS) - 1)]
        self._failures += 1
        self._next_apply = self._clock() + delay

    async def _pass(self) -> None:
        body = self._body
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        generation = int(body["metadata"].get("generation", 1))
        try:
            spec = self._parsed(generation, body)
        except ValidationError as error:
            problem = Problem("InvalidSpec", describe_validation_error(error))
            self._invalid = True
            self._announce([problem], body)
            await self._write_status(body, Observation(generation, problems=[problem]))
            return
        self._invalid = False
        if spec.paused:
            await self._write_status(body, self._observation(spec, generation, paused=True))
            return
        now = self._clock()
        self._adopted = self._migration_adopted(body, spec, generation)
        workers = self._worker_image(body, spec)
        if (
            generation != self._applied_generation
            or self._drifted
            or now >= self._next_apply
            or workers != self._applied_worker_image
        ):
            await self._reconcile(body, spec, generation, workers)
        elif now >= self._next_secrets:
            await self._read_secrets(body, spec)
        await self._autoscale(body, spec)
        observation = self._observation(spec, generation, migration=await self._migration(body, spec))
        await self._write_status(body, observation)

    def _parsed(self, generation: int, body: Mapping[str, Any]) -> FalachefeSpec:
        """The spec, parsed once per generation (a pass runs on every event about the resource's objects)."""
        if self._spec is None or self._spec[0] != generation:
            self._spec = (generation, FalachefeSpec.model_validate(body.get("spec") or {}))
        return self._spec[1]

    # -- migrations -----------------------------------------------------------------

    def _migration_job(self, spec: FalachefeSpec) -> tuple[str, Owned | None] | None:
        """The name of ``spec.image``'s migration Job and the Job as last seen (None: migrations are off).

        The name is a digest of the Job's manifest: built once per parsed spec, not on every pass.
        """
        if self._adopted:
            return None
        if self._migration_job_name is None or self._migration_job_name[0] is not spec:
            manifest = migration_job(Resource(self.name, self.namespace, self._uid or "", spec))
            self._migration_job_name = (spec, manifest["metadata"]["name"] if manifest is not None else None)
        name = self._migration_job_name[1]
        if name is None:
            return None
        return name, self._owned.get(("Job", name))

    def _migration_adopted(self, body: Mapping[str, Any], spec: FalachefeSpec, generation: int) -> bool:
        """Whether the workers run ``spec.image`` on a schema it knows without a Job of ours.

        So when an operator before migrations as Jobs made them: its status
        has no migration and says Ready for this very generation (its
        workers of spec.image serve). Running that image's migrations again
        would gain nothing, and an image that old may not know the
        migration Job's command. Recorded as migrated with no Job, until
        the next image, whose migration runs as usual.
        """
        recorded = self._recorded_migration(body)
        if recorded:
            return (
                recorded.get("image") == spec.image and recorded.get("phase") == "Succeeded" and not recorded.get("job")
            )
        return spec.migrations.enabled and _reconciled_at(body, generation)

    def _recorded_migration(self, body: Mapping[str, Any]) -> Mapping[str, Any]:
        status = self._written_status if self._written_status is not None else body.get("status") or {}
        return status.get("migration") or {}

    def _worker_image(self, body: Mapping[str, Any], spec: FalachefeSpec) -> str | None:
        job = self._migration_job(spec)
        seen = job[1] if job is not None else None
        return migration.worker_image(
            spec_image=spec.image,
            enabled=job is not None,
            phase=migration.job_phase(seen.job or {}) if seen is not None else None,
            migrated_image=self._recorded_migration(body).get("image"),
            running=[
                image
                for owned in self._owned.values()
                if owned.deployment is not None
                for image in owned.deployment.get("images", ())
            ],
        )

    async def _migration(self, body: Mapping[str, Any], spec: FalachefeSpec) -> MigrationObservation | None:
        """The migration for ``spec.image`` as the status reports it; reads a finished Job's pods once."""
        job = self._migration_job(spec)
        if job is None:
            if self._adopted:
                schema_version = self._recorded_migration(body).get("schemaVersion")
                return MigrationObservation(spec.image, schema_version, None, "Succeeded")
            return None
        name, seen = job
        recorded = self._recorded_migration(body)
        phase = migration.job_phase(seen.job or {}) if seen is not None else "Running"
        if phase != "Running" and name not in self._outcomes:
            await self._read_outcome(name)
        reported = self._outcomes.get(name) if phase != "Running" else None
        if phase == "Succeeded":
            version = reported.schema_version if reported else recorded.get("schemaVersion")
            return MigrationObservation(spec.image, version, name, phase)
        failure = None
        if phase == "Failed":
            failure = (reported.error if reported else None) or migration.job_failure(
                (seen.job if seen else None) or {}
            )
        return MigrationObservation(recorded.get("image"), recorded.get("schemaVersion"), name, phase, failure=failure)

    async def _live_config_annotations(
        self, spec: FalachefeSpec, *, first_visit: bool
    ) -> dict[WorkerKind, dict[str, str | None]]:
        """Each existing pool Deployment's config annotations; read from the API when its watch has not listed it.

        Not on a first visit: no operator has reported on the resource, so it
        has no running Deployment whose pods a changed hash would roll (the
        same assumption ``apply.converge`` makes), and a cold start over many
        new resources would otherwise GET a Deployment that is not there per pool.
        """
        live = {
            owned.pool: {k: owned.deployment.get(k) for k in ("configDigest", "configHash")}
            for owned in self._owned.values()
            if owned.deployment is not None and owned.pool is not None
        }
        if first_visit:
            return live
        for kind, _ in spec.pools.items():
            if kind in live:
                continue
            path = ObjectRef(
                "apps/v1", "Deployment", "deployments", self.namespace, naming.deployment_name(self.name, kind)
            )
            try:
                _, body = await self._api.request("GET", path.path)
            except ApiError as error:
                if error.status == 404:
                    continue
                raise
            live[kind] = _config_annotations(body)
        return live

    async def _read_outcome(self, job: str) -> None:
        """Keep what the finished Job's pods reported; a failed read is tried again on the next pass."""
        selector = f"batch.kubernetes.io/job-name={job}"
        try:
            _, pods = await self._api.request(
                "GET", f"/api/v1/namespaces/{self.namespace}/pods", params={"labelSelector": selector}
            )
        except (ApiError, aiohttp.ClientError, TimeoutError) as error:
            log.warning("reading the migration Job's pods failed", extra={"job": job, "error": str(error)})
            return
        self._outcomes = {job: migration.outcome(pods.get("items") or [], MIGRATION_CONTAINER_NAME)}

    async def _reconcile(
        self, body: dict[str, Any], spec: FalachefeSpec, generation: int, worker_image: str | None
    ) -> None:
        drifted, self._drifted = self._drifted, set()
        resource = Resource(
            self.name, self.namespace, str(body["metadata"]["uid"]), spec, worker_image, migration_adopted=self._adopted
        )
        first_visit = self._applied_generation is None and (body.get("status") or {}).get("observedGeneration") is None
        live = await self._live_config_annotations(spec, first_visit=first_visit)
        resource = dataclasses.replace(
            resource,
            config_hashes=kept_config_hashes(
                resource, live, reconciled_by_earlier_operator=_reconciled_at(body, generation)
            ),
        )
        self._desired = set(desired_keys(resource))
        # Events that arrive while applying are this apply's own echoes (or older).
        self._applying = True
        try:
            async with self._slots:
                with metrics.RECONCILE_SECONDS.time():
                    secrets, result = await asyncio.gather(
                        apply.check_secrets(self._secrets, self.namespace, spec),
                        apply.converge(
                            self._api,
                            resource,
                            [owned.ref for owned in self._owned.values()],
                            established=[
                                key
                                for key, owned in self._owned.items()
                                if owned.deployment is not None and not apply.still_unborn(owned.deployment)
                            ],
                            first_visit=first_visit,
                        ),
                    )
        finally:
            self._applying = False
        self._take_secrets(secrets)
        self._applied = {key: _owned(stored) for key, stored in result.applied.items()}
        for key, applied in self._applied.items():
            latest = self._owned.get(key)
            if latest is None or latest.older_than(applied):
                self._owned[key] = applied
            elif self._changed_by_others(latest):
                self._drift(latest.ref.kind)
        for ref in result.pruned:
            self._owned.pop(ref.key, None)
        self._apply_problems = result.problems
        self._announce(self._problems, body)
        if self._problems:
            # Ours to retry (a refused object), or not ours to fix but liable to
            # be fixed at any time (a missing secret): look again soon.
            metrics.RECONCILES.labels("problem").inc()
            self._retry_later()
        else:
            self._failures = 0
            metrics.RECONCILES.labels("ok").inc()
            self._next_apply = self._clock() + self._resync * random.uniform(0.9, 1.1)
        if not result.problems:
            # After an operator restart every resource is applied again; only
            # a new generation or a created object is news worth an Event.
            recorded = (body.get("status") or {}).get("observedGeneration")
            if generation != self._applied_generation and (generation != recorded or result.created):
                self._event(body, "Normal", "Reconciled", _reconciled_message(generation, result))
            elif drifted:
                for kind in sorted(drifted):
                    metrics.DRIFT_CORRECTIONS.labels(kind).inc()
                self._event(
                    body,
                    "Normal",
                    "DriftCorrected",
                    f"re-applied after a change by someone else to owned {', '.join(sorted(drifted))} objects",
                )
            self._applied_generation = generation
            self._applied_worker_image = worker_image
        for ref in result.pruned:
            self._event(body, "Normal", "Deleted", f"{ref.kind} {ref.name}: its pool was removed from the spec")

    @property
    def _problems(self) -> list[Problem]:
        return self._secret_problems + self._apply_problems

    async def _read_secrets(self, body: dict[str, Any], spec: FalachefeSpec) -> None:
        self._take_secrets(await apply.check_secrets(self._secrets, self.namespace, spec))
        self._announce(self._problems, body)

    def _take_secrets(self, secrets: apply.SecretsCheck) -> None:
        self._redis_url = secrets.redis_url
        self._secret_problems = secrets.problems
        self._next_secrets = float("inf")

    async def _autoscale(self, body: dict[str, Any], spec: FalachefeSpec) -> None:
        pools = {kind: pool for kind, pool in spec.pools.items() if pool.autoscaling.enabled}
        for kind in set(self._scaling) - set(pools):
            self._scaling.pop(kind, None)
            self._next_poll.pop(kind, None)
            target = self._targets.pop(kind, None)
            if target is not None:
                self._scaler.forget(target)
        now = self._clock()
        due = [(kind, pool) for kind, pool in pools.items() if now >= self._next_poll.get(kind, 0.0)]
        if not due:
            return
        if self._redis_url is None:
            for kind, pool in due:
                self._scaling[kind] = ScalingReport(
                    None, None, None, False, "queue depth unknown: the Redis URL Secret cannot be read (see Degraded)"
                )
                self._next_poll[kind] = now + pool.autoscaling.polling_interval_seconds
            return
        targets = {kind: self._target(spec, kind, pool, self._redis_url) for kind, pool in due}
        # Replicas as the Deployment watch shows them: no GET per poll.
        watched = {owned.pool: owned.deployment for owned in self._owned.values() if owned.deployment is not None}
        # One after the other in this task, not a task each under gather (a pass is every poll of
        # every resource); the second pool's queue read goes in the read batch after the first's.
        outcomes = [await self._scaler.step(target, watched.get(kind)) for kind, target in targets.items()]
        stamp = rfc3339(datetime.now(UTC))
        for (kind, pool), outcome in zip(due, outcomes, strict=True):
            self._targets[kind] = targets[kind]
            self._scaling[kind] = autoscaling.report(outcome, self._scaling.get(kind), stamp)
            # Polls keep their rate, however long a step took (a queue read waits
            # for its batch window); a step longer than the interval skips the
            # polls it missed rather than running them back to back.
            interval = pool.autoscaling.polling_interval_seconds
            after = self._clock()
            self._next_poll[kind] = now + interval if now + interval > after else after + interval
            if outcome.queue is None:
                self._next_secrets = min(self._next_secrets, self._clock() + SECRETS_RECHECK_SECONDS)
            for change in outcome.transitions:
                self._event(body, *autoscaling.source_event(kind, change, outcome, pool))
            if outcome.scaled:
                self._event(body, "Normal", "Scaled", autoscaling.scale_message(kind, outcome), pool=kind)

    def _target(self, spec: FalachefeSpec, kind: WorkerKind, pool: PoolSpec, redis_url: str) -> PoolTarget:
        """The pool's autoscaler target, built once per parsed spec and Redis URL (not on every poll)."""
        built = self._built_targets.get(kind)
        if built is not None and built[0] is spec and built[1] == redis_url:
            return built[2]
        target = autoscaling.pool_target(
            namespace=self.namespace, name=self.name, spec=spec, kind=kind, pool=pool, redis_url=redis_url
        )
        self._built_targets[kind] = (spec, redis_url, target)
        return target

    def _observation(
        self,
        spec: FalachefeSpec,
        generation: int,
        *,
        paused: bool = False,
        migration: MigrationObservation | None = None,
    ) -> Observation:
        deployments = {
            owned.pool: owned.deployment
            for owned in self._owned.values()
            if owned.deployment is not None and owned.pool is not None
        }
        return Observation(
            generation=generation,
            paused=paused,
            pools={
                kind: PoolObservation(
                    autoscaling=pool.autoscaling.enabled,
                    deployment=deployments.get(kind),
                    scaling=self._scaling.get(kind),
                )
                for kind, pool in spec.pools.items()
            },
            problems=self._problems,
            applied_generation=self._applied_generation,
            migration=migration,
        )

    async def _write_status(self, body: dict[str, Any], observation: Observation) -> None:
        previous = self._written_status if self._written_status is not None else body.get("status") or {}
        if self._summary is not None and self._summary[0] is previous and self._summary[1] == observation:
            status = self._summary[2]  # an idle poll: the same observation gives the same status
        else:
            status = summarize(observation, previous, now=datetime.now(UTC))
            self._summary = (previous, observation, status)
        if status == previous:
            self._held_status_due = float("inf")
            return
        if (
            self._written_status is not None
            and self._clock() - self._written_at < LIVE_STATUS_SECONDS
            and without_live_figures(status) == without_live_figures(previous)
        ):
            # Only figures moved: they wait for a meaningful change or the interval (a pass is due then).
            self._held_status_due = self._written_at + LIVE_STATUS_SECONDS
            return
        manifest = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": self.name, "namespace": self.namespace},
            "status": status,
        }
        try:
            await self._api.apply(status_path(self.namespace, self.name), manifest, manager=naming.FIELD_MANAGER)
        except (ApiError, aiohttp.ClientError, TimeoutError) as error:
            log.warning("writing the status failed; retrying", extra={"error": str(error)})
            self._retry_later()
            return
        metrics.STATUS_WRITES.inc()
        self._written_status = status
        self._written_at = self._clock()
        self._held_status_due = float("inf")

    def _announce(self, problems: list[Problem], body: dict[str, Any]) -> None:
        """One Warning Event per new set of problems, not one per retry."""
        messages = tuple(problem.message for problem in problems)
        if messages and messages != self._announced:
            self._event(body, "Warning", problems[0].reason, "; ".join(messages))
        self._announced = messages

    def _event(
        self, body: Mapping[str, Any], type_: str, reason: str, message: str, pool: WorkerKind | None = None
    ) -> None:
        """Post an Event and log it: a Warning Event is a warning in the log too.

        The resource's namespace and name come from the task's log context
        (``name`` could not be an ``extra``: LogRecord keeps it for the logger).
        """
        message = redact_text(message)  # Events are readable by whoever may list them: no password in them
        fields: dict[str, Any] = {"event": type_, "reason": reason}
        if pool is not None:
            fields["pool"] = pool.value
        log.log(logging.WARNING if type_ == "Warning" else logging.INFO, "%s", message, extra=fields)
        kopf.event(kopf.Body(cast(kopf.RawBody, dict(body))), type=type_, reason=reason, message=message)


def _on_tick(due: float, tick: float = TICK_SECONDS) -> float:
    """The first tick at or after ``due`` (``due`` itself when ``tick`` is 0: no grid)."""
    if tick <= 0:
        return due
    return max(math.ceil(due / tick) * tick, due)  # max: never before due, float rounding aside


def describe_validation_error(error: ValidationError) -> str:
    """Each problem with the path of the field it is about, as a person would write it."""
    parts = []
    for item in error.errors():
        path = ".".join(str(part) for part in ("spec", *item["loc"]))
        parts.append(f"{path}: {item['msg']}")
    return "; ".join(parts)


def _reconciled_message(generation: int, result: apply.ApplyResult) -> str:
    created = ", ".join(f"{ref.kind} {ref.name}" for ref in result.created)
    return f"applied generation {generation}" + (f"; created {created}" if created else "")


class Fleet:
    """Every ``Falachefe`` the operator serves, each with its ``Controller``.

    The watches feed it: events about a resource, and events about objects
    whose controller owner reference points at one.
    """

    def __init__(
        self,
        api: KubeApi,
        scaler: Scaler,
        *,
        resync_seconds: float = RESYNC_SECONDS,
        concurrent_reconciles: int = 32,
        tick_seconds: float = TICK_SECONDS,
    ) -> None:
        self._api = api
        self._scaler = scaler
        self._resync = resync_seconds
        self._tick = tick_seconds
        # Reconciles hold every object they applied until they finish: bounding
        # them bounds the memory a burst (an operator restart) takes.
        self._slots = asyncio.Semaphore(concurrent_reconciles)
        # Resources sharing Secrets share their reads (an operator start reads each once, not once per resource).
        self._secrets = apply.SecretReads(api)
        self._controllers: dict[tuple[str, str], Controller] = {}
        self._stopped = False

    def _controller(self, namespace: str, name: str) -> Controller:
        key = (namespace, name)
        controller = self._controllers.get(key)
        if controller is None:
            controller = Controller(
                namespace,
                name,
                api=self._api,
                scaler=self._scaler,
                resync_seconds=self._resync,
                slots=self._slots,
                secrets=self._secrets,
                tick_seconds=self._tick,
            )
            self._controllers[key] = controller
            metrics.RESOURCES.set(len(self._controllers))
        return controller

    def resource_event(self, event_type: str | None, body: dict[str, Any]) -> None:
        if self._stopped:
            return
        metadata = body["metadata"]
        key = (metadata["namespace"], metadata["name"])
        if event_type == "DELETED":
            controller = self._controllers.get(key)
            if controller is not None:
                controller.gone()
                self._forget_if_done(key)
            return
        self._controller(*key).observe(body)

    def owned_event(self, event_type: str | None, body: dict[str, Any]) -> None:
        if self._stopped:
            return
        owner = _controlling_owner(body)
        if owner is None:
            return
        key = (body["metadata"]["namespace"], owner)
        if event_type == "DELETED" and key not in self._controllers:
            return
        self._controller(*key).observe_owned(event_type, body)
        self._forget_if_done(key)

    def _forget_if_done(self, key: tuple[str, str]) -> None:
        controller = self._controllers.get(key)
        if controller is not None and controller.forgettable:
            del self._controllers[key]
            metrics.RESOURCES.set(len(self._controllers))

    async def stop(self) -> None:
        """Cancel every controller's loop; events that arrive afterwards (Kopf still stopping) start none."""
        self._stopped = True
        controllers, self._controllers = list(self._controllers.values()), {}
        await asyncio.gather(*(controller.stop() for controller in controllers))


def _controlling_owner(body: Mapping[str, Any]) -> str | None:
    for reference in (body.get("metadata") or {}).get("ownerReferences") or []:
        if (
            reference.get("controller")
            and reference.get("kind") == KIND
            and str(reference.get("apiVersion", "")).startswith(f"{GROUP}/")
        ):
            return str(reference["name"])
    return None
