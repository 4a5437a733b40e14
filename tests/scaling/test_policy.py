"""Scaling policies: the HPA's defaults, and values the decision cannot use refused by field name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from falachefe_operator.scaling.policy import (
    DEFAULT_SCALE_DOWN,
    DEFAULT_SCALE_UP,
    PolicyError,
    RuleType,
    ScalingPolicy,
    ScalingRule,
    ScalingRules,
    SelectPolicy,
)


def test_defaults_are_the_hpas() -> None:
    policy = ScalingPolicy(max_replicas=10, target_queue_depth_per_replica=20)
    assert (policy.min_replicas, policy.tolerance) == (1, 0.1)
    assert (
        policy.scale_up
        == DEFAULT_SCALE_UP
        == ScalingRules(
            0, (ScalingRule(RuleType.PODS, 4, 15), ScalingRule(RuleType.PERCENT, 100, 15)), SelectPolicy.MAX
        )
    )
    assert policy.scale_down == DEFAULT_SCALE_DOWN == ScalingRules(300, (ScalingRule(RuleType.PERCENT, 100, 15),))
    assert str(DEFAULT_SCALE_UP.policies[1]) == "Percent 100%/15s"
    # The history kept covers the longest window, period and rate window.
    assert policy.history_seconds == 300


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ScalingPolicy(min_replicas=5, max_replicas=2, target_queue_depth_per_replica=1), "maxReplicas (2)"),
        (lambda: ScalingPolicy(min_replicas=-1, max_replicas=2, target_queue_depth_per_replica=1), "minReplicas"),
        (
            lambda: ScalingPolicy(max_replicas=3),
            "set targetQueueWaitSeconds, targetQueueDepthPerReplica or targetCPUUtilizationPercentage",
        ),
        (
            lambda: ScalingPolicy(max_replicas=3, target_queue_wait_seconds=-1),
            "targetQueueWaitSeconds must be >= 0, got -1",
        ),
        (lambda: ScalingPolicy(max_replicas=3, target_queue_depth_per_replica=0), "targetQueueDepthPerReplica must"),
        (
            lambda: ScalingPolicy(max_replicas=3, target_cpu_utilization_percentage=-5),
            "targetCPUUtilizationPercentage must be > 0, got -5",
        ),
        (lambda: ScalingPolicy(max_replicas=3, target_queue_depth_per_replica=1, tolerance=1.5), "tolerance"),
        (
            lambda: ScalingPolicy(max_replicas=3, target_queue_depth_per_replica=1, rate_window_seconds=0),
            "rateWindowSeconds must be > 0, got 0",
        ),
        (lambda: ScalingRule(RuleType.PODS, -1, 5), "value must be > 0, got -1"),
        (lambda: ScalingRule(RuleType.PERCENT, 10, 3600), "periodSeconds must be in (0, 1800], got 3600"),
        (lambda: ScalingRules(7200, DEFAULT_SCALE_DOWN.policies), "stabilizationWindowSeconds must be in [0, 3600]"),
        (lambda: ScalingRules(0, ()), "policies must not be empty unless selectPolicy is Disabled"),
    ],
)
def test_unusable_values_name_the_field(build: Callable[[], Any], message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        build()
    assert message in str(caught.value)


def test_disabled_needs_no_rules() -> None:
    assert ScalingRules(0, (), SelectPolicy.DISABLED).longest_period_seconds == 0
