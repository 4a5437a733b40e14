"""The objects a ``Falachefe`` should own, built from its spec: a pure function.

``desired_objects`` takes the resource's name, namespace, uid and parsed spec
and returns the manifests to server-side apply: one ConfigMap (the runtime
config), one metrics Service, and per pool a Deployment and a
PodDisruptionBudget. No I/O, no clock: the same spec always gives the same
manifests, which is what makes re-applying them a no-op.

Secrets reach the workers as files, never as environment variables (which
any process in the container, a crash dump or ``kubectl describe`` of a
misconfigured pod may show): one projected volume holds the keys the pool
needs, each at the path of its setting (``database.dsn``), and the runtime
reads ``FALACHEFE_DATABASE__DSN_FILE``. A pool gets only the secrets its
kind uses: no crew worker holds the one-time-code key, no auth worker the
LLM's.

Two things are deliberately left out of every manifest:

- a Deployment's ``spec.replicas``: the autoscaler owns it (through the
  scale subresource), and a server-side apply that set it would take it back
  on every reconcile;
- status and anything else the API server or controllers fill in.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from falachefe_runtime.config import (
    CONFIG_FILE_ENV,
    FILE_SUFFIX,
    DatabaseSettings,
    LLMSettings,
    ObservabilitySettings,
    PoolSettings,
    RedisSettings,
    RuntimeConfig,
    WorkerKind,
    env_name,
)
from falachefe_runtime.config import DEFAULT_JOB_TIMEOUT_S as RUNTIME_JOB_TIMEOUT_S

from . import naming
from .spec import FalachefeSpec, PoolSpec, SecretKeyRef

#: The runtime's ports (the worker pod contract): health and metrics.
_PORTS = ObservabilitySettings()
HEALTH_PORT = _PORTS.health_port
METRICS_PORT = _PORTS.metrics_port
CONTAINER_NAME = "worker"
MIGRATION_CONTAINER_NAME = "migrate"
#: Where the pool's secrets are mounted, one file per setting.
SECRETS_DIR = "/var/run/secrets/falachefe"
#: The image's user and group (the Dockerfile's USER): explicit, so no
#: image can run a worker as another user, and the secrets' files
#: (group-readable only) belong to it.
WORKER_UID = 10001


@dataclass(frozen=True)
class ObjectRef:
    """Where an owned object lives in the API: enough to apply, delete and recognise it."""

    api_version: str
    kind: str
    plural: str
    namespace: str
    name: str

    @property
    def collection(self) -> str:
        """The path of the kind's collection in the object's namespace."""
        group_version = f"/api/{self.api_version}" if "/" not in self.api_version else f"/apis/{self.api_version}"
        return f"{group_version}/namespaces/{self.namespace}/{self.plural}"

    @property
    def path(self) -> str:
        return f"{self.collection}/{self.name}"

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.name)


#: The kinds of objects a Falachefe owns: (apiVersion, kind, plural).
OWNED_KINDS = (
    ("v1", "ConfigMap", "configmaps"),
    ("v1", "Service", "services"),
    ("apps/v1", "Deployment", "deployments"),
    ("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets"),
    ("batch/v1", "Job", "jobs"),
)
_PLURALS = {kind: plural for _, kind, plural in OWNED_KINDS}


def ref_of(manifest: Mapping[str, Any]) -> ObjectRef:
    metadata = manifest["metadata"]
    kind = manifest["kind"]
    return ObjectRef(manifest["apiVersion"], kind, _PLURALS[kind], metadata["namespace"], metadata["name"])


@dataclass(frozen=True)
class Resource:
    """The owning resource, as far as its objects need to know it."""

    name: str
    namespace: str
    uid: str
    spec: FalachefeSpec
    #: The image the workers run: ``spec.image`` once the database is migrated
    #: for it (its migration Job succeeded), until then the one they run now.
    #: ``None`` only before any worker ran: then no pool is applied yet.
    worker_image: str | None = None
    #: Per pool, the pod template's config hash to keep: a Deployment an
    #: earlier operator version made for this same config (see ``kept_config_hashes``).
    config_hashes: Mapping[WorkerKind, str] = field(default_factory=dict)
    #: The workers already run ``spec.image`` on a schema it knows, with no
    #: Job of ours (an operator before migrations made them): none is run.
    migration_adopted: bool = False

    @property
    def workers_due(self) -> bool:
        """Whether the pools' objects are applied (else only what the migration needs)."""
        return self.worker_image is not None


def desired_objects(resource: Resource) -> list[dict[str, Any]]:
    """Every object ``resource`` should own, in apply order (config before its consumers)."""
    config = runtime_config_yaml(resource)
    objects = [config_map(resource, config), metrics_service(resource)]
    job = migration_job(resource)
    if job is not None:
        objects.append(job)
    if resource.workers_due:
        config_hash = config_digest(config)
        for kind, pool in resource.spec.pools.items():
            objects.append(deployment(resource, kind, pool, config_hash))
            objects.append(disruption_budget(resource, kind))
    return objects


def kept_config_hashes(
    resource: Resource, live: Mapping[WorkerKind, Mapping[str, Any]], *, reconciled_by_earlier_operator: bool
) -> dict[WorkerKind, str]:
    """The pools whose pod template keeps its config hash, so its workers are not rolled for nothing.

    ``live`` holds each existing Deployment's annotations (``configDigest``:
    the Deployment's ``CONFIG_DIGEST_ANNOTATION``, ``configHash``: its pod
    template's ``CONFIG_HASH_ANNOTATION``). A template keeps its hash while
    the config it was made for is the one desired (the digests agree). A
    Deployment without a digest was made by an operator before this rule,
    whose hash covered its whole runtime's defaults: it is taken as made
    for this config when that operator reconciled this very generation of
    the spec (the spec maps to the same settings), and keeps its hash. Any
    later change of the config rolls the pods as always.
    """
    digest = config_digest(runtime_config_yaml(resource))
    kept = {}
    for kind, seen in live.items():
        live_hash, live_digest = seen.get("configHash"), seen.get("configDigest")
        if live_hash and (live_digest == digest or (live_digest is None and reconciled_by_earlier_operator)):
            kept[kind] = str(live_hash)
    return kept


def desired_keys(resource: Resource) -> list[tuple[str, str]]:
    """(kind, name) of every object ``resource`` should own."""
    return [(manifest["kind"], manifest["metadata"]["name"]) for manifest in desired_objects(resource)]


def config_digest(config: str) -> str:
    """What a pool's pod template says of its config file (``naming.CONFIG_HASH_ANNOTATION``): a change rolls it."""
    return hashlib.sha256(config.encode()).hexdigest()[:16]


def runtime_config_yaml(resource: Resource) -> str:
    """The workers' config file: the settings the spec sets (never secrets), nothing else.

    It also names the resource, for the workers' log lines (``namespace``, ``name``).
    Every other setting keeps the image's own default: a file holding the
    operator's defaults would name settings an image of another release
    does not know (the runtime refuses unknown keys), and every new setting
    of the operator's runtime would change it, rolling every worker when the
    operator is upgraded.

    The sections are validated models; the root is assembled with
    ``model_construct`` because ``RuntimeConfig`` is a settings class that
    would otherwise read this (operator) process's environment into the
    workers' config.
    """
    spec = resource.spec
    database = spec.database
    llm = spec.llm
    config = RuntimeConfig.model_construct(
        database=DatabaseSettings(
            primary=PoolSettings(
                min_size=database.primary_pool.min_size,
                max_size=database.primary_pool.max_size,
                statement_timeout_s=database.primary_pool.statement_timeout_seconds,
            ),
            replica=PoolSettings(
                min_size=database.replica_pool.min_size,
                max_size=database.replica_pool.max_size,
                statement_timeout_s=database.replica_pool.statement_timeout_seconds,
            ),
            idle_timeout_s=database.idle_timeout_seconds,
            connect_timeout_s=database.connect_timeout_seconds,
            slow_query_threshold_s=database.slow_query_threshold_seconds,
        ),
        redis=RedisSettings(queue_prefix=spec.redis.queue_prefix),
        llm=LLMSettings()
        if llm is None
        else LLMSettings(model=llm.model, base_url=llm.base_url, timeout_s=llm.timeout_seconds),
        observability=ObservabilitySettings(
            log_level=spec.log_level, resource_namespace=resource.namespace, resource_name=resource.name
        ),
    )
    return yaml.safe_dump(config.model_dump(mode="json", exclude_unset=True), sort_keys=True)


def _metadata(resource: Resource, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": resource.namespace,
        "labels": labels,
        "ownerReferences": [naming.owner_reference(resource.name, resource.uid)],
    }


def config_map(resource: Resource, config: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(resource, naming.config_map_name(resource.name), naming.instance_labels(resource.name)),
        "data": {naming.CONFIG_KEY: config},
    }


def metrics_service(resource: Resource) -> dict[str, Any]:
    """A headless Service over every worker: Prometheus (or a ServiceMonitor) finds each pod through it."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(resource, naming.service_name(resource.name), naming.instance_labels(resource.name)),
        "spec": {
            "clusterIP": "None",
            "selector": naming.instance_selector(resource.name),
            "ports": [{"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"}],
        },
    }


def disruption_budget(resource: Resource, kind: WorkerKind) -> dict[str, Any]:
    """One worker of a pool may be evicted at a time.

    ``maxUnavailable`` rather than ``minAvailable``: with one replica (or
    none, scaled to zero) a drain still proceeds. Unhealthy pods may always
    be evicted, so a crash-looping pool never blocks a node drain.
    """
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(
            resource, naming.disruption_budget_name(resource.name, kind), naming.pool_labels(resource.name, kind)
        ),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": naming.pool_selector(resource.name, kind)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def deployment(resource: Resource, kind: WorkerKind, pool: PoolSpec, config_hash: str) -> dict[str, Any]:
    """A pool's workers. No ``replicas``: see the module docstring."""
    spec = resource.spec
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": pool.termination_grace_period_seconds,
        "securityContext": _POD_SECURITY,
        "containers": [_container(resource, kind, pool)],
        "volumes": _volumes(resource.name, _sources(pool_secrets(spec, kind))),
    }
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": secret.name} for secret in spec.image_pull_secrets]
    if pool.node_selector:
        pod_spec["nodeSelector"] = dict(pool.node_selector)
    if pool.tolerations:
        pod_spec["tolerations"] = [
            toleration.model_dump(by_alias=True, exclude_none=True) for toleration in pool.tolerations
        ]
    if pool.affinity:
        pod_spec["affinity"] = pool.affinity
    if pool.topology_spread_constraints:
        pod_spec["topologySpreadConstraints"] = [
            # A constraint without a selector would count every pod in the namespace.
            {"labelSelector": {"matchLabels": naming.pool_selector(resource.name, kind)}, **constraint}
            for constraint in pool.topology_spread_constraints
        ]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            **_metadata(resource, naming.deployment_name(resource.name, kind), naming.pool_labels(resource.name, kind)),
            # The config the pods are made for, whatever hash their template keeps (see kept_config_hashes).
            "annotations": {naming.CONFIG_DIGEST_ANNOTATION: config_hash},
        },
        "spec": {
            "selector": {"matchLabels": naming.pool_selector(resource.name, kind)},
            "revisionHistoryLimit": 3,
            # Surge rather than unavailability: a rollout never lowers a pool's capacity.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
            "template": {
                "metadata": {
                    "labels": naming.pool_labels(resource.name, kind),
                    "annotations": {
                        **pool.pod_annotations,
                        naming.CONFIG_HASH_ANNOTATION: resource.config_hashes.get(kind, config_hash),
                        "kubectl.kubernetes.io/default-container": CONTAINER_NAME,
                    },
                },
                "spec": pod_spec,
            },
        },
    }


def migration_job(resource: Resource) -> dict[str, Any] | None:
    """The Job that migrates the database for ``spec.image`` (``None`` when migrations are not ours to run).

    Named after a digest of its pod template: a Job's template cannot
    change, so a new image (or database Secret) is a new Job, and the one
    for the current template is kept (with its pod, its logs and its
    termination message) until the next one replaces it. The container
    writes its outcome as JSON to its termination message, which the
    operator reads from the pod's status; on failure the kubelet falls back
    to the log's tail. Retried twice (a database restarting), cut after
    ``activeDeadlineSeconds``; a failed Job stays for inspection.
    """
    spec = resource.spec
    if not spec.migrations.enabled or resource.migration_adopted:
        return None
    settings = [("database.dsn", spec.database.secret_ref)]
    container = {
        "name": MIGRATION_CONTAINER_NAME,
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["falachefe-runtime", "migrate", "--termination-log", "/dev/termination-log"],
        "env": _settings_env(settings),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
        "securityContext": _CONTAINER_SECURITY,
        "volumeMounts": _mounts(),
    }
    template: dict[str, Any] = {
        "metadata": {"labels": naming.migration_labels(resource.name)},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": _POD_SECURITY,
            "containers": [container],
            "volumes": _volumes(resource.name, _sources(settings)),
            **(
                {"imagePullSecrets": [{"name": secret.name} for secret in spec.image_pull_secrets]}
                if spec.image_pull_secrets
                else {}
            ),
        },
    }
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            **_metadata(
                resource,
                naming.migration_job_name(resource.name, digest),
                {**naming.instance_labels(resource.name), naming.COMPONENT_LABEL: "migration"},
            ),
            "annotations": {naming.IMAGE_ANNOTATION: spec.image},
        },
        "spec": {
            "backoffLimit": 2,
            "activeDeadlineSeconds": spec.migrations.active_deadline_seconds,
            "template": template,
        },
    }


_POD_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": WORKER_UID,
    "runAsGroup": WORKER_UID,
    "fsGroup": WORKER_UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}
_CONTAINER_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


def _volumes(name: str, secret_sources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"name": "config", "configMap": {"name": naming.config_map_name(name)}},
        {"name": "secrets", "projected": {"defaultMode": 0o440, "sources": secret_sources}},
        {"name": "tmp", "emptyDir": {}},
    ]


def _mounts() -> list[dict[str, Any]]:
    return [
        {"name": "config", "mountPath": naming.CONFIG_DIR, "readOnly": True},
        {"name": "secrets", "mountPath": SECRETS_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - the only writable place, an emptyDir
    ]


def _container(resource: Resource, kind: WorkerKind, pool: PoolSpec) -> dict[str, Any]:
    spec = resource.spec
    resources: dict[str, Any] = {}
    if pool.resources.requests:
        resources["requests"] = dict(pool.resources.requests)
    if pool.resources.limits:
        resources["limits"] = dict(pool.resources.limits)
    return {
        "name": CONTAINER_NAME,
        "image": resource.worker_image or spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["falachefe-runtime", "worker", "--pool", kind.value],
        "env": _env(spec, kind, pool),
        "ports": [
            {"name": "health", "containerPort": HEALTH_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        # CrewAI's imports take a while on a cold node: liveness waits for the first start.
        "startupProbe": _probe("/healthz", period=2, failures=60),
        "livenessProbe": _probe("/healthz", period=10, failures=3),
        "readinessProbe": _probe("/readyz", period=5, failures=2),
        "resources": resources,
        "securityContext": _CONTAINER_SECURITY,
        "volumeMounts": _mounts(),
    }


def _probe(path: str, *, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "health"},
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }


def pool_secrets(spec: FalachefeSpec, kind: WorkerKind) -> list[tuple[str, SecretKeyRef]]:
    """The runtime settings a pool of ``kind`` reads from Secrets, with the Secret key of each."""
    secrets: list[tuple[str, SecretKeyRef | None]] = [
        ("database.dsn", spec.database.secret_ref),
        ("database.replica_dsn", spec.database.replica_secret_ref),
        ("redis.url", spec.redis.secret_ref),
    ]
    if kind is WorkerKind.CREW:
        secrets.append(("llm.api_key", spec.llm.api_key_secret_ref if spec.llm else None))
    if kind is WorkerKind.AUTH:
        secrets.append(("auth.otp_secret", spec.auth.otp_secret_ref if spec.auth else None))
    return [(setting, ref) for setting, ref in secrets if ref is not None]


def _sources(secrets: Sequence[tuple[str, SecretKeyRef]]) -> list[dict[str, Any]]:
    return [{"secret": {"name": ref.name, "items": [{"key": ref.key, "path": setting}]}} for setting, ref in secrets]


def _settings_env(secrets: Sequence[tuple[str, SecretKeyRef]]) -> list[dict[str, Any]]:
    """Where the runtime finds its configuration file and each secret setting's file (mounted by ``_volumes``)."""
    env: list[dict[str, Any]] = [{"name": CONFIG_FILE_ENV, "value": f"{naming.CONFIG_DIR}/{naming.CONFIG_KEY}"}]
    env += [{"name": env_name(setting) + FILE_SUFFIX, "value": f"{SECRETS_DIR}/{setting}"} for setting, _ in secrets]
    return env


def _env(spec: FalachefeSpec, kind: WorkerKind, pool: PoolSpec) -> list[dict[str, Any]]:
    env = _settings_env(pool_secrets(spec, kind))
    env += [
        {"name": env_name("worker.kind"), "value": kind.value},
        {"name": env_name("worker.queue"), "value": pool.queue},
        {"name": env_name("worker.concurrency"), "value": str(pool.concurrency)},
        {"name": env_name("worker.shutdown_grace_s"), "value": str(pool.shutdown_grace_seconds)},
    ]
    # The pool's default job timeout is the runtime's own: sent only when the
    # spec asks for another (the API server fills CRD defaults in, so "set"
    # cannot tell), so workers of an image older than the setting (which
    # refuse settings they do not know) are neither broken nor rolled. The
    # pod name in the workers' lock tokens is their host name.
    if pool.job_timeout_seconds != RUNTIME_JOB_TIMEOUT_S[kind]:
        env.append({"name": env_name("worker.job_timeout_s"), "value": str(pool.job_timeout_seconds)})
    env += [{"name": variable.name, "value": variable.value} for variable in pool.env]
    return env


def secret_refs(spec: FalachefeSpec) -> list[tuple[str, SecretKeyRef]]:
    """Every Secret key the workers need, with the spec field that names it."""
    refs: list[tuple[str, SecretKeyRef | None]] = [
        ("spec.database.secretRef", spec.database.secret_ref),
        ("spec.database.replicaSecretRef", spec.database.replica_secret_ref),
        ("spec.redis.secretRef", spec.redis.secret_ref),
        ("spec.llm.apiKeySecretRef", spec.llm.api_key_secret_ref if spec.llm else None),
        ("spec.auth.otpSecretRef", spec.auth.otp_secret_ref if spec.auth else None),
    ]
    return [(field, ref) for field, ref in refs if ref is not None]
