"""A pool's scaling policy: bounds, targets and the HPA's ``behavior``.

The field names mirror the CRD's camelCase (``minReplicas`` is
``min_replicas``, ``autoscaling.behavior.scaleUp`` is ``scale_up``, ...);
the operator maps its typed spec onto these (``falachefe_operator.autoscaling``),
and a value the decision cannot work with is a ``PolicyError`` naming the
field the way the CRD spells it.

Defaults are the Kubernetes HPA's (autoscaling/v2), so a platform team that
knows the HPA gets what it expects:

- scale up: no stabilization, at most +4 pods or +100% per 15 s, the larger;
- scale down: 300 s stabilization, at most -100% per 15 s.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass, field

#: The HPA caps a policy's period at 30 minutes and a stabilization window at an hour.
MAX_PERIOD_SECONDS = 1_800
MAX_STABILIZATION_WINDOW_SECONDS = 3_600


class PolicyError(ValueError):
    """A pool's autoscaling spec cannot be used; the message names the field."""


class Term(enum.StrEnum):
    """A part of the decision beyond the HPA, each switchable for the benchmark's ablations.

    - ``arrivals``: arrival rate x measured service time / concurrency
      (Little's law), the replicas needed to keep up: sizes a scale-up and
      holds back a scale-down (never starts a scale-up: the simulation
      benchmark found that letting it start one bought no SLO-violation
      second on any trace and cost pod-seconds on most: bench/README.md);
    - ``backlog-jump``: a scale-up the present backlog alone asks for goes
      to that size in one poll, past the HPA's default scaleUp rate limits
      (scaleUp rules a team wrote itself are kept);
    - ``inflight-floor``: never below the replicas in-flight jobs occupy;
    - ``service-time-rise``: the measured service time is the larger of the
      rate window's and its later half's, so jobs that got longer are seen
      in half the window.
    """

    ARRIVALS = "arrivals"
    BACKLOG_JUMP = "backlog-jump"
    INFLIGHT_FLOOR = "inflight-floor"
    SERVICE_TIME_RISE = "service-time-rise"


ALL_TERMS = frozenset(Term)


class RuleType(enum.StrEnum):
    """How a rate-limit rule counts: absolute pods or a percentage of the pool."""

    PODS = "Pods"
    PERCENT = "Percent"


class SelectPolicy(enum.StrEnum):
    """Which rule wins when several apply (the HPA's ``selectPolicy``)."""

    MAX = "Max"  # the rule allowing the largest change
    MIN = "Min"  # the rule allowing the smallest change
    DISABLED = "Disabled"  # no change in this direction


@dataclass(frozen=True)
class ScalingRule:
    """At most ``value`` pods (or percent) of change per ``period_seconds``."""

    type: RuleType
    value: int
    period_seconds: int

    def __post_init__(self) -> None:
        if self.value <= 0:
            raise PolicyError(f"value must be > 0, got {self.value}")
        if not 0 < self.period_seconds <= MAX_PERIOD_SECONDS:
            raise PolicyError(f"periodSeconds must be in (0, {MAX_PERIOD_SECONDS}], got {self.period_seconds}")

    def __str__(self) -> str:
        unit = "%" if self.type is RuleType.PERCENT else ""
        return f"{self.type.value} {self.value}{unit}/{self.period_seconds}s"


@dataclass(frozen=True)
class ScalingRules:
    """One direction's behavior: a stabilization window and rate limits."""

    stabilization_window_seconds: int
    policies: tuple[ScalingRule, ...]
    select_policy: SelectPolicy = SelectPolicy.MAX

    def __post_init__(self) -> None:
        if not 0 <= self.stabilization_window_seconds <= MAX_STABILIZATION_WINDOW_SECONDS:
            raise PolicyError(
                f"stabilizationWindowSeconds must be in [0, {MAX_STABILIZATION_WINDOW_SECONDS}],"
                f" got {self.stabilization_window_seconds}"
            )
        if not self.policies and self.select_policy is not SelectPolicy.DISABLED:
            raise PolicyError("policies must not be empty unless selectPolicy is Disabled")

    @property
    def longest_period_seconds(self) -> int:
        return max((rule.period_seconds for rule in self.policies), default=0)


DEFAULT_SCALE_UP = ScalingRules(
    stabilization_window_seconds=0,
    policies=(ScalingRule(RuleType.PODS, 4, 15), ScalingRule(RuleType.PERCENT, 100, 15)),
)
DEFAULT_SCALE_DOWN = ScalingRules(
    stabilization_window_seconds=300,
    policies=(ScalingRule(RuleType.PERCENT, 100, 15),),
)


@dataclass(frozen=True)
class ScalingPolicy:
    """Everything the decision needs to know about what the platform team wants.

    ``forecast_horizon_seconds`` and ``rate_window_seconds`` go beyond the HPA:
    the first is how far ahead a growing queue is projected to size a
    scale-up (0, the default, projects nothing: in the simulation benchmark a
    projection bought no SLO-violation second on any trace once a backlog
    may be met in one poll, and cost pod-seconds: bench/README.md), the second
    how much history the arrival and completion rates are averaged over.

    ``target_queue_wait_seconds`` states the queue target as the time a job
    should wait at most, which is what platform teams agree on; the depth per
    replica is derived from it and the measured service time (see
    ``decision.depth_per_replica``). When it is set it replaces
    ``target_queue_depth_per_replica``.

    ``terms`` are the decision's parts beyond the HPA (``Term``), all on by
    default; the simulation benchmark switches them off one at a time.
    """

    max_replicas: int
    min_replicas: int = 1
    target_queue_depth_per_replica: float | None = None
    target_cpu_utilization_percentage: float | None = None
    target_queue_wait_seconds: float | None = None
    tolerance: float = 0.1
    scale_up: ScalingRules = field(default=DEFAULT_SCALE_UP)
    scale_down: ScalingRules = field(default=DEFAULT_SCALE_DOWN)
    forecast_horizon_seconds: float = 0.0
    rate_window_seconds: float = 60.0
    terms: frozenset[Term] = ALL_TERMS

    def __post_init__(self) -> None:
        if self.min_replicas < 0:
            raise PolicyError(f"minReplicas must be >= 0, got {self.min_replicas}")
        if self.max_replicas < max(self.min_replicas, 1):
            raise PolicyError(
                f"maxReplicas ({self.max_replicas}) must be >= minReplicas ({self.min_replicas}) and >= 1"
            )
        if (
            self.target_queue_depth_per_replica is None
            and self.target_queue_wait_seconds is None
            and self.target_cpu_utilization_percentage is None
        ):
            raise PolicyError(
                "set targetQueueWaitSeconds, targetQueueDepthPerReplica or targetCPUUtilizationPercentage"
            )
        if self.target_queue_wait_seconds is not None and not self.target_queue_wait_seconds >= 0:
            raise PolicyError(f"targetQueueWaitSeconds must be >= 0, got {self.target_queue_wait_seconds}")
        if self.target_queue_depth_per_replica is not None and not self.target_queue_depth_per_replica > 0:
            raise PolicyError(f"targetQueueDepthPerReplica must be > 0, got {self.target_queue_depth_per_replica}")
        if self.target_cpu_utilization_percentage is not None and not self.target_cpu_utilization_percentage > 0:
            raise PolicyError(
                f"targetCPUUtilizationPercentage must be > 0, got {self.target_cpu_utilization_percentage}"
            )
        if not 0 <= self.tolerance < 1:
            raise PolicyError(f"tolerance must be in [0, 1), got {self.tolerance}")
        if not self.rate_window_seconds > 0:
            raise PolicyError(f"rateWindowSeconds must be > 0, got {self.rate_window_seconds}")
        if not self.forecast_horizon_seconds >= 0:
            raise PolicyError(f"forecastHorizonSeconds must be >= 0, got {self.forecast_horizon_seconds}")

    # Cached (the instance is frozen; a policy is built once per spec, read on every poll).
    @functools.cached_property
    def history_seconds(self) -> float:
        """How far back the decision looks: windows, rate-limit periods and rates."""
        return max(
            self.scale_up.stabilization_window_seconds,
            self.scale_down.stabilization_window_seconds,
            self.scale_up.longest_period_seconds,
            self.scale_down.longest_period_seconds,
            self.rate_window_seconds,
        )

    @functools.cached_property
    def default_scale_up(self) -> bool:
        """Whether the scale-up rules are the HPA's defaults (nobody's choice), not a team's own."""
        return self.scale_up == DEFAULT_SCALE_UP
