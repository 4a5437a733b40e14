"""The runtime's configuration: one validated model, read once at start-up.

This module is the only one the operator imports from the runtime: the
operator renders a ``RuntimeConfig`` (minus secrets) into the pool's
ConfigMap, and the worker reads it back here. Keep it free of I/O and of
heavy imports (no asyncpg, redis, crewai) so that importing it is cheap.

Sources, highest precedence first:

1. environment variables ``FALACHEFE_<SECTION>__<FIELD>`` (secrets arrive
   this way, from ``secretKeyRef``);
2. the YAML file named by ``FALACHEFE_CONFIG_FILE`` (the mounted ConfigMap);
3. the defaults below, which are the seed document's numbers.

Secrets are ``SecretStr``: their ``repr`` and ``str`` print ``**********``, so
neither a log line nor a validation error can leak a DSN or an API key.
"""

from __future__ import annotations

import enum
import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

CONFIG_FILE_ENV = "FALACHEFE_CONFIG_FILE"
ENV_PREFIX = "FALACHEFE_"


def env_name(field: str) -> str:
    """The environment variable that sets a dotted field: ``database.dsn`` -> ``FALACHEFE_DATABASE__DSN``."""
    return ENV_PREFIX + field.upper().replace(".", "__")


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


class RedisSettings(_Section):
    """Redis: cache (L2), cache invalidation bus and the BullMQ queues."""

    url: SecretStr | None = None
    #: BullMQ's key prefix; the original app uses BullMQ's default.
    queue_prefix: str = Field("bull", min_length=1)
    #: Prefix of the cache's keys, separate from the queues'.
    cache_prefix: str = Field("falachefe:cache", min_length=1)
    socket_timeout_s: Seconds = 5.0


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

    @property
    def queue_name(self) -> str:
        return self.queue or DEFAULT_QUEUES[self.kind]

    @property
    def effective_concurrency(self) -> int:
        return self.concurrency or DEFAULT_CONCURRENCY[self.kind]


class QueueSettings(_Section):
    """BullMQ worker tuning: how soon a dead worker's jobs go to another worker.

    A job whose worker died is taken over about ``lock_duration_s`` plus up
    to two ``stalled_interval_s`` later; live workers renew their locks every
    quarter of ``lock_duration_s``. A job that stalls more than
    ``max_stalled_count`` times is failed instead of retried.
    """

    lock_duration_s: Seconds = 30.0
    stalled_interval_s: Seconds = 30.0
    max_stalled_count: int = Field(1, ge=0)


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
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    log_format: str = Field("json", pattern=r"^(json|text)$")

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
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_FILE_ENV)
        if config_file:
            path = Path(config_file)
            if not path.is_file():
                raise FileNotFoundError(f"{CONFIG_FILE_ENV}={config_file}: no such file")
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
