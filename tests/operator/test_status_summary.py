"""Conditions and the status summary: pure functions of what the operator observed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from falachefe_operator import conditions
from falachefe_operator.conditions import Condition
from falachefe_operator.status import (
    FalachefeStatus,
    Observation,
    PoolObservation,
    Problem,
    ScalingReport,
    summarize,
    without_live_figures,
)
from falachefe_runtime.config import WorkerKind

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def test_transition_time_moves_only_when_the_status_changes() -> None:
    first = conditions.merge([], [Condition("Ready", "False", "WorkersNotReady", "0/2")], generation=1, now=T0)
    assert first == [
        {
            "type": "Ready",
            "status": "False",
            "reason": "WorkersNotReady",
            "message": "0/2",
            "observedGeneration": 1,
            "lastTransitionTime": "2026-01-01T12:00:00Z",
        }
    ]
    # Same status, new reason, message and generation: the transition time stays.
    second = conditions.merge(first, [Condition("Ready", "False", "SecretNotFound", "db")], generation=2, now=T1)
    assert second[0]["lastTransitionTime"] == "2026-01-01T12:00:00Z"
    assert second[0]["reason"] == "SecretNotFound"
    assert second[0]["observedGeneration"] == 2
    # The status flips: the transition time is now.
    third = conditions.merge(second, [Condition("Ready", "True", "WorkersReady", "2/2")], generation=2, now=T1)
    assert third[0]["lastTransitionTime"] == "2026-01-01T12:05:00Z"


def test_conditions_this_operator_no_longer_reports_are_dropped() -> None:
    previous = [{"type": "Stale", "status": "True", "reason": "X", "message": "", "lastTransitionTime": "x"}]
    merged = conditions.merge(previous, [Condition("Ready", "Unknown", "Reconciling", "")], generation=1, now=T0)
    assert [c["type"] for c in merged] == ["Ready"]


def deployment(replicas: int, available: int, *, generation: int = 1, observed: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": observed,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": available,
            "availableReplicas": available,
        },
    }


def by_type(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def pools(**observations: PoolObservation) -> dict[WorkerKind, PoolObservation]:
    return {WorkerKind(kind): observation for kind, observation in observations.items()}


def test_first_visit_sets_every_condition() -> None:
    status = summarize(
        Observation(generation=1, pools=pools(auth=PoolObservation(autoscaling=True))), previous={}, now=T0
    )
    found = by_type(status)
    assert list(found) == ["Ready", "Progressing", "Degraded", "ScalingActive"]
    assert found["Ready"]["status"] == "False" and found["Ready"]["reason"] == "Reconciling"
    assert found["ScalingActive"]["status"] == "Unknown"
    assert status["observedGeneration"] == 1
    FalachefeStatus.model_validate(status)  # the shape the CRD declares


def test_ready_when_every_pool_is_rolled_out_and_available() -> None:
    report = ScalingReport(
        desired_replicas=2, queue_depth=7, cpu_utilization=None, metrics_available=True, message="ok"
    )
    status = summarize(
        Observation(
            generation=3,
            applied_generation=3,
            pools=pools(
                auth=PoolObservation(autoscaling=True, deployment=deployment(2, 2), scaling=report),
                crew=PoolObservation(autoscaling=False, deployment=deployment(0, 0)),
            ),
        ),
        previous={},
        now=T0,
    )
    found = by_type(status)
    assert (found["Ready"]["status"], found["Ready"]["reason"]) == ("True", "WorkersReady")
    assert (found["Progressing"]["status"], found["Progressing"]["reason"]) == ("False", "RolloutComplete")
    assert found["Degraded"]["status"] == "False"
    assert found["ScalingActive"]["status"] == "True"
    assert status["workers"] == "2/2"
    assert status["queueDepth"] == 7
    assert status["pools"]["auth"] == {"replicas": 2, "readyReplicas": 2, "desiredReplicas": 2, "queueDepth": 7}
    assert status["poolSummary"] == "auth 2/2 q7, crew 0/0"


def test_a_rollout_in_progress_is_progressing_and_not_ready() -> None:
    status = summarize(
        Observation(
            generation=2,
            applied_generation=2,
            pools=pools(auth=PoolObservation(autoscaling=False, deployment=deployment(3, 1, generation=2, observed=1))),
        ),
        previous={},
        now=T0,
    )
    found = by_type(status)
    assert (found["Ready"]["status"], found["Ready"]["reason"]) == ("False", "WorkersNotReady")
    assert "auth 1/3 available" in found["Ready"]["message"]
    assert (found["Progressing"]["status"], found["Progressing"]["reason"]) == ("True", "RollingOut")


def test_a_missing_secret_degrades_and_says_which() -> None:
    problem = Problem("SecretNotFound", "Secret shop/db not found (spec.database.secretRef.name)")
    status = summarize(
        Observation(
            generation=1,
            applied_generation=1,
            problems=[problem],
            pools=pools(auth=PoolObservation(autoscaling=False, deployment=deployment(1, 0))),
        ),
        previous={},
        now=T0,
    )
    found = by_type(status)
    assert (found["Ready"]["status"], found["Ready"]["reason"]) == ("False", "SecretNotFound")
    assert (found["Degraded"]["status"], found["Degraded"]["reason"]) == ("True", "SecretNotFound")
    assert "spec.database.secretRef.name" in found["Degraded"]["message"]


def test_unavailable_metrics_hold_the_size_and_say_so() -> None:
    down = ScalingReport(None, None, None, metrics_available=False, message="queue unavailable: redis refused")
    status = summarize(
        Observation(
            generation=1, applied_generation=1, pools=pools(auth=PoolObservation(True, deployment(1, 1), down))
        ),
        previous={},
        now=T0,
    )
    scaling = by_type(status)["ScalingActive"]
    assert (scaling["status"], scaling["reason"]) == ("False", "MetricsUnavailable")
    assert "redis refused" in scaling["message"]


def test_paused_says_why_everywhere() -> None:
    status = summarize(
        Observation(generation=4, paused=True, pools=pools(auth=PoolObservation(True, deployment(1, 1)))),
        previous={},
        now=T0,
    )
    found = by_type(status)
    assert found["Ready"]["reason"] == "Paused" and "spec.paused" in found["Ready"]["message"]
    assert (found["Progressing"]["status"], found["Progressing"]["reason"]) == ("False", "Paused")
    assert (found["ScalingActive"]["status"], found["ScalingActive"]["reason"]) == ("False", "Paused")


def test_invalid_spec_reports_the_field() -> None:
    problem = Problem("InvalidSpec", "spec.pools.auth: minReplicas must not exceed maxReplicas")
    status = summarize(Observation(generation=2, problems=[problem]), previous={}, now=T0)
    found = by_type(status)
    assert found["Degraded"]["reason"] == "InvalidSpec"
    assert found["Ready"]["message"] == problem.message
    assert found["Progressing"]["reason"] == "InvalidSpec"


def test_an_unchanged_observation_gives_an_identical_status() -> None:
    observation = Observation(
        generation=1, applied_generation=1, pools=pools(auth=PoolObservation(False, deployment(1, 1)))
    )
    first = summarize(observation, previous={}, now=T0)
    assert summarize(observation, previous=first, now=T1) == first


def test_pods_starting_are_figures_and_turning_ready_is_meaningful() -> None:
    """What the controller writes at once (meaningful) and what waits for the interval (``without_live_figures``)."""

    def status(auth: tuple[int, int], crew: tuple[int, int], *, desired: int = 1, problem: bool = False) -> Any:
        report = ScalingReport(desired, 0, None, True, "ok")
        return summarize(
            Observation(
                generation=1,
                applied_generation=1,
                pools=pools(
                    auth=PoolObservation(autoscaling=True, deployment=deployment(*auth), scaling=report),
                    crew=PoolObservation(autoscaling=True, deployment=deployment(*crew), scaling=report),
                ),
                problems=[Problem("SecretNotFound", "Secret x/db not found")] if problem else [],
            ),
            previous={},
            now=T0,
        )

    starting = status((1, 0), (1, 0))
    # One pool's pod Ready: counts and the Ready condition's wording move, nothing meaningful.
    halfway = status((1, 1), (1, 0))
    assert halfway != starting
    assert without_live_figures(halfway) == without_live_figures(starting)
    # Every pod Ready: Ready turns True.
    ready = status((1, 1), (1, 1))
    assert without_live_figures(ready) != without_live_figures(halfway)
    # A scale decision, and a problem, are meaningful too.
    assert without_live_figures(status((1, 1), (1, 1), desired=2)) != without_live_figures(ready)
    assert without_live_figures(status((1, 1), (1, 1), problem=True)) != without_live_figures(ready)
