"""The MessagingCluster's status from what the operator observed: pure, so every phase is tested.

Conditions keep their lastTransitionTime until their status flips; every flip (and every change of
reason while False) becomes one Kubernetes Event, so `kubectl describe` tells the story.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

READY = "Ready"
REDIS_READY = "RedisReady"
MIGRATIONS_COMPLETE = "MigrationsComplete"
SCALING_ACTIVE = "ScalingActive"
RECONCILIATION_PAUSED = "ReconciliationPaused"
CONDITION_TYPES = (READY, REDIS_READY, MIGRATIONS_COMPLETE, SCALING_ACTIVE, RECONCILIATION_PAUSED)

PENDING = "Pending"
MIGRATING = "Migrating"
RUNNING = "Running"
DEGRADED = "Degraded"
FAILED = "Failed"

# Reasons that mean a human should look: their Events are Warnings.
WARNING_REASONS = frozenset(
    {
        "InvalidSpec",
        "ChildRejected",
        "NameConflict",
        "SecretNotFound",
        "InvalidRedisURL",
        "MigrationFailed",
        "Forbidden",
    }
)
# Reasons every healthy start-up passes through (Redis still starting, pods not serving metrics
# yet): Warnings only when the condition falls back to them from True.
WARNING_AFTER_TRUE = frozenset({"RedisNotReady", "FailedGetPodsMetric", "NoReadyReplicas"})

ConditionStatus = Literal["True", "False", "Unknown"]
JobState = Literal["absent", "running", "succeeded", "failed"]


@dataclass(frozen=True)
class Condition:
    type: str
    status: ConditionStatus
    reason: str
    message: str = ""


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class RedisState:
    ready: bool
    reason: str
    message: str


@dataclass(frozen=True)
class MigrationState:
    image: str
    job_name: str
    state: JobState
    message: str = ""
    schema_version: str | None = None


@dataclass(frozen=True)
class DeploymentState:
    image: str
    replicas: int  # status.replicas: pods that exist
    ready_replicas: int
    updated_replicas: int
    spec_replicas: int
    rolled_out: bool  # the controller has seen the latest spec and every pod runs it


@dataclass(frozen=True)
class Observation:
    generation: int
    target_image: str
    selector: str
    desired_replicas: int
    min_replicas: int
    paused: bool = False
    autoscaling_enabled: bool = True
    spec_error: str | None = None
    spec_error_reason: str = "InvalidSpec"  # or ChildRejected: the API server refused a child
    missing_secrets: tuple[str, ...] = ()  # one sentence per Secret or key that is not there
    invalid_secrets: tuple[str, ...] = ()  # one sentence per value that cannot work
    conflicts: tuple[str, ...] = ()  # names taken by objects the operator did not create
    redis: RedisState | None = None
    migration: MigrationState | None = None
    deployment: DeploymentState | None = None
    scaling: Condition | None = None  # this pass's autoscaler verdict, if it ran
    redis_status: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # carried through into the status


def compute_conditions(obs: Observation, previous: Mapping[str, Any]) -> list[Condition]:
    paused = Condition(
        RECONCILIATION_PAUSED,
        "True" if obs.paused else "False",
        "Paused" if obs.paused else "Reconciling",
        "spec.paused is true: children are left exactly as they are"
        if obs.paused
        else "children follow the spec",
    )
    return [
        _ready(obs),
        _redis_ready(obs, previous),
        _migrations_complete(obs, previous),
        _scaling_active(obs, previous),
        paused,
    ]


def _ready(obs: Observation) -> Condition:  # noqa: PLR0911 - a ladder of causes reads best
    if obs.spec_error is not None:
        return Condition(READY, "False", obs.spec_error_reason, obs.spec_error)
    if obs.conflicts:
        return Condition(READY, "False", "NameConflict", _conflicts(obs.conflicts))
    if obs.missing_secrets:
        return Condition(READY, "False", "SecretNotFound", _missing(obs.missing_secrets))
    if obs.invalid_secrets:
        return Condition(READY, "False", "InvalidRedisURL", _missing(obs.invalid_secrets))
    dep = obs.deployment
    if obs.migration is not None and obs.migration.state == "failed":
        return Condition(READY, "False", "MigrationFailed", obs.migration.message)
    if obs.redis is not None and not obs.redis.ready:
        return Condition(READY, "False", "RedisNotReady", obs.redis.message)
    if obs.paused and (dep is None or dep.image != obs.target_image):
        return Condition(
            READY, "False", "Paused", f"spec.paused is true: {obs.target_image} is not rolled out"
        )
    if obs.migration is not None and obs.migration.state != "succeeded":
        waiting = obs.migration.message or f"waiting for the migrations of {obs.target_image}"
        return Condition(READY, "False", "Migrating", waiting)
    if dep is None:
        return Condition(READY, "False", "DeploymentMissing", "the messaging Deployment is absent")
    if dep.image != obs.target_image or not dep.rolled_out:
        return Condition(READY, "False", "RollingOut", f"rolling out {obs.target_image}")
    if dep.ready_replicas < 1:
        return Condition(READY, "False", "NoReadyReplicas", "no messaging pod is ready yet")
    return Condition(READY, "True", "Ready", f"{dep.ready_replicas}/{dep.spec_replicas} pods ready")


def _previous(previous: Mapping[str, Any], kind: str) -> Condition | None:
    for cond in previous.get("conditions") or []:
        if cond.get("type") == kind:
            return Condition(
                kind, cond.get("status", "Unknown"), cond.get("reason", ""), cond.get("message", "")
            )
    return None


def _redis_ready(obs: Observation, previous: Mapping[str, Any]) -> Condition:
    if obs.redis is None:
        return _previous(previous, REDIS_READY) or Condition(
            REDIS_READY, "Unknown", "NotObserved", "redis has not been checked"
        )
    return Condition(
        REDIS_READY, "True" if obs.redis.ready else "False", obs.redis.reason, obs.redis.message
    )


def _migrations_complete(obs: Observation, previous: Mapping[str, Any]) -> Condition:
    mig = obs.migration
    if mig is None:
        return _previous(previous, MIGRATIONS_COMPLETE) or Condition(
            MIGRATIONS_COMPLETE, "Unknown", "NotObserved", "migrations have not been checked"
        )
    if mig.state == "succeeded":
        version = f" (schema {mig.schema_version})" if mig.schema_version else ""
        return Condition(
            MIGRATIONS_COMPLETE,
            "True",
            "MigrationSucceeded",
            f"job {mig.job_name} migrated the database for {mig.image}{version}",
        )
    if mig.state == "failed":
        return Condition(
            MIGRATIONS_COMPLETE,
            "False",
            "MigrationFailed",
            f"job {mig.job_name} failed for {mig.image}: {mig.message}".rstrip(": "),
        )
    if mig.state == "running":
        return Condition(
            MIGRATIONS_COMPLETE,
            "False",
            "MigrationRunning",
            f"job {mig.job_name} is migrating the database for {mig.image}",
        )
    return Condition(
        MIGRATIONS_COMPLETE,
        "False",
        "MigrationPending",
        mig.message or f"no migration job yet for {mig.image}",
    )


def _scaling_active(obs: Observation, previous: Mapping[str, Any]) -> Condition:
    if not obs.autoscaling_enabled:
        return Condition(
            SCALING_ACTIVE,
            "False",
            "ScalingDisabled",
            "autoscaling.enabled is false: replicas come from spec.replicas.count (/scale)",
        )
    if obs.paused:
        return Condition(SCALING_ACTIVE, "False", "Paused", "spec.paused is true")
    if obs.scaling is not None:
        return obs.scaling
    last = _previous(previous, SCALING_ACTIVE)
    if last is not None and last.reason not in ("ScalingDisabled", "Paused"):
        return last
    return Condition(SCALING_ACTIVE, "Unknown", "Waiting", "the autoscaler has not run yet")


def _missing(problems: Sequence[str]) -> str:
    return "; ".join(problems)


def _conflicts(names: Sequence[str]) -> str:
    return "; ".join(names) + ": rename or remove it, the operator never takes over such objects"


def compute_phase(obs: Observation, previous_phase: object = None) -> str:  # noqa: PLR0911
    """Pending -> Migrating -> Running on the way up; Degraded only for a real problem.

    Pending: waiting for Secrets or Redis. Migrating: spec.image is not serving yet (its Job
    runs, or its first pods start). A healthy rollout or scale-up is Running: capacity never
    drops below the current count (maxUnavailable 0).
    """
    dep = obs.deployment
    serving = dep is not None and dep.ready_replicas > 0
    enough = dep is not None and dep.ready_replicas >= max(
        1, min(obs.min_replicas, obs.desired_replicas)
    )
    starting = previous_phase in (None, "", PENDING, MIGRATING)
    if obs.spec_error is not None:
        return FAILED
    if obs.conflicts or (obs.migration is not None and obs.migration.state == "failed"):
        return DEGRADED if serving else FAILED
    if obs.missing_secrets or obs.invalid_secrets:
        return DEGRADED if serving else PENDING
    if obs.paused:
        return RUNNING if enough else DEGRADED if serving else PENDING
    if obs.redis is not None and not obs.redis.ready:
        return DEGRADED if serving else PENDING
    if obs.migration is not None and obs.migration.state != "succeeded":
        return MIGRATING
    if enough:
        return RUNNING
    if starting:
        return MIGRATING  # the migrated image's first pods are starting
    return DEGRADED


def merge_conditions(
    previous: Sequence[Mapping[str, Any]], current: Sequence[Condition], now: str
) -> list[dict[str, Any]]:
    """Conditions as the API shows them; lastTransitionTime moves only when status flips."""
    before = {c.get("type"): c for c in previous}
    merged = []
    for cond in current:
        old = before.get(cond.type)
        since = (
            old.get("lastTransitionTime", now)
            if old is not None and old.get("status") == cond.status
            else now
        )
        merged.append(
            {
                "type": cond.type,
                "status": cond.status,
                "reason": cond.reason,
                "message": cond.message,
                "lastTransitionTime": since,
            }
        )
    return merged


def transition_events(
    previous: Sequence[Mapping[str, Any]], current: Sequence[Condition]
) -> list[Event]:
    """An Event for every condition that flipped, or that stayed unhealthy for a new reason."""
    before = {c.get("type"): c for c in previous}
    events = []
    for cond in current:
        old = before.get(cond.type)
        flipped = old is None or old.get("status") != cond.status
        new_reason = old is not None and old.get("reason") != cond.reason
        if cond.status == "Unknown" or not (flipped or (new_reason and cond.status == "False")):
            continue
        if cond.type == SCALING_ACTIVE and not flipped:
            continue  # scale decisions post their own Events
        fell = old is not None and old.get("status") == "True"
        warn = cond.reason in WARNING_REASONS or (fell and cond.reason in WARNING_AFTER_TRUE)
        kind: Literal["Normal", "Warning"] = "Warning" if warn else "Normal"
        events.append(Event(kind, cond.reason, f"{cond.type}={cond.status}: {cond.message}"))
    return events


def compute_status(
    obs: Observation, previous: Mapping[str, Any], *, now: str
) -> tuple[dict[str, Any], list[Event]]:
    """The whole status subresource to write, and the Events the change deserves."""
    conditions = compute_conditions(obs, previous)
    phase = compute_phase(obs, previous.get("phase"))
    old_conditions = previous.get("conditions") or []
    status: dict[str, Any] = {
        "observedGeneration": obs.generation,
        "phase": phase,
        "conditions": merge_conditions(old_conditions, conditions, now),
        "desiredReplicas": obs.desired_replicas,
        "replicas": obs.deployment.replicas if obs.deployment else 0,
        "readyReplicas": obs.deployment.ready_replicas if obs.deployment else 0,
        "selector": obs.selector,
        "image": obs.target_image,
    }
    if obs.deployment is not None:
        status["currentImage"] = obs.deployment.image
    elif previous.get("currentImage"):
        status["currentImage"] = previous["currentImage"]
    if obs.migration is not None:
        status["migration"] = {
            "image": obs.migration.image,
            "jobName": obs.migration.job_name,
            "state": obs.migration.state,
        }
        if obs.migration.message:
            status["migration"]["message"] = obs.migration.message
    schema = obs.migration.schema_version if obs.migration is not None else None
    if schema and obs.migration is not None and obs.migration.state == "succeeded":
        status["schemaVersion"] = schema
    elif previous.get("schemaVersion"):
        status["schemaVersion"] = previous["schemaVersion"]
    if obs.redis_status is not None:
        status["redis"] = dict(obs.redis_status)
    status.update(obs.extra)
    events = transition_events(old_conditions, conditions)
    if previous.get("phase") != phase:
        kind: Literal["Normal", "Warning"] = "Warning" if phase == FAILED else "Normal"
        events.append(Event(kind, f"Phase{phase}", f"phase {previous.get('phase')} -> {phase}"))
    return status, events
