"""The ``Falachefe`` custom resource's spec: what a platform team may ask for.

These models are the one source of truth for the resource's shape. The CRD's
OpenAPI schema (defaults, bounds, CEL rules) is generated from them by
``crd.py``, and the operator parses every resource it sees with them, so the
API server and the operator cannot disagree on what a valid spec is.

Every CEL rule (``x-kubernetes-validations``) has a twin ``model_validator``
with the same message: the API server refuses a bad resource up front, and an
object that slipped past an older CRD is still refused by the operator with
the same words.

Defaults of the runtime's settings come from ``falachefe_runtime.config``
rather than being restated here, so a changed runtime default changes the
CRD's default with it.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel

from falachefe_runtime.config import (
    CONFIG_FILE_ENV,
    DEFAULT_CONCURRENCY,
    DEFAULT_QUEUES,
    FILE_SUFFIX,
    DatabaseSettings,
    LLMSettings,
    PoolSettings,
    RedisSettings,
    WorkerKind,
    env_name,
)
from falachefe_runtime.config import DEFAULT_JOB_TIMEOUT_S as RUNTIME_JOB_TIMEOUT_S

from .scaling import policy as autoscaler

#: Secret settings the operator gives workers (as files, from the Secrets the spec names).
OPERATOR_SET_SECRETS = ("database.dsn", "database.replica_dsn", "redis.url", "llm.api_key", "auth.otp_secret")
#: Runtime config fields the operator sets on every worker by value.
OPERATOR_SET_FIELDS = (
    "worker.kind",
    "worker.queue",
    "worker.concurrency",
    "worker.shutdown_grace_s",
    "worker.job_timeout_s",
    "worker.pod_name",
)
#: Environment variables the operator sets itself, or that would compete with
#: them; ``env`` may not set them. A secret set both from its file and by
#: value is refused by the runtime, so both spellings are the operator's.
RESERVED_ENV = (
    CONFIG_FILE_ENV,
    *(name for field in OPERATOR_SET_SECRETS for name in (env_name(field), env_name(field) + FILE_SUFFIX)),
    *(env_name(field) for field in OPERATOR_SET_FIELDS),
)

#: Seconds between the runtime's shutdown grace and the pod's termination
#: grace period: time to exit after the last job, before the kubelet's SIGKILL.
SHUTDOWN_MARGIN_S = 5

_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_QUANTITY = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)

ObjectName = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=_DNS_SUBDOMAIN)]
SecretKey = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")]
LabelValue = Annotated[str, StringConstraints(max_length=1024)]

#: A resource quantity ("250m", "1Gi", 2): Kubernetes' int-or-string.
Quantity = Annotated[
    int | Annotated[str, StringConstraints(pattern=_QUANTITY)],
    WithJsonSchema({"x-kubernetes-int-or-string": True, "pattern": _QUANTITY}),
]

#: Kubernetes types the operator passes to the pod spec unchanged. Their
#: schema is large and versioned with Kubernetes; the API server validates
#: them in full when it admits the Deployment, and a refusal shows up in the
#: resource's Degraded condition with the server's message.
PassThroughObject = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]


def _cel(*rules: dict[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(rules)}


class _Spec(BaseModel):
    """A part of the spec: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )


# -- secrets -------------------------------------------------------------------


class SecretKeyRef(_Spec):
    """A key of a Secret in the resource's namespace; workers that need it read it as a file."""

    name: ObjectName = Field(description="Name of the Secret, in the Falachefe's namespace.")
    key: SecretKey


class DsnSecretRef(SecretKeyRef):
    key: SecretKey = Field("dsn", description="Key holding a PostgreSQL DSN.")


class UrlSecretRef(SecretKeyRef):
    key: SecretKey = Field("url", description="Key holding a redis:// or rediss:// URL.")


class ApiKeySecretRef(SecretKeyRef):
    key: SecretKey = Field("apiKey", description="Key holding the LLM endpoint's API key.")


class OtpSecretRef(SecretKeyRef):
    key: SecretKey = Field("otpSecret", description="Key holding the HMAC key for one-time codes.")


# -- connections ---------------------------------------------------------------

_PRIMARY = PoolSettings()
_REPLICA = DatabaseSettings().replica
_DATABASE = DatabaseSettings()
_REDIS = RedisSettings()
_LLM = LLMSettings()


_MIN_SIZE = "Connections each worker opens at start and keeps open."
_MAX_SIZE = "Most connections each worker opens."
_STATEMENT_TIMEOUT = "PostgreSQL cancels a statement that runs longer (statement_timeout)."


class _ConnectionPool(_Spec):
    model_config = ConfigDict(
        json_schema_extra=_cel(
            {
                "rule": "self.minSize <= self.maxSize",
                "message": "minSize must not exceed maxSize",
                "fieldPath": ".minSize",
            }
        )
    )

    min_size: int
    max_size: int
    statement_timeout_seconds: float

    @model_validator(mode="after")
    def _min_le_max(self) -> _ConnectionPool:
        if self.min_size > self.max_size:
            raise ValueError("minSize must not exceed maxSize")
        return self


class PrimaryPool(_ConnectionPool):
    """Connections each worker keeps to the primary."""

    min_size: int = Field(_PRIMARY.min_size, ge=0, le=1000, description=_MIN_SIZE)
    max_size: int = Field(_PRIMARY.max_size, ge=1, le=1000, description=_MAX_SIZE)
    statement_timeout_seconds: float = Field(
        _PRIMARY.statement_timeout_s, gt=0, le=3600, description=_STATEMENT_TIMEOUT
    )


class ReplicaPool(_ConnectionPool):
    """Connections each worker keeps to the read replica (when there is one)."""

    min_size: int = Field(_REPLICA.min_size, ge=0, le=1000, description=_MIN_SIZE)
    max_size: int = Field(_REPLICA.max_size, ge=1, le=1000, description=_MAX_SIZE)
    statement_timeout_seconds: float = Field(
        _REPLICA.statement_timeout_s, gt=0, le=3600, description=_STATEMENT_TIMEOUT
    )


class DatabaseSpec(_Spec):
    """PostgreSQL: the primary, an optional read replica, and how workers pool connections."""

    secret_ref: DsnSecretRef = Field(description="Secret key holding the primary's DSN.")
    replica_secret_ref: DsnSecretRef | None = Field(None, description="Secret key holding a read replica's DSN.")
    primary_pool: PrimaryPool = PrimaryPool()
    replica_pool: ReplicaPool = ReplicaPool()
    idle_timeout_seconds: float = Field(
        _DATABASE.idle_timeout_s, gt=0, le=3600, description="A pooled connection idle this long is closed."
    )
    connect_timeout_seconds: float = Field(
        _DATABASE.connect_timeout_s, gt=0, le=300, description="Time to open one connection before it counts as failed."
    )
    slow_query_threshold_seconds: float = Field(
        _DATABASE.slow_query_threshold_s,
        gt=0,
        le=3600,
        description="A statement slower than this is logged and counted in falachefe_db_slow_queries_total.",
    )


class RedisSpec(_Spec):
    """Redis: the BullMQ queues and the workers' shared cache."""

    secret_ref: UrlSecretRef = Field(description="Secret key holding the Redis URL.")
    queue_prefix: str = Field(
        _REDIS.queue_prefix,
        min_length=1,
        max_length=64,
        description="BullMQ key prefix; the producing app's (BullMQ's default is bull).",
    )


class LLMSpec(_Spec):
    """The OpenAI-compatible endpoint the crews talk to."""

    model: str = Field(_LLM.model, min_length=1, max_length=253, description="Model the crews ask the endpoint for.")
    base_url: str | None = Field(
        None, alias="baseURL", max_length=2048, pattern=r"^https?://", description="Endpoint; the provider's if unset."
    )
    api_key_secret_ref: ApiKeySecretRef | None = Field(None, description="Secret key holding the API key.")
    timeout_seconds: float = Field(_LLM.timeout_s, gt=0, le=3600, description="How long one LLM request may take.")


class AuthSpec(_Spec):
    """Phone authentication."""

    otp_secret_ref: OtpSecretRef | None = Field(
        None, description="Secret key holding the HMAC key one-time codes are hashed with."
    )


# -- autoscaling ---------------------------------------------------------------

#: The autoscaler's own defaults (the HPA's, and its knobs beyond the HPA).
_POLICY_DEFAULTS: dict[str, Any] = {field.name: field.default for field in dataclasses.fields(autoscaler.ScalingPolicy)}


class ScalingPolicy(_Spec):
    """At most `value` pods (or percent of the current pods) per `periodSeconds`."""

    type: Literal["Pods", "Percent"] = Field(description="Pods: a number of pods; Percent: of the current replicas.")
    value: int = Field(ge=1, le=10_000, description="How many pods, or what percentage.")
    period_seconds: int = Field(
        ge=1, le=autoscaler.MAX_PERIOD_SECONDS, description="The window the limit applies to, in seconds."
    )


def _window(rules: autoscaler.ScalingRules) -> Any:
    return Field(
        rules.stabilization_window_seconds,
        ge=0,
        le=autoscaler.MAX_STABILIZATION_WINDOW_SECONDS,
        description="Seconds of past recommendations to consider: scale-down takes their highest,"
        " scale-up their lowest, which damps flapping.",
    )


def _select(rules: autoscaler.ScalingRules) -> Any:
    return Field(
        rules.select_policy.value,
        description="Which policy wins when several apply; Disabled forbids scaling this way.",
    )


def _policies(rules: autoscaler.ScalingRules) -> Any:
    return Field(
        [
            ScalingPolicy(type=rule.type.value, value=rule.value, period_seconds=rule.period_seconds)
            for rule in rules.policies
        ],
        max_length=10,
        description="Limits on how much the pool may change per period.",
    )


class ScalingRulesSpec(_Spec):
    stabilization_window_seconds: int
    select_policy: Literal["Max", "Min", "Disabled"]
    policies: list[ScalingPolicy]


class ScaleUpRules(ScalingRulesSpec):
    """The HPA's scale-up defaults: no stabilization, +4 pods or +100% per 15 s, whichever is more."""

    stabilization_window_seconds: int = _window(autoscaler.DEFAULT_SCALE_UP)
    select_policy: Literal["Max", "Min", "Disabled"] = _select(autoscaler.DEFAULT_SCALE_UP)
    policies: list[ScalingPolicy] = _policies(autoscaler.DEFAULT_SCALE_UP)


class ScaleDownRules(ScalingRulesSpec):
    """The HPA's scale-down defaults: the highest proposal of the last 5 minutes, -100% per 15 s."""

    stabilization_window_seconds: int = _window(autoscaler.DEFAULT_SCALE_DOWN)
    select_policy: Literal["Max", "Min", "Disabled"] = _select(autoscaler.DEFAULT_SCALE_DOWN)
    policies: list[ScalingPolicy] = _policies(autoscaler.DEFAULT_SCALE_DOWN)


class ScalingBehavior(_Spec):
    """How fast the pool may grow and shrink, as a HorizontalPodAutoscaler's behavior."""

    scale_up: ScaleUpRules = ScaleUpRules()
    scale_down: ScaleDownRules = ScaleDownRules()


class AutoscalingSpec(_Spec):
    """How the operator sizes the pool between minReplicas and maxReplicas."""

    enabled: bool = Field(
        True, description="When false the operator only keeps replicas within minReplicas..maxReplicas."
    )
    polling_interval_seconds: int = Field(
        5, ge=1, le=3600, description="How often the queue and CPU are read and the pool's size decided."
    )
    target_queue_depth_per_replica: int = Field(
        10, ge=1, le=1_000_000, description="Jobs waiting or running per replica the pool aims for."
    )
    target_queue_wait_seconds: float | None = Field(
        None,
        ge=0,
        le=3600,
        description=(
            "Seconds a job should wait in the queue at most; when set it replaces targetQueueDepthPerReplica,"
            " the depth per replica derived from the measured service time."
        ),
    )
    target_cpu_utilization_percentage: int = Field(
        70,
        alias="targetCPUUtilizationPercentage",
        ge=0,
        le=1000,
        description="Of the pods' CPU requests; 0 scales on the queue alone (no metrics-server needed).",
    )
    tolerance: float = Field(
        _POLICY_DEFAULTS["tolerance"],
        ge=0,
        lt=1,
        description="Ratio band around the target inside which nothing moves.",
    )
    forecast_horizon_seconds: float = Field(
        _POLICY_DEFAULTS["forecast_horizon_seconds"],
        ge=0,
        le=3600,
        description=(
            "How far ahead a growing queue is projected to size a scale-up (about the time a new worker takes"
            " to start); 0 projects nothing."
        ),
    )
    rate_window_seconds: float = Field(
        _POLICY_DEFAULTS["rate_window_seconds"],
        gt=0,
        le=3600,
        description="Window the queue's arrival and completion rates are averaged over.",
    )
    behavior: ScalingBehavior = ScalingBehavior()


# -- pools ---------------------------------------------------------------------


class ResourceRequirements(_Spec):
    """CPU and memory of each worker container, as in a container's resources."""

    requests: dict[str, Quantity] = Field(
        default_factory=dict,
        max_length=16,
        description="Reserved for each worker; CPU utilization is measured against the CPU request.",
    )
    limits: dict[str, Quantity] = Field(
        default_factory=dict,
        max_length=16,
        description="The most each worker may use; past its memory limit a worker is killed.",
    )


class Toleration(_Spec):
    """A taint the workers tolerate, as in a pod's tolerations."""

    key: str | None = Field(None, max_length=317, description="Taint key; unset with Exists matches every taint.")
    operator: Literal["Exists", "Equal"] | None = Field(
        None, description="Exists: any value; Equal (the default): the value below."
    )
    value: str | None = Field(None, max_length=63, description="Taint value to match with Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to match; unset matches every effect."
    )
    toleration_seconds: int | None = Field(
        None, description="With NoExecute: how long a worker stays on a node after the taint appears."
    )


class EnvVar(_Spec):
    """A plain (non-secret) environment variable for the workers."""

    name: str = Field(
        min_length=1, max_length=253, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$", description="The variable's name."
    )
    value: str = Field("", max_length=32_768, description="Its value, in plain text: secrets belong in Secrets.")


_GRACE_COVERS_TIMEOUT = (
    f"terminationGracePeriodSeconds must be at least jobTimeoutSeconds + {SHUTDOWN_MARGIN_S}:"
    f" a worker that scale-in removes gets the grace period less {SHUTDOWN_MARGIN_S} s to finish its jobs"
)

#: Per pool: the longest one job may run, and a pod grace period that covers it.
#: A crew job makes several LLM round trips (each up to llm.timeoutSeconds).
DEFAULT_JOB_TIMEOUT_S = {kind: int(seconds) for kind, seconds in RUNTIME_JOB_TIMEOUT_S.items()}
DEFAULT_GRACE_S = {kind: max(30, timeout + SHUTDOWN_MARGIN_S + 5) for kind, timeout in DEFAULT_JOB_TIMEOUT_S.items()}

_POOL_RULES = _cel(
    {
        "rule": f"self.terminationGracePeriodSeconds >= self.jobTimeoutSeconds + {SHUTDOWN_MARGIN_S}",
        "message": _GRACE_COVERS_TIMEOUT,
        "fieldPath": ".terminationGracePeriodSeconds",
    },
    {
        "rule": "self.minReplicas <= self.maxReplicas",
        "message": "minReplicas must not exceed maxReplicas",
        "fieldPath": ".minReplicas",
    },
    {
        "rule": "!has(self.env) || self.env.all(e, !(e.name in " + repr(list(RESERVED_ENV)) + "))",
        "message": "env may not set a variable the operator manages: " + ", ".join(RESERVED_ENV),
        "fieldPath": ".env",
    },
)


class PoolSpec(_Spec):
    """One worker pool: a Deployment of workers consuming one BullMQ queue."""

    model_config = ConfigDict(json_schema_extra=_POOL_RULES)

    queue: str
    concurrency: int
    resources: ResourceRequirements
    min_replicas: int = Field(1, ge=0, le=1000, description="Fewest workers, even with an empty queue (0 is allowed).")
    max_replicas: int = Field(10, ge=1, le=1000, description="Most workers the autoscaler may run.")
    autoscaling: AutoscalingSpec = AutoscalingSpec()
    job_timeout_seconds: int
    termination_grace_period_seconds: int
    node_selector: dict[str, LabelValue] = Field(
        default_factory=dict, max_length=64, description="Labels a worker's node must have (the pods' nodeSelector)."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=64, description="Taints the workers tolerate (the pods' tolerations)."
    )
    affinity: PassThroughObject | None = Field(
        None, description="The pods' affinity (node, pod and anti-affinity), passed through as is."
    )
    topology_spread_constraints: list[PassThroughObject] = Field(
        default_factory=list,
        max_length=16,
        description="The pods' topologySpreadConstraints; without a labelSelector they count the pool's pods.",
    )
    pod_annotations: dict[str, LabelValue] = Field(
        default_factory=dict, max_length=64, description="Annotations added to every worker pod."
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=64,
        description="Extra plain environment variables for the workers; the operator's own cannot be overridden.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> PoolSpec:
        if self.termination_grace_period_seconds < self.job_timeout_seconds + SHUTDOWN_MARGIN_S:
            raise ValueError(_GRACE_COVERS_TIMEOUT)
        if self.min_replicas > self.max_replicas:
            raise ValueError("minReplicas must not exceed maxReplicas")
        reserved = sorted({variable.name for variable in self.env} & set(RESERVED_ENV))
        if reserved:
            raise ValueError(f"env may not set a variable the operator manages: {', '.join(reserved)}")
        return self

    @property
    def shutdown_grace_seconds(self) -> int:
        """The runtime's in-flight grace: always inside the pod's termination grace period."""
        return self.termination_grace_period_seconds - SHUTDOWN_MARGIN_S


def _queue(kind: WorkerKind) -> Any:
    return Field(
        DEFAULT_QUEUES[kind],
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="BullMQ queue the pool consumes.",
    )


def _concurrency(kind: WorkerKind) -> Any:
    return Field(DEFAULT_CONCURRENCY[kind], ge=1, le=1000, description="Jobs each worker runs at once.")


def _job_timeout(kind: WorkerKind) -> Any:
    return Field(
        DEFAULT_JOB_TIMEOUT_S[kind],
        ge=1,
        le=86_400 - SHUTDOWN_MARGIN_S,
        description="A job running longer is stopped and fails (retried as its attempts allow);"
        " terminationGracePeriodSeconds must cover it, so scale-in never cuts a job short.",
    )


def _grace(kind: WorkerKind) -> Any:
    return Field(
        DEFAULT_GRACE_S[kind],
        ge=SHUTDOWN_MARGIN_S + 1,
        le=86_400,
        description=f"Pod grace period; workers get {SHUTDOWN_MARGIN_S} s less to finish in-flight jobs,"
        " then give the unfinished ones back to the queue. At least jobTimeoutSeconds"
        f" + {SHUTDOWN_MARGIN_S}.",
    )


class AuthPoolSpec(PoolSpec):
    """Phone authentication and sessions: light, latency-sensitive jobs."""

    queue: str = _queue(WorkerKind.AUTH)
    concurrency: int = _concurrency(WorkerKind.AUTH)
    job_timeout_seconds: int = _job_timeout(WorkerKind.AUTH)
    termination_grace_period_seconds: int = _grace(WorkerKind.AUTH)
    resources: ResourceRequirements = ResourceRequirements(
        requests={"cpu": "100m", "memory": "128Mi"}, limits={"memory": "512Mi"}
    )


class CrewPoolSpec(PoolSpec):
    """CrewAI crews: long jobs that mostly wait on the LLM."""

    queue: str = _queue(WorkerKind.CREW)
    concurrency: int = _concurrency(WorkerKind.CREW)
    job_timeout_seconds: int = _job_timeout(WorkerKind.CREW)
    termination_grace_period_seconds: int = _grace(WorkerKind.CREW)
    resources: ResourceRequirements = ResourceRequirements(
        requests={"cpu": "250m", "memory": "512Mi"}, limits={"memory": "2Gi"}
    )


class AdminPoolSpec(PoolSpec):
    """Administrative jobs: rare and small."""

    queue: str = _queue(WorkerKind.ADMIN)
    concurrency: int = _concurrency(WorkerKind.ADMIN)
    job_timeout_seconds: int = _job_timeout(WorkerKind.ADMIN)
    termination_grace_period_seconds: int = _grace(WorkerKind.ADMIN)
    resources: ResourceRequirements = ResourceRequirements(
        requests={"cpu": "50m", "memory": "128Mi"}, limits={"memory": "512Mi"}
    )


class PoolsSpec(_Spec):
    """The worker pools, by kind; at least one."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            {
                "rule": "has(self.auth) || has(self.crew) || has(self.admin)",
                "message": "pools must define at least one worker pool: auth, crew or admin",
            }
        )
    )

    auth: AuthPoolSpec | None = None
    crew: CrewPoolSpec | None = None
    admin: AdminPoolSpec | None = None

    @model_validator(mode="after")
    def _at_least_one(self) -> PoolsSpec:
        if not self.items():
            raise ValueError("pools must define at least one worker pool: auth, crew or admin")
        return self

    def items(self) -> list[tuple[WorkerKind, PoolSpec]]:
        """The defined pools, in a stable order (auth, crew, admin)."""
        defined: list[tuple[WorkerKind, PoolSpec | None]] = [
            (WorkerKind.AUTH, self.auth),
            (WorkerKind.CREW, self.crew),
            (WorkerKind.ADMIN, self.admin),
        ]
        return [(kind, pool) for kind, pool in defined if pool is not None]


class MigrationsSpec(_Spec):
    """The database schema's migrations, run by the operator before workers roll to a new image."""

    enabled: bool = Field(
        True,
        description=(
            "Run `falachefe-runtime migrate` (the image's own migrations) as a Job for each new image, "
            "and roll the workers to that image only once it succeeded. false: the database is migrated "
            "some other way, and workers roll at once (they refuse to start on a schema they lack)."
        ),
    )
    active_deadline_seconds: int = Field(
        600, ge=30, le=86_400, description="How long one migration may run before its Job fails (index builds)."
    )


class LocalObjectReference(_Spec):
    """A Secret in the Falachefe's namespace, by name."""

    name: ObjectName = Field(description="Name of the Secret.")


_CREW_NEEDS_LLM = "llm is required when pools.crew is set: crews need an LLM endpoint"
_AUTH_NEEDS_OTP_REF = "auth.otpSecretRef is required when pools.auth is set: one-time codes are hashed with its key"


class FalachefeSpec(_Spec):
    """A Falachefe installation: one runtime image, its backing services and its worker pools."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            {"rule": "!has(self.pools.crew) || has(self.llm)", "message": _CREW_NEEDS_LLM, "fieldPath": ".llm"},
            {
                "rule": "!has(self.pools.auth) || (has(self.auth) && has(self.auth.otpSecretRef))",
                "message": _AUTH_NEEDS_OTP_REF,
                "fieldPath": ".auth",
            },
        )
    )

    image: str = Field(min_length=1, max_length=1024, description="The runtime image (this project's Dockerfile).")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="When the node pulls the image (a container's imagePullPolicy)."
    )
    image_pull_secrets: list[LocalObjectReference] = Field(
        default_factory=list, max_length=16, description="Secrets to pull the image with, from this namespace."
    )
    database: DatabaseSpec
    redis: RedisSpec
    llm: LLMSpec | None = None
    auth: AuthSpec | None = None
    pools: PoolsSpec
    migrations: MigrationsSpec = Field(
        MigrationsSpec(), description="How the database schema is brought up to the image's."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="The workers' log level (they log one JSON object per line)."
    )
    paused: bool = Field(False, description="Stop reconciling and autoscaling; owned objects are left as they are.")

    @model_validator(mode="after")
    def _pools_need_their_settings(self) -> FalachefeSpec:
        if self.pools.crew is not None and self.llm is None:
            raise ValueError(_CREW_NEEDS_LLM)
        if self.pools.auth is not None and (self.auth is None or self.auth.otp_secret_ref is None):
            raise ValueError(_AUTH_NEEDS_OTP_REF)
        return self
