"""The runtime's configuration: one validated model, read once at start-up.

This module is the only one the operator imports from the runtime: the
operator renders a ``RuntimeConfig`` (minus secrets) into the pool's
ConfigMap, and the worker reads it back here. Keep it free of I/O and of
heavy imports (no asyncpg, redis, crewai) so that importing it is cheap.

Sources, highest precedence first:

1. environment variables ``FALACHEFE_<SECTION>__<FIELD>``, one per setting
   (``FALACHEFE_DATABASE__PRIMARY__MIN_SIZE``); a secret may instead be read
   from the file that ``FALACHEFE_<SECTION>__<FIELD>_FILE`` names (a mounted
   Secret: it never shows in the pod's environment);
2. the YAML file named by ``FALACHEFE_CONFIG_FILE`` (the mounted ConfigMap);
3. the defaults below, which are the seed document's numbers.

Only those variables are read. Any other ``FALACHEFE_*`` variable (another
tool's, a whole section as JSON, a typo) is left alone, so a stray variable
in someone's environment cannot stop a worker; ``unrecognised_variables``
lists the ones that look like settings, for a warning. A variable that is a
setting but does not parse is named in the error (``describe_config_error``).

Secrets are ``SecretStr``: their ``repr`` and ``str`` print ``**********``, so
neither a log line nor a validation error can leak a DSN or an API key.
"""

from __future__ import annotations

import enum
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from falachefe_runtime.redact import url_problem

CONFIG_FILE_ENV = "FALACHEFE_CONFIG_FILE"
ENV_PREFIX = "FALACHEFE_"
#: Suffix of the variable naming a file that holds a secret setting's value.
FILE_SUFFIX = "_FILE"


def env_name(field: str) -> str:
    """The environment variable that sets a dotted field: ``database.dsn`` -> ``FALACHEFE_DATABASE__DSN``."""
    return ENV_PREFIX + field.upper().replace(".", "__")


class ConfigSourceError(ValueError):
    """A configuration source could not be read; the message names the variable or file."""


class WorkerKind(enum.StrEnum):
    """What a worker pool does; each kind consumes one BullMQ queue by default."""

    AUTH = "auth"
    CREW = "crew"
    ADMIN = "admin"


#: The queues the original TypeScript app produces, by worker kind.
DEFAULT_QUEUES: dict[WorkerKind, str] = {
    WorkerKind.AUTH: "whatsapp-processing",
    WorkerKind.CREW: "crewai-processing",
    WorkerKind.ADMIN: "admin-tasks",
}

#: The seed's per-queue worker concurrency.
DEFAULT_CONCURRENCY: dict[WorkerKind, int] = {
    WorkerKind.AUTH: 5,
    WorkerKind.CREW: 3,
    WorkerKind.ADMIN: 1,
}

#: The longest one job of each pool may run (``worker.job_timeout_s`` unset):
#: a crew job makes several LLM round trips. The operator's pool defaults are
#: these, so a pool that does not set its own sends no setting at all (an
#: older image, which refuses settings it does not know, runs unchanged).
DEFAULT_JOB_TIMEOUT_S: dict[WorkerKind, float] = {
    WorkerKind.AUTH: 20.0,
    WorkerKind.CREW: 180.0,
    WorkerKind.ADMIN: 20.0,
}

#: Between a pod's name and a random suffix in a worker's bullmq id, so in
#: its jobs' lock tokens (``<pod>/<suffix>:<n>``); no pod name contains it.
LOCK_HOLDER_SEPARATOR = "/"

Seconds = Annotated[float, Field(gt=0)]


class _Section(BaseModel):
    """A config section: unknown keys are typos, and typos are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PoolSettings(_Section):
    """Sizing of one asyncpg pool."""

    min_size: int = Field(5, ge=0)
    max_size: int = Field(20, ge=1)
    statement_timeout_s: Seconds = 30.0

    @model_validator(mode="after")
    def _min_le_max(self) -> PoolSettings:
        if self.min_size > self.max_size:
            raise ValueError(f"min_size ({self.min_size}) must not exceed max_size ({self.max_size})")
        return self


def _replica_pool() -> PoolSettings:
    return PoolSettings(min_size=2, max_size=10, statement_timeout_s=10.0)


class DatabaseSettings(_Section):
    """PostgreSQL: the primary and an optional read replica."""

    dsn: SecretStr | None = None
    replica_dsn: SecretStr | None = None
    primary: PoolSettings = PoolSettings()
    replica: PoolSettings = Field(default_factory=_replica_pool)
    idle_timeout_s: Seconds = 30.0
    connect_timeout_s: Seconds = 2.0
    application_name: str = Field("falachefe-runtime", max_length=63)
    slow_query_threshold_s: Seconds = 1.0
    #: Attempts for an operation that is safe to repeat when its connection
    #: drops (reads, writes marked idempotent, and acquiring a connection).
    retry_attempts: int = Field(3, ge=1, le=10)

    @field_validator("dsn", "replica_dsn")
    @classmethod
    def _postgres_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        return _checked_scheme(value, ("postgresql", "postgres"))


class RedisSettings(_Section):
    """Redis: cache (L2), cache invalidation bus and the BullMQ queues."""

    url: SecretStr | None = None
    #: BullMQ's key prefix; the original app uses BullMQ's default.
    queue_prefix: str = Field("bull", min_length=1)
    #: Prefix of the cache's keys, separate from the queues'.
    cache_prefix: str = Field("falachefe:cache", min_length=1)
    socket_timeout_s: Seconds = 5.0

    @field_validator("url")
    @classmethod
    def _redis_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        return _checked_scheme(value, ("redis", "rediss", "unix"))


def _checked_scheme(value: SecretStr | None, schemes: tuple[str, ...]) -> SecretStr | None:
    """Refuse a URL of another scheme, or one that parsers would misread, naming nothing of the value."""
    if value is not None and urlsplit(value.get_secret_value()).scheme not in schemes:
        raise ValueError("must start with " + " or ".join(f"{name}://" for name in schemes))
    if value is not None and (problem := url_problem(value.get_secret_value())):
        raise ValueError(problem)
    return value


class CacheTTLs(_Section):
    """Redis (L2) TTL per kind of entry, from the seed document."""

    session_s: int = Field(86_400, gt=0)
    whatsapp_auth_s: int = Field(300, gt=0)
    crew_response_s: int = Field(1_800, gt=0)
    company_config_s: int = Field(3_600, gt=0)
    #: A company's active crew (agents, tasks, process); not in the seed,
    #: as long-lived as the company's own configuration.
    crew_config_s: int = Field(3_600, gt=0)


class CacheSettings(_Section):
    """The two-layer cache: a bounded in-process L1 over Redis."""

    #: 0 turns the in-process layer off (every read goes to Redis).
    l1_max_entries: int = Field(1_000, ge=0)
    l1_ttl_s: Seconds = 60.0
    ttl: CacheTTLs = CacheTTLs()
    #: A cache call that waits on Redis longer than this gives up and goes to
    #: the loader: a slow cache must not be slower than the database.
    redis_timeout_s: Seconds = 0.5
    #: How long one process may hold a key's load lock before another process
    #: stops waiting for it and loads the value itself.
    load_lock_s: Seconds = 5.0


class LLMSettings(_Section):
    """The OpenAI-compatible endpoint the crews talk to."""

    model: str = "gpt-4o-mini"
    base_url: str | None = None
    api_key: SecretStr | None = None
    timeout_s: Seconds = 60.0


class WorkerSettings(_Section):
    """One worker process: which pool it serves and how hard it works."""

    kind: WorkerKind = WorkerKind.AUTH
    queue: str | None = None
    concurrency: int | None = Field(None, ge=1, le=1_000)
    #: SIGTERM: time in-flight jobs get to finish before the process exits.
    shutdown_grace_s: Seconds = 25.0
    #: Threads that run blocking CrewAI kickoffs (crew workers only).
    crew_threads: int = Field(4, ge=1, le=64)
    #: A job running longer fails (and is retried as its attempts allow); unset, the pool's default.
    job_timeout_s: Seconds | None = None
    #: The pod the worker runs in (unset: the host name, which is the pod's
    #: name in Kubernetes): written into the worker's bullmq lock tokens, so
    #: the operator can tell which pods hold jobs and have scale-in remove
    #: idle ones first.
    pod_name: str | None = Field(None, min_length=1, max_length=253, pattern=r"^[^:/]+$")

    @property
    def queue_name(self) -> str:
        return self.queue or DEFAULT_QUEUES[self.kind]

    @property
    def effective_concurrency(self) -> int:
        return self.concurrency or DEFAULT_CONCURRENCY[self.kind]

    @property
    def effective_job_timeout_s(self) -> float:
        return self.job_timeout_s or DEFAULT_JOB_TIMEOUT_S[self.kind]


class QueueSettings(_Section):
    """BullMQ worker tuning: how soon a dead worker's jobs go to another worker.

    A job whose worker died is taken over about ``lock_duration_s`` plus up
    to two ``stalled_interval_s`` later; live workers renew their locks every
    quarter of ``lock_duration_s``. A job that stalls more than
    ``max_stalled_count`` times is failed instead of retried. Failed jobs
    are kept ``failed_retention_days``.
    """

    lock_duration_s: Seconds = 30.0
    stalled_interval_s: Seconds = 30.0
    max_stalled_count: int = Field(1, ge=0)
    #: How long a failed job stays in the failed set, for ``falachefe-runtime
    #: failed`` to show and retry, before BullMQ deletes it. By age, not by
    #: count: a burst of failures must not push out the ones before it. The
    #: failed set's Redis memory grows with the failures of that many days.
    failed_retention_days: float = Field(7.0, gt=0, le=365)

    @property
    def keep_failed(self) -> dict[str, int]:
        """BullMQ's ``removeOnFail`` (its ``KeepJobs``: ``age`` in seconds) for this retention."""
        return {"age": round(self.failed_retention_days * 86_400)}


class AuthSettings(_Section):
    """Phone authentication: sessions, one-time codes and their limits."""

    session_ttl_s: int = Field(86_400, gt=0)
    otp_ttl_s: int = Field(300, gt=0)
    otp_max_attempts: int = Field(5, ge=1)
    #: One-time codes a phone may request per window.
    otp_requests_per_window: int = Field(3, ge=1)
    otp_request_window_s: int = Field(900, gt=0)
    #: Key used to hash one-time codes (HMAC); required to link phones.
    otp_secret: SecretStr | None = None


class ObservabilitySettings(_Section):
    """Where the worker exposes health and metrics, and how it logs."""

    metrics_port: int = Field(9102, ge=0, le=65_535)
    health_port: int = Field(8080, ge=0, le=65_535)
    #: The address both bind: every interface of the pod by default (probes and scrapes come from
    #: outside it); loopback where nothing outside should reach them (a developer's machine, tests).
    listen_address: str = "0.0.0.0"  # noqa: S104 - see above
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    log_format: Literal["json", "text"] = "json"
    #: The ``Falachefe`` this worker belongs to (the operator sets both), as
    #: every log line's ``namespace`` and ``name``, like the operator's own.
    resource_namespace: str | None = None
    resource_name: str | None = None

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class RuntimeConfig(BaseSettings):
    """Everything a worker process needs, validated before it touches a socket."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    database: DatabaseSettings = DatabaseSettings()
    redis: RedisSettings = RedisSettings()
    cache: CacheSettings = CacheSettings()
    llm: LLMSettings = LLMSettings()
    worker: WorkerSettings = WorkerSettings()
    queues: QueueSettings = QueueSettings()
    auth: AuthSettings = AuthSettings()
    observability: ObservabilitySettings = ObservabilitySettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, SettingVariables(settings_cls, os.environ)]
        config_file = os.environ.get(CONFIG_FILE_ENV)
        if config_file:
            path = Path(config_file)
            if not path.is_file():
                raise ConfigSourceError(f"{CONFIG_FILE_ENV}={config_file}: no such file")
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)

    def public_dict(self) -> dict[str, Any]:
        """The config without its secrets: what goes into a ConfigMap or a log."""
        return self.model_dump(
            mode="json",
            exclude={
                "database": {"dsn", "replica_dsn"},
                "redis": {"url"},
                "llm": {"api_key"},
                "auth": {"otp_secret"},
            },
        )


# -- where settings come from ------------------------------------------------


def setting_fields(model: type[BaseModel] = RuntimeConfig, prefix: str = "") -> dict[str, FieldInfo]:
    """Every leaf setting by dotted name (``database.primary.min_size``), in declaration order."""
    fields: dict[str, FieldInfo] = {}
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            fields.update(setting_fields(field.annotation, f"{dotted}."))
        else:
            fields[dotted] = field
    return fields


def is_secret(field: FieldInfo) -> bool:
    return field.annotation is SecretStr or SecretStr in typing.get_args(field.annotation)


def _nested(dotted: str, value: Any) -> dict[str, Any]:
    head, _, rest = dotted.partition(".")
    return {head: _nested(rest, value) if rest else value}


def _merge(into: dict[str, Any], update: Mapping[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


class SettingVariables(PydanticBaseSettingsSource):
    """``FALACHEFE_<SECTION>__<FIELD>`` for each leaf setting, and ``..._FILE`` for each secret; nothing else.

    pydantic-settings' own environment source also reads a whole section
    from one variable as JSON, so any ``FALACHEFE_CACHE`` in the environment
    (a build tool's cache directory, say) broke every command. This source
    asks for the variables it knows by name and never parses one as JSON.
    """

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self._environ = environ

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        # Unused: __call__ reads every leaf itself (the base class asks per top-level field).
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for dotted, field in setting_fields(self.settings_cls).items():
            variable = env_name(dotted)
            value = self._environ.get(variable)
            if is_secret(field) and variable + FILE_SUFFIX in self._environ:
                if value is not None:
                    raise ConfigSourceError(f"set {variable} or {variable}{FILE_SUFFIX}, not both")
                value = _read_secret_file(variable + FILE_SUFFIX, self._environ[variable + FILE_SUFFIX])
            if value is not None:
                _merge(values, _nested(dotted, value))
        return values


def _read_secret_file(variable: str, path: str) -> str:
    """A mounted Secret's value, without the trailing newline an editor or ``echo`` leaves."""
    try:
        return Path(path).read_text().rstrip("\r\n")
    except OSError as error:
        raise ConfigSourceError(f"{variable}={path}: cannot read the file ({error.strerror or error})") from None


def unrecognised_variables(environ: Mapping[str, str]) -> list[str]:
    """``FALACHEFE_`` variables shaped like a setting (``SECTION__FIELD``) that are none: typos, old names."""
    known = {CONFIG_FILE_ENV}
    for dotted, field in setting_fields().items():
        known.add(env_name(dotted))
        if is_secret(field):
            known.add(env_name(dotted) + FILE_SUFFIX)
    return sorted(name for name in environ if name.startswith(ENV_PREFIX) and "__" in name and name not in known)


def describe_config_error(error: ValidationError, environ: Mapping[str, str]) -> str:
    """Each problem with the setting it is about and where it was set, never the value.

    ``worker.concurrency`` set by ``FALACHEFE_WORKER__CONCURRENCY`` reads
    ``FALACHEFE_WORKER__CONCURRENCY (worker.concurrency): Input should be a
    valid integer``; a value from the config file names the file.
    """
    config_file = environ.get(CONFIG_FILE_ENV)
    problems = []
    for item in error.errors(include_url=False, include_input=False, include_context=False):
        dotted = ".".join(str(part) for part in item["loc"])
        variables = [
            name
            for setting in setting_fields()
            if setting == dotted or setting.startswith(dotted + ".")
            for name in (env_name(setting), env_name(setting) + FILE_SUFFIX)
            if name in environ
        ]
        if variables:
            where = f"{', '.join(variables)} ({dotted})"
        elif config_file:
            where = f"{dotted} in {config_file}"
        else:
            where = dotted or "(top level)"
        problems.append(f"{where}: {item['msg']}")
    return "; ".join(problems)
