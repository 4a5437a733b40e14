"""The CRD's pool spec mapped onto a ScalingPolicy, and errors that name the field."""

from __future__ import annotations

from typing import Any

import pytest

from falachefe_operator.scaling.policy import (
    DEFAULT_SCALE_DOWN,
    DEFAULT_SCALE_UP,
    PolicyError,
    RuleType,
    ScalingRule,
    policy_from_spec,
)


def test_absent_fields_take_the_hpa_defaults() -> None:
    policy = policy_from_spec({"maxReplicas": 10, "autoscaling": {"targetQueueDepthPerReplica": 20}})
    assert policy.min_replicas == 1
    assert policy.tolerance == 0.1
    assert policy.target_cpu_utilization_percentage is None
    assert policy.scale_up == DEFAULT_SCALE_UP
    assert policy.scale_up.policies == (ScalingRule(RuleType.PODS, 4, 15), ScalingRule(RuleType.PERCENT, 100, 15))
    assert policy.scale_down.stabilization_window_seconds == 300
    assert policy.scale_down == DEFAULT_SCALE_DOWN


@pytest.mark.parametrize(
    ("pool", "message"),
    [
        ({"minReplicas": 5, "maxReplicas": 2, "autoscaling": {"targetQueueDepthPerReplica": 1}}, "maxReplicas (2)"),
        ({"autoscaling": {"targetQueueDepthPerReplica": 1}}, "spec.pools.crew.maxReplicas: required"),
        ({"maxReplicas": "ten", "autoscaling": {"targetQueueDepthPerReplica": 1}}, "spec.pools.crew.maxReplicas"),
        ({"maxReplicas": 3, "autoscaling": {}}, "set targetQueueDepthPerReplica or targetCPUUtilizationPercentage"),
        ({"maxReplicas": 3, "autoscaling": {"targetQueueDepthPerReplica": 0}}, "targetQueueDepthPerReplica must be"),
        ({"maxReplicas": 3, "autoscaling": {"targetQueueDepthPerReplica": 1, "tolerance": 1.5}}, "tolerance"),
        (
            {
                "maxReplicas": 3,
                "autoscaling": {
                    "targetQueueDepthPerReplica": 1,
                    "behavior": {"scaleUp": {"policies": [{"type": "pods", "value": 1, "periodSeconds": 5}]}},
                },
            },
            "spec.pools.crew.autoscaling.behavior.scaleUp.policies[0].type: must be Pods or Percent, got 'pods'",
        ),
        (
            {
                "maxReplicas": 3,
                "autoscaling": {
                    "targetQueueDepthPerReplica": 1,
                    "behavior": {"scaleDown": {"policies": [{"type": "Pods", "value": -1, "periodSeconds": 5}]}},
                },
            },
            "spec.pools.crew.autoscaling.behavior.scaleDown.policies[0]: value must be > 0, got -1",
        ),
        (
            {
                "maxReplicas": 3,
                "autoscaling": {"targetQueueDepthPerReplica": 1, "behavior": {"scaleDown": {"selectPolicy": "Most"}}},
            },
            "spec.pools.crew.autoscaling.behavior.scaleDown.selectPolicy: must be one of Max, Min, Disabled",
        ),
        (
            {
                "maxReplicas": 3,
                "autoscaling": {
                    "targetQueueDepthPerReplica": 1,
                    "behavior": {"scaleDown": {"stabilizationWindowSeconds": 7200}},
                },
            },
            "scaleDown: stabilizationWindowSeconds must be in [0, 3600], got 7200",
        ),
    ],
)
def test_bad_specs_name_the_field(pool: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        policy_from_spec(pool, "spec.pools.crew")
    assert message in str(caught.value)
