"""One reconcile pass of one MessagingCluster: the order of things and what the status says.

The pass reads the cluster and the Secrets it references, brings the managed Redis up, starts
the migration Job of a new image (never while another of this cluster's Jobs runs), moves the
Deployment to the new pod template only once that image is migrated (until then the whole old
template stays, only the replica count follows), then writes the status the `status` module
computes and posts the Events of every transition. The I/O itself is in `children.Pass`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from messaging_operator import builders, observe, replicas, status
from messaging_operator.builders import Owner
from messaging_operator.children import Pass, now_iso
from messaging_operator.errors import (
    InvalidSpecError,
    KubeError,
    KubeForbiddenError,
    KubeInvalidError,
    KubeNotFoundError,
)
from messaging_operator.kube import CLUSTER, DEPLOYMENT, PDB, SECRET, KubeClient
from messaging_operator.memo import ObjectCache, Runtime
from messaging_operator.spec import ClusterSpec, check_name, parse_spec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScalingVerdict:
    """What the autoscaler hands to a pass."""

    desired: int
    condition: status.Condition
    record: Mapping[str, Any]  # status.scaling: the window's history and the last scale time
    sockets: int | None  # None: no pod's metrics could be read (the status shows no count)


@dataclass(frozen=True)
class Outcome:
    phase: str
    recheck: bool  # waits on something no watch reports (a Secret): look again soon
    conditions: Mapping[str, str] = field(default_factory=dict)  # type -> status, as written


def _server_selector(name: str) -> str:
    return builders.label_selector(builders.selector_labels(name, builders.SERVER))


async def reconcile(
    api: KubeClient,
    cache: ObjectCache,
    namespace: str,
    name: str,
    verdict: ScalingVerdict | None = None,
) -> Outcome | None:
    """One full pass over a cluster; None when the cluster (or its namespace) is going away.

    Raises InvalidSpecError for a spec that only an edit can fix (after reporting it in the
    status), and KubeError for API failures.
    """
    body = await api.find(CLUSTER, namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    run = Pass(api=api, cache=cache, body=body)
    try:
        check_name(name)
        spec = parse_spec(body.get("spec") or {})
        return await _reconcile_valid(run, Owner.from_body(body), spec, verdict)
    except (InvalidSpecError, KubeInvalidError) as e:
        reason = "InvalidSpec" if isinstance(e, InvalidSpecError) else "ChildRejected"
        await _report_invalid(run, reason, str(e))
        raise InvalidSpecError(str(e)) from e
    except KubeForbiddenError as e:
        if e.namespace_terminating:
            return None  # the namespace and everything in it are on their way out: no Events
        # RBAC is fixed by an administrator, not by waiting; say so where users look.
        run.events.append(status.Event("Warning", "Forbidden", str(e)))
        await run.post_events()
        raise


async def _report_invalid(run: Pass, reason: str, message: str) -> None:
    raw = run.body.get("spec") or {}
    previous = run.previous
    obs = status.Observation(
        generation=int(run.body["metadata"].get("generation") or 0),
        target_image=str(raw.get("image", "")),
        selector=_server_selector(run.name),
        desired_replicas=int(previous.get("desiredReplicas") or 0),
        min_replicas=0,
        paused=bool(raw.get("paused", False)),
        autoscaling_enabled=bool((raw.get("autoscaling") or {}).get("enabled", True)),
        spec_error=message,
        spec_error_reason=reason,
        extra={
            key: previous[key]
            for key in ("replicas", "readyReplicas", "connectedSockets", "scaling", "redis")
            if key in previous
        },
    )
    new, events = status.compute_status(obs, previous, now=now_iso())
    run.events.extend(events)
    await run.write_status(new)
    await run.post_events()


async def _read_secrets(run: Pass, spec: ClusterSpec) -> observe.SecretReading:
    refs = observe.secret_refs(spec)
    names = sorted({r.name for r in refs.values()})
    found = {n: await run.api.find(SECRET, run.namespace, n) for n in names}
    external = spec.redis.external
    return observe.secret_problems(
        refs, found, redis_cluster=external is not None and external.cluster
    )


async def _reconcile_valid(
    run: Pass, owner: Owner, spec: ClusterSpec, verdict: ScalingVerdict | None
) -> Outcome | None:
    name, previous = run.name, run.previous
    paused = spec.paused
    reading = await _read_secrets(run, spec)
    values, problems = reading.values, reading.problems
    redis_state, redis_status = await run.redis(owner, spec, values, problems, paused=paused)
    migration = await run.migration(
        owner, spec, may_start=not (paused or problems or run.conflicts)
    )
    deployment, ours = await run.mine(DEPLOYMENT, name)
    count = replicas.choose(
        spec,
        autoscaled=verdict.desired if verdict is not None else None,
        recorded=previous.get("desiredReplicas"),
        live=observe.live_replicas(deployment),
    )
    running_image = observe.deployment_state(deployment)
    if not paused:
        if ours:
            deployment = await _deployment(run, owner, spec, migration, values, problems, count)
        await run.ensure(builders.http_service(owner, spec))
        await run.ensure(builders.grpc_service(owner, spec))
        if spec.pod_disruption_budget.enabled:
            await run.ensure(builders.pod_disruption_budget(owner, spec))
        else:
            await run.remove(PDB, name)
        keep = {spec.image, *([running_image.image] if running_image else [])}
        await run.prune_jobs(keep)

    carried: dict[str, Any] = {
        "scaling": previous.get("scaling"),
        "connectedSockets": previous.get("connectedSockets"),
    }
    if verdict is not None:
        carried = {"scaling": dict(verdict.record), "connectedSockets": verdict.sockets}
    conflicts = tuple(dict.fromkeys(run.conflicts))
    obs = status.Observation(
        generation=int(run.body["metadata"].get("generation") or 0),
        target_image=spec.image,
        selector=_server_selector(name),
        desired_replicas=count,
        min_replicas=spec.replicas.min,
        paused=paused,
        autoscaling_enabled=spec.autoscaling.enabled,
        missing_secrets=tuple(reading.missing),
        invalid_secrets=tuple(reading.invalid),
        conflicts=conflicts,
        redis=redis_state,
        migration=migration,
        deployment=observe.deployment_state(deployment) if ours else None,
        scaling=verdict.condition if verdict is not None else None,
        redis_status=redis_status,
        extra={key: value for key, value in carried.items() if value is not None},
    )
    new, events = status.compute_status(obs, previous, now=now_iso())
    run.events.extend(events)
    await run.write_status(new)
    if not await run.post_events():
        return None  # the namespace is being deleted
    conditions = {str(c["type"]): str(c["status"]) for c in new.get("conditions") or []}
    return Outcome(
        phase=str(new["phase"]), recheck=bool(problems or conflicts), conditions=conditions
    )


async def _deployment(  # noqa: PLR0917 - one private step of the pass
    run: Pass,
    owner: Owner,
    spec: ClusterSpec,
    migration: status.MigrationState,
    values: Mapping[str, str],
    problems: list[str],
    count: int,
) -> dict[str, Any] | None:
    """The new template only once its image is migrated; until then only the count moves."""
    current = run.cache.get(DEPLOYMENT, run.namespace, run.name)
    if migration.state == "succeeded" and not problems:
        image: str | None = spec.image
    elif current is not None:
        return await run.set_replicas(run.name, count)
    else:
        # Deleted while an upgrade is pending (or failed): bring back the image that ran.
        last = run.previous.get("currentImage")
        image = last if isinstance(last, str) and last and not problems else None
    if image is None:
        return current
    return await run.ensure(
        builders.messaging_deployment(
            owner, spec, image=image, replicas=count, secrets_hash=builders.config_hash(values)
        )
    )


async def run_reconcile(
    memo: Runtime, namespace: str, name: str, verdict: ScalingVerdict | None = None
) -> None:
    """A pass with kopf's outcome semantics: a bad spec is permanent, API trouble is retried."""
    memory = memo.memory(namespace, name)
    if memory.terminating:
        return
    metrics = memo.metrics
    started = time.monotonic()
    try:
        outcome = await reconcile(memo.api, memo.cache, namespace, name, verdict)
    except InvalidSpecError as e:
        metrics.reconciles.labels("invalid_spec").inc()
        memory.last_full_pass, memory.recheck = time.monotonic(), False
        raise kopf.PermanentError(str(e)) from e
    except KubeNotFoundError as e:
        if 'namespaces "' in str(e):
            memory.terminating = True  # its namespace is gone
            return
        metrics.reconciles.labels("api_error").inc()
        raise kopf.TemporaryError(str(e), delay=memo.config.retry_seconds) from e
    except KubeError as e:
        metrics.reconciles.labels("api_error").inc()
        delay = e.retry_after or memo.config.retry_seconds * (1 if e.retryable else 6)
        raise kopf.TemporaryError(str(e), delay=delay) from e
    finally:
        metrics.reconcile_seconds.observe(time.monotonic() - started)
    metrics.reconciles.labels("success").inc()
    if outcome is None:
        memory.terminating = True
        metrics.forget(namespace, name)
        return
    memory.last_full_pass, memory.recheck = time.monotonic(), outcome.recheck
    metrics.record_status(namespace, name, outcome.phase, outcome.conditions)
