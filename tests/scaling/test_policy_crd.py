"""The contract with the CRD: a pool spec as the API server serves it maps onto a ScalingPolicy."""

from __future__ import annotations

from falachefe_operator.scaling.policy import DEFAULT_SCALE_UP, RuleType, ScalingRule, SelectPolicy, policy_from_spec
from falachefe_operator.spec import AuthPoolSpec


def test_the_operators_pool_spec_maps_as_served() -> None:
    """The contract with the CRD: a pool as the API server returns it (camelCase, defaults filled)."""
    pool = AuthPoolSpec().model_dump(by_alias=True, mode="json")
    pool["autoscaling"]["behavior"]["scaleDown"] = {
        "stabilizationWindowSeconds": 30,
        "selectPolicy": "Min",
        "policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}],
    }
    policy = policy_from_spec(pool, "spec.pools.auth")
    assert (policy.min_replicas, policy.max_replicas) == (pool["minReplicas"], pool["maxReplicas"])
    assert policy.target_queue_depth_per_replica == pool["autoscaling"]["targetQueueDepthPerReplica"]
    assert policy.target_cpu_utilization_percentage == pool["autoscaling"]["targetCPUUtilizationPercentage"]
    assert policy.polling_interval_seconds == pool["autoscaling"]["pollingIntervalSeconds"]
    assert policy.scale_up == DEFAULT_SCALE_UP
    assert policy.scale_down.stabilization_window_seconds == 30
    assert policy.scale_down.select_policy is SelectPolicy.MIN
    assert policy.scale_down.policies == (ScalingRule(RuleType.PODS, 2, 60),)
