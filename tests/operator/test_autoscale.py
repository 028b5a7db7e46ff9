"""The autoscaler's pure helpers: pod classification, deletion costs, the persisted window."""

from __future__ import annotations

from typing import Any

from messaging_operator import status
from messaging_operator.autoscale import (
    deletion_costs,
    history_from_status,
    history_to_status,
    persisted_window,
    pod_sample,
    policy_for,
    verdict_changes_status,
    window_from_status,
)
from messaging_operator.reconcile import ScalingVerdict
from messaging_operator.scaling import PodSample, Recommendation
from messaging_operator.spec import parse_spec
from tests.operator.samples import MINIMAL_SPEC


def pod(
    name: str,
    phase: str = "Running",
    ready: bool = True,
    deleting: bool = False,
    ip: str | None = "127.0.0.9",
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    if ip:
        status["podIP"] = ip
    return {"metadata": meta, "status": status}


def test_pods_are_classified_as_the_hpa_does() -> None:
    assert pod_sample(pod("a")) == (PodSample("a", ready=True), "127.0.0.9")
    assert pod_sample(pod("b", ready=False))[0] == PodSample("b", ready=False)
    assert pod_sample(pod("c", phase="Pending", ready=False, ip=None)) == (
        PodSample("c", ready=False),
        None,
    )
    assert pod_sample(pod("d", deleting=True))[0].gone
    assert pod_sample(pod("e", phase="Failed", ready=False))[0].gone


def test_deletion_costs_follow_the_socket_counts_and_skip_unchanged_pods() -> None:
    samples = [
        PodSample("busy", ready=True, sockets=900),
        PodSample("quiet", ready=True, sockets=3),
        PodSample("same", ready=True, sockets=50),
        PodSample("silent", ready=True, sockets=None),
        PodSample("starting", ready=False),
        PodSample("huge", ready=True, sockets=1e12),
    ]
    costs = deletion_costs(samples, {"same": "50", "busy": "10"})
    assert costs == {"busy": "900", "quiet": "3", "huge": str(2**31 - 1)}


def test_the_stabilization_window_survives_a_round_trip_through_the_status() -> None:
    history = [Recommendation(at=1_700_000_000.0, replicas=4), Recommendation(1_700_000_015.0, 6)]
    stored = history_to_status(history)
    assert stored[0] == {"time": "2023-11-14T22:13:20Z", "replicas": 4}
    assert history_from_status({"recommendations": stored}) == history
    assert history_from_status({"recommendations": [{"time": "garbage", "replicas": 1}]}) == []


def test_the_policy_comes_from_the_spec() -> None:
    spec = parse_spec(
        {
            **MINIMAL_SPEC,
            "autoscaling": {"targetConnectionsPerPod": 800, "scaleDownStabilizationSeconds": 60},
        }
    )
    policy = policy_for(spec)
    assert (policy.min_replicas, policy.max_replicas) == (2, 10)
    assert policy.target_per_pod == 800 and policy.stabilization_seconds == 60
    assert policy.tolerance == 0.1


def test_a_steady_window_is_not_rewritten_when_only_its_times_move() -> None:
    stored = {"recommendations": [{"time": "2023-11-14T22:13:20Z", "replicas": 4}]}
    newer = [Recommendation(at=1_700_000_300.0, replicas=4)]
    assert persisted_window(newer, stored) == stored["recommendations"]
    changed = [Recommendation(at=1_700_000_300.0, replicas=4), Recommendation(1_700_000_315.0, 3)]
    assert persisted_window(changed, stored) == history_to_status(changed)


def test_after_a_restart_the_window_can_only_delay_a_scale_down() -> None:
    record = {
        "recommendations": [
            {"time": "2023-11-14T22:13:20Z", "replicas": 6},
            {"time": "2023-11-14T22:13:35Z", "replicas": 2},
        ]
    }
    now = 1_700_001_000.0
    window = window_from_status(record, current=4, now=now)
    # The recommendation above the current count counts from the restart; lower ones keep time.
    assert window[0] == Recommendation(at=now, replicas=6)
    assert window[1] == Recommendation(at=1_700_000_015.0, replicas=2)


def test_only_a_verdict_that_changes_the_status_costs_a_pass() -> None:
    cond = status.Condition(status.SCALING_ACTIVE, "False", "FailedGetPodsMetric", "none")
    verdict = ScalingVerdict(
        desired=2, condition=cond, record={"recommendations": []}, sockets=None
    )
    previous: dict[str, Any] = {
        "desiredReplicas": 2,
        "scaling": {"recommendations": []},
        "conditions": [
            {"type": "ScalingActive", "status": "False", "reason": "FailedGetPodsMetric",
             "message": "none"}
        ],
    }  # fmt: skip
    assert not verdict_changes_status(verdict, previous)
    assert verdict_changes_status(verdict, {**previous, "desiredReplicas": 3})
    assert verdict_changes_status(verdict, {**previous, "connectedSockets": 0})
