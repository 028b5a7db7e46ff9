"""Status, phases, conditions and Events from what the operator observed."""

from __future__ import annotations

from typing import Any

from messaging_operator import status
from messaging_operator.status import (
    Condition,
    DeploymentState,
    MigrationState,
    Observation,
    RedisState,
    compute_status,
)

REDIS_OK = RedisState(True, "RedisReady", "ok")
T0, T1 = "2025-01-01T00:00:00Z", "2025-01-01T00:05:00Z"


def deployed(image: str = "img:1", ready: int = 2, rolled_out: bool = True) -> DeploymentState:
    return DeploymentState(
        image=image,
        replicas=2,
        ready_replicas=ready,
        updated_replicas=2,
        spec_replicas=2,
        rolled_out=rolled_out,
    )


def observe(**changes: Any) -> Observation:
    base: dict[str, Any] = {
        "generation": 3,
        "target_image": "img:1",
        "selector": "a=b",
        "desired_replicas": 2,
        "min_replicas": 2,
        "redis": REDIS_OK,
        "migration": MigrationState("img:1", "chat-migrate-1", "succeeded", "", "0003"),
        "deployment": deployed(),
    }
    return Observation(**{**base, **changes})


def conditions(st: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in st["conditions"]}


def test_a_healthy_cluster_is_running_and_ready() -> None:
    st, events = compute_status(observe(), {}, now=T0)
    assert st["phase"] == status.RUNNING
    assert st["observedGeneration"] == 3
    assert st["schemaVersion"] == "0003"
    assert st["readyReplicas"] == 2 and st["desiredReplicas"] == 2
    conds = conditions(st)
    assert conds[status.READY] == ("True", "Ready")
    assert conds[status.REDIS_READY] == ("True", "RedisReady")
    assert conds[status.MIGRATIONS_COMPLETE] == ("True", "MigrationSucceeded")
    assert conds[status.RECONCILIATION_PAUSED] == ("False", "Reconciling")
    assert {e.reason for e in events} >= {"Ready", "MigrationSucceeded", "PhaseRunning"}


def test_every_condition_type_is_reported_once() -> None:
    st, _ = compute_status(observe(), {}, now=T0)
    assert [c["type"] for c in st["conditions"]] == list(status.CONDITION_TYPES)


def test_a_running_migration_is_migrating_and_keeps_the_old_schema() -> None:
    obs = observe(
        target_image="img:2",
        migration=MigrationState("img:2", "chat-migrate-2", "running"),
    )
    st, _ = compute_status(obs, {"schemaVersion": "0003"}, now=T0)
    assert st["phase"] == status.MIGRATING
    assert conditions(st)[status.MIGRATIONS_COMPLETE] == ("False", "MigrationRunning")
    assert conditions(st)[status.READY] == ("False", "Migrating")
    assert st["schemaVersion"] == "0003"
    assert st["currentImage"] == "img:1" and st["image"] == "img:2"


def test_a_failed_migration_with_old_pods_serving_is_degraded_with_the_reason() -> None:
    obs = observe(
        target_image="img:2",
        migration=MigrationState("img:2", "chat-migrate-2", "failed", "BackoffLimitExceeded"),
    )
    st, events = compute_status(obs, {}, now=T0)
    assert st["phase"] == status.DEGRADED
    cond = next(c for c in st["conditions"] if c["type"] == status.MIGRATIONS_COMPLETE)
    assert (cond["status"], cond["reason"]) == ("False", "MigrationFailed")
    assert "BackoffLimitExceeded" in cond["message"] and "img:2" in cond["message"]
    warnings = [e for e in events if e.type == "Warning"]
    assert {e.reason for e in warnings} >= {"MigrationFailed"}


def test_a_failed_first_migration_with_nothing_serving_is_failed() -> None:
    obs = observe(
        migration=MigrationState("img:1", "chat-migrate-1", "failed", "boom"), deployment=None
    )
    st, _ = compute_status(obs, {}, now=T0)
    assert st["phase"] == status.FAILED


def test_an_invalid_spec_is_failed_with_the_message() -> None:
    obs = observe(spec_error="invalid spec: replicas: min > max", redis=None, migration=None)
    st, events = compute_status(obs, {}, now=T0)
    assert st["phase"] == status.FAILED
    assert conditions(st)[status.READY] == ("False", "InvalidSpec")
    assert any(e.type == "Warning" and e.reason == "InvalidSpec" for e in events)


def test_missing_secrets_keep_it_pending_and_name_them() -> None:
    obs = observe(
        missing_secrets=("chat-db/dsn",),
        deployment=None,
        migration=MigrationState("img:1", "j", "absent"),
    )
    st, _ = compute_status(obs, {}, now=T0)
    ready = next(c for c in st["conditions"] if c["type"] == status.READY)
    assert ready["reason"] == "SecretNotFound" and "chat-db/dsn" in ready["message"]
    assert st["phase"] == status.PENDING


def test_the_first_pods_of_a_migrated_image_are_still_migrating_then_running() -> None:
    st, _ = compute_status(observe(deployment=deployed(ready=0)), {"phase": "Migrating"}, now=T0)
    assert st["phase"] == status.MIGRATING
    assert conditions(st)[status.READY] == ("False", "NoReadyReplicas")
    st, _ = compute_status(observe(deployment=deployed(ready=1)), st, now=T0)
    assert st["phase"] == status.MIGRATING
    st, _ = compute_status(observe(), st, now=T0)
    assert st["phase"] == status.RUNNING


def test_fewer_ready_pods_than_the_minimum_after_running_is_degraded() -> None:
    st, _ = compute_status(observe(deployment=deployed(ready=1)), {"phase": "Running"}, now=T0)
    assert st["phase"] == status.DEGRADED


def test_the_phases_of_a_first_start_go_pending_migrating_running() -> None:
    """The README's order; Redis starting is Pending even while the migration Job runs."""
    redis_starting = RedisState(False, "RedisNotReady", "starting")
    steps = [
        observe(
            redis=redis_starting, migration=MigrationState("img:1", "j", "running"), deployment=None
        ),
        observe(migration=MigrationState("img:1", "j", "running"), deployment=None),
        observe(deployment=None),
        observe(deployment=deployed(ready=0, rolled_out=False)),
        observe(deployment=deployed(ready=1, rolled_out=False)),
        observe(),
    ]
    previous: dict[str, Any] = {}
    phases = []
    for obs in steps:
        previous, _ = compute_status(obs, previous, now=T0)
        phases.append(previous["phase"])
    assert phases == ["Pending", "Migrating", "Migrating", "Migrating", "Migrating", "Running"]


def test_a_healthy_rollout_is_running_not_degraded() -> None:
    healthy, _ = compute_status(observe(), {}, now=T0)
    rolling = DeploymentState(
        image="img:1", replicas=3, ready_replicas=2, updated_replicas=1, spec_replicas=2,
        rolled_out=False,
    )  # fmt: skip
    st, events = compute_status(observe(deployment=rolling), healthy, now=T1)
    assert st["phase"] == status.RUNNING
    assert not [e for e in events if e.type == "Warning"]


def test_a_healthy_start_up_posts_no_warning() -> None:
    steps = [
        observe(redis=RedisState(False, "RedisNotReady", "starting"), deployment=None,
                migration=MigrationState("img:1", "j", "running"),
                scaling=Condition(status.SCALING_ACTIVE, "False", "FailedGetPodsMetric", "none")),
        observe(deployment=deployed(ready=0),
                scaling=Condition(status.SCALING_ACTIVE, "False", "FailedGetPodsMetric", "none")),
        observe(scaling=Condition(status.SCALING_ACTIVE, "True", "WithinTolerance", "ok")),
    ]  # fmt: skip
    previous: dict[str, Any] = {}
    warnings = []
    for obs in steps:
        previous, events = compute_status(obs, previous, now=T0)
        warnings += [e.reason for e in events if e.type == "Warning"]
    assert warnings == []


def test_paused_with_a_pending_image_is_not_migrating() -> None:
    obs = observe(
        paused=True,
        target_image="img:2",
        migration=MigrationState("img:2", "j2", "absent"),
    )
    st, _ = compute_status(obs, {"phase": "Running"}, now=T0)
    assert st["phase"] == status.RUNNING
    assert conditions(st)[status.READY] == ("False", "Paused")


def test_a_name_conflict_is_reported_and_needs_a_human() -> None:
    clash = "Secret chat-redis exists and was not created by this MessagingCluster"
    obs = observe(conflicts=(clash,), deployment=None)
    st, events = compute_status(obs, {}, now=T0)
    ready = next(c for c in st["conditions"] if c["type"] == status.READY)
    assert ready["reason"] == "NameConflict" and "Secret chat-redis" in ready["message"]
    assert st["phase"] == status.FAILED
    assert ("Warning", "NameConflict") in [(e.type, e.reason) for e in events]


def test_paused_shows_as_a_condition_and_stops_the_autoscaler() -> None:
    st, _ = compute_status(observe(paused=True), {}, now=T0)
    assert conditions(st)[status.RECONCILIATION_PAUSED] == ("True", "Paused")
    assert conditions(st)[status.SCALING_ACTIVE] == ("False", "Paused")


def test_scaling_active_reflects_the_autoscaler_or_its_absence() -> None:
    st, _ = compute_status(observe(autoscaling_enabled=False), {}, now=T0)
    assert conditions(st)[status.SCALING_ACTIVE] == ("False", "ScalingDisabled")
    verdict = Condition(status.SCALING_ACTIVE, "True", "ScaledUp", "2 -> 4")
    st, _ = compute_status(observe(scaling=verdict), {}, now=T0)
    assert conditions(st)[status.SCALING_ACTIVE] == ("True", "ScaledUp")
    # A later pass without a verdict keeps the last one.
    st2, _ = compute_status(observe(), st, now=T1)
    assert conditions(st2)[status.SCALING_ACTIVE] == ("True", "ScaledUp")


def test_last_transition_time_moves_only_when_the_status_flips() -> None:
    first, _ = compute_status(observe(), {}, now=T0)
    same, events = compute_status(observe(), first, now=T1)
    assert same["conditions"] == first["conditions"]
    assert events == []
    broken, events = compute_status(
        observe(redis=RedisState(False, "RedisNotReady", "down")), first, now=T1
    )
    times = {c["type"]: c["lastTransitionTime"] for c in broken["conditions"]}
    assert times[status.REDIS_READY] == T1
    assert times[status.READY] == T1
    assert times[status.MIGRATIONS_COMPLETE] == T0
    assert [(e.type, e.reason) for e in events if e.reason == "RedisNotReady"] == [
        ("Warning", "RedisNotReady"),
        ("Warning", "RedisNotReady"),
    ]


def test_a_new_reason_while_unhealthy_is_an_event_but_keeps_the_transition_time() -> None:
    migrating = observe(target_image="img:2", migration=MigrationState("img:2", "j2", "running"))
    first, _ = compute_status(migrating, {}, now=T0)
    failed = observe(
        target_image="img:2", migration=MigrationState("img:2", "j2", "failed", "boom")
    )
    second, events = compute_status(failed, first, now=T1)
    cond = next(c for c in second["conditions"] if c["type"] == status.MIGRATIONS_COMPLETE)
    assert cond["lastTransitionTime"] == T0
    assert any(e.reason == "MigrationFailed" for e in events)


def test_an_invalid_spec_keeps_what_was_last_observed_of_redis_and_migrations() -> None:
    healthy, _ = compute_status(observe(), {}, now=T0)
    broken, _ = compute_status(
        observe(spec_error="bad", redis=None, migration=None, deployment=None), healthy, now=T1
    )
    conds = conditions(broken)
    assert conds[status.REDIS_READY] == ("True", "RedisReady")
    assert conds[status.MIGRATIONS_COMPLETE] == ("True", "MigrationSucceeded")
    assert conds[status.READY] == ("False", "InvalidSpec")
