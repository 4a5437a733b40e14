"""The pydantic model of the spec: defaults, aliases and the rules the CRD's CEL twins enforce."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from falachefe_operator.autoscaling import scaling_policy
from falachefe_operator.controller import describe_validation_error
from falachefe_operator.scaling.policy import DEFAULT_SCALE_DOWN, DEFAULT_SCALE_UP
from falachefe_operator.spec import FalachefeSpec
from falachefe_runtime.config import DEFAULT_CONCURRENCY, DEFAULT_QUEUES, WorkerKind


def minimal(**pools: Any) -> dict[str, Any]:
    return {
        "image": "falachefe:1",
        "database": {"secretRef": {"name": "db"}},
        "redis": {"secretRef": {"name": "redis"}},
        "llm": {"model": "m"},
        "auth": {"otpSecretRef": {"name": "otp"}},
        "pools": pools or {"auth": {}},
    }


def refused(spec: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as error:
        FalachefeSpec.model_validate(spec)
    return describe_validation_error(error.value)


def test_each_pool_kind_defaults_to_the_runtime_queue_and_concurrency() -> None:
    spec = FalachefeSpec.model_validate(minimal(auth={}, crew={}, admin={}))
    for kind, pool in spec.pools.items():
        assert pool.queue == DEFAULT_QUEUES[kind]
        assert pool.concurrency == DEFAULT_CONCURRENCY[kind]
    assert [kind for kind, _ in spec.pools.items()] == [WorkerKind.AUTH, WorkerKind.CREW, WorkerKind.ADMIN]


def test_secret_keys_default_per_use() -> None:
    spec = FalachefeSpec.model_validate(
        {
            **minimal(),
            "database": {"secretRef": {"name": "db"}, "replicaSecretRef": {"name": "replica"}},
            "llm": {"apiKeySecretRef": {"name": "llm"}},
            "auth": {"otpSecretRef": {"name": "otp"}},
        }
    )
    assert spec.database.secret_ref.key == "dsn"
    assert spec.database.replica_secret_ref is not None and spec.database.replica_secret_ref.key == "dsn"
    assert spec.redis.secret_ref.key == "url"
    assert spec.llm is not None and spec.llm.api_key_secret_ref is not None
    assert spec.llm.api_key_secret_ref.key == "apiKey"
    assert spec.auth is not None and spec.auth.otp_secret_ref is not None
    assert spec.auth.otp_secret_ref.key == "otpSecret"


def test_autoscaling_defaults_are_the_hpas() -> None:
    pool = FalachefeSpec.model_validate(minimal()).pools.auth
    assert pool is not None
    policy = scaling_policy(pool)
    assert policy.scale_up == DEFAULT_SCALE_UP
    assert policy.scale_down == DEFAULT_SCALE_DOWN
    assert policy.tolerance == 0.1
    assert policy.target_cpu_utilization_percentage == 70
    assert policy.target_queue_depth_per_replica == 10


def test_cpu_target_zero_scales_on_the_queue_alone() -> None:
    spec = FalachefeSpec.model_validate(minimal(auth={"autoscaling": {"targetCPUUtilizationPercentage": 0}}))
    assert spec.pools.auth is not None
    assert scaling_policy(spec.pools.auth).target_cpu_utilization_percentage is None


def test_camel_case_aliases_including_the_acronyms() -> None:
    spec = FalachefeSpec.model_validate(
        minimal(
            auth={"minReplicas": 0, "autoscaling": {"targetCPUUtilizationPercentage": 55}},
        )
        | {"llm": {"baseURL": "http://llm.local/v1", "model": "m"}}
    )
    assert spec.llm is not None and spec.llm.base_url == "http://llm.local/v1"
    assert spec.pools.auth is not None
    assert spec.pools.auth.autoscaling.target_cpu_utilization_percentage == 55
    dumped = spec.model_dump(by_alias=True, exclude_none=True)
    assert dumped["llm"]["baseURL"] == "http://llm.local/v1"
    assert dumped["pools"]["auth"]["autoscaling"]["targetCPUUtilizationPercentage"] == 55


def test_shutdown_grace_stays_inside_the_pod_grace_period() -> None:
    spec = FalachefeSpec.model_validate(minimal(crew={"terminationGracePeriodSeconds": 120, "jobTimeoutSeconds": 100}))
    assert spec.pools.crew is not None
    assert spec.pools.crew.shutdown_grace_seconds == 115
    assert "terminationGracePeriodSeconds" in refused(minimal(auth={"terminationGracePeriodSeconds": 5}))


def test_each_pools_default_grace_period_covers_its_job_timeout() -> None:
    spec = FalachefeSpec.model_validate(minimal(auth={}, crew={}, admin={}))
    for _, pool in spec.pools.items():
        assert pool.shutdown_grace_seconds >= pool.job_timeout_seconds
    assert spec.pools.crew is not None and spec.pools.crew.job_timeout_seconds == 180


def test_a_grace_period_shorter_than_the_job_timeout_is_refused_naming_both_fields() -> None:
    problem = refused(minimal(crew={"terminationGracePeriodSeconds": 30}))
    assert "terminationGracePeriodSeconds must be at least jobTimeoutSeconds + 5" in problem


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        (minimal(auth={"minReplicas": 3, "maxReplicas": 2}), "spec.pools.auth", "minReplicas must not exceed"),
        (minimal(auth={"replicas": 3}), "spec.pools.auth.replicas", "Extra inputs are not permitted"),
        (minimal(auth={"concurrency": -1}), "spec.pools.auth.concurrency", "greater than or equal to 1"),
        ({**minimal(), "pools": {}}, "spec.pools", "at least one worker pool"),
        ({**minimal(), "pools": {"bogus": {}}}, "spec.pools.bogus", "Extra inputs are not permitted"),
        ({**minimal(crew={}), "llm": None}, "spec", "llm is required when pools.crew is set"),
        (
            minimal(auth={"env": [{"name": "FALACHEFE_REDIS__URL", "value": "x"}]}),
            "spec.pools.auth",
            "env may not set a variable the operator manages",
        ),
        (
            {**minimal(), "database": {"secretRef": {"name": "db"}, "primaryPool": {"minSize": 9, "maxSize": 3}}},
            "spec.database.primaryPool",
            "minSize must not exceed maxSize",
        ),
        (minimal(auth={"autoscaling": {"tolerance": 1.5}}), "spec.pools.auth.autoscaling.tolerance", "less than 1"),
    ],
    ids=[
        "min-above-max",
        "unknown-pool-field",
        "negative-concurrency",
        "no-pools",
        "unknown-pool",
        "crew-without-llm",
        "reserved-env",
        "connection-pool-bounds",
        "tolerance",
    ],
)
def test_invalid_specs_are_refused_naming_the_field(spec: dict[str, Any], field: str, words: str) -> None:
    message = refused(spec)
    assert message.startswith(field), message
    assert words in message, message


def test_a_valid_spec_round_trips_through_its_wire_form() -> None:
    spec = FalachefeSpec.model_validate(minimal(auth={}, crew={"minReplicas": 0}))
    wire = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert FalachefeSpec.model_validate(wire) == spec


def test_a_queue_wait_target_reaches_the_policy_and_the_depth_default_stays() -> None:
    spec = FalachefeSpec.model_validate(minimal(auth={"autoscaling": {"targetQueueWaitSeconds": 12.5}}))
    assert spec.pools.auth is not None
    policy = scaling_policy(spec.pools.auth)
    assert policy.target_queue_wait_seconds == 12.5
    assert policy.target_queue_depth_per_replica == 10
    default = FalachefeSpec.model_validate(minimal()).pools.auth
    assert default is not None
    assert scaling_policy(default).target_queue_wait_seconds is None


def test_a_negative_queue_wait_target_names_the_field() -> None:
    with pytest.raises(ValidationError, match="targetQueueWaitSeconds"):
        FalachefeSpec.model_validate(minimal(auth={"autoscaling": {"targetQueueWaitSeconds": -1}}))
