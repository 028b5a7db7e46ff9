"""The autoscaler: a kopf timer that reads the pods' sockets and lets a reconcile pass scale.

It is the only owner of the messaging Deployment's replica count while `autoscaling.enabled` is
true. Its verdict (the count, the stabilization window's history, the ScalingActive condition)
goes into the MessagingCluster's status through the ordinary reconcile pass, so a restarted
operator resumes with the window, and no second writer touches the Deployment. It reads the
Deployment and the pods from the watch-fed cache, so a steady cluster costs no API request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import kopf

from messaging_operator import builders, observe, replicas, scaling, scraping, status
from messaging_operator.children import post_event
from messaging_operator.errors import InvalidSpecError, KubeError
from messaging_operator.kube import DEPLOYMENT, POD, KubeClient
from messaging_operator.memo import OperatorConfig, Runtime
from messaging_operator.reconcile import ScalingVerdict, run_reconcile
from messaging_operator.spec import GROUP, PLURAL, VERSION, ClusterSpec, parse_spec

log = logging.getLogger(__name__)

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
_INT32_MAX = 2**31 - 1


def pod_sample(pod: Mapping[str, Any]) -> tuple[scaling.PodSample, str | None]:
    """How the autoscaler classifies a pod (as the HPA does), and the IP to read it at."""
    meta = pod.get("metadata") or {}
    st = pod.get("status") or {}
    phase = st.get("phase")
    gone = bool(meta.get("deletionTimestamp")) or phase in ("Failed", "Succeeded")
    ready = phase == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or []
    )
    return scaling.PodSample(name=meta.get("name", ""), ready=ready, gone=gone), st.get("podIP")


def _epoch(text: str) -> float | None:
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except (TypeError, ValueError):
        return None


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def history_from_status(record: Mapping[str, Any]) -> list[scaling.Recommendation]:
    history = []
    for item in record.get("recommendations") or []:
        at = _epoch(item.get("time", ""))
        if at is not None and isinstance(item.get("replicas"), int):
            history.append(scaling.Recommendation(at=at, replicas=item["replicas"]))
    return history


def history_to_status(history: Iterable[scaling.Recommendation]) -> list[dict[str, Any]]:
    return [{"time": _iso(rec.at), "replicas": rec.replicas} for rec in history]


def policy_for(spec: ClusterSpec) -> scaling.Policy:
    return scaling.Policy(
        min_replicas=spec.replicas.min,
        max_replicas=spec.replicas.max,
        target_per_pod=float(spec.autoscaling.target_connections_per_pod),
        tolerance=spec.autoscaling.tolerance,
        stabilization_seconds=float(spec.autoscaling.scale_down_stabilization_seconds),
    )


def deletion_costs(
    samples: Sequence[scaling.PodSample], current: Mapping[str, str]
) -> dict[str, str]:
    """The pod-deletion-cost each pod should carry before a scale-down (KEP-2255).

    The cost is the pod's socket count, so the ReplicaSet removes the least-connected pods first
    and the fewest clients have to reconnect. Only changed values are returned.
    """
    wanted = {}
    for sample in samples:
        if sample.gone or not sample.ready or sample.sockets is None:
            continue
        cost = str(min(_INT32_MAX, int(sample.sockets)))
        if current.get(sample.name) != cost:
            wanted[sample.name] = cost
    return wanted


async def mark_deletion_costs(
    api: KubeClient,
    namespace: str,
    pods: Sequence[Mapping[str, Any]],
    samples: Sequence[scaling.PodSample],
) -> None:
    current = {
        p["metadata"]["name"]: (p["metadata"].get("annotations") or {}).get(DELETION_COST, "")
        for p in pods
    }
    for name, cost in deletion_costs(samples, current).items():
        await api.merge_patch(
            POD, namespace, name, {"metadata": {"annotations": {DELETION_COST: cost}}}
        )


def window_from_status(
    record: Mapping[str, Any], current: int, now: float
) -> tuple[scaling.Recommendation, ...]:
    """The window after a restart: what the status kept, with the recommendations that still
    hold the count up restamped to now, so a restart can delay a scale-down but never hasten it
    (the status is not rewritten on every pass, so its times may be old)."""
    return tuple(
        scaling.Recommendation(
            at=max(rec.at, now) if rec.replicas >= current else rec.at, replicas=rec.replicas
        )
        for rec in history_from_status(record)
    )


def persisted_window(
    window: Sequence[scaling.Recommendation], stored: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The window as the status keeps it: rewritten only when its counts change, not when the
    same recommendation merely got a newer time (that would be a status write every pass)."""
    old = stored.get("recommendations") or []
    if [item.get("replicas") for item in old] == [rec.replicas for rec in window]:
        return list(old)
    return history_to_status(window)


def verdict_changes_status(verdict: ScalingVerdict, previous: Mapping[str, Any]) -> bool:
    if previous.get("desiredReplicas") != verdict.desired:
        return True
    if previous.get("connectedSockets") != verdict.sockets:
        return True
    if (previous.get("scaling") or {}) != dict(verdict.record):
        return True
    for cond in previous.get("conditions") or []:
        if cond.get("type") == status.SCALING_ACTIVE:
            c = verdict.condition
            return (cond.get("status"), cond.get("reason"), cond.get("message")) != (
                c.status,
                c.reason,
                c.message,
            )
    return True


def _autoscaled(
    memo: Runtime, namespace: str, name: str, body: Mapping[str, Any]
) -> tuple[ClusterSpec, Mapping[str, Any]] | None:
    """The spec and the Deployment of a cluster the autoscaler should look at, if any."""
    if body.get("metadata", {}).get("deletionTimestamp"):
        return None
    try:
        spec = parse_spec(body.get("spec") or {})
    except InvalidSpecError:
        return None  # the reconcile pass reports it
    if spec.paused or not spec.autoscaling.enabled or memo.memory(namespace, name).terminating:
        return None
    deployment = memo.cache.get(DEPLOYMENT, namespace, name)
    return None if deployment is None else (spec, deployment)


def _record(
    decision: scaling.Decision, stored: Mapping[str, Any], current: int, now: float
) -> dict[str, Any]:
    record: dict[str, Any] = {"recommendations": persisted_window(decision.recommendations, stored)}
    if decision.desired != current:
        record["lastScaleTime"] = _iso(now)
    elif stored.get("lastScaleTime"):
        record["lastScaleTime"] = stored["lastScaleTime"]
    return record


async def autoscale_once(
    memo: Runtime, namespace: str, name: str, body: Mapping[str, Any]
) -> scaling.Decision | None:
    """One autoscaler pass from the cache and the pods' metrics; the caller holds the gate.

    It costs no API request unless the verdict changes something: then the reconcile pass
    writes the count and the status.
    """
    found = _autoscaled(memo, namespace, name, body)
    if found is None:
        return None
    spec, deployment = found
    memory = memo.memory(namespace, name)
    previous_status = body.get("status") or {}
    current = replicas.starting_point(
        previous_status.get("desiredReplicas"), observe.live_replicas(deployment)
    )
    pods = memo.cache.select(POD, namespace, builders.selector_labels(name, builders.SERVER))
    classified = [pod_sample(pod) for pod in pods]
    readable = [(s.name, ip) for s, ip in classified if s.ready and not s.gone and ip]
    port = memo.config.pod_metrics_port or spec.service.metrics_port
    values = await scraping.read_pods(memo.http, readable, port)
    samples = [replace(s, sockets=values.get(s.name)) for s, _ in classified]

    stored = previous_status.get("scaling") or {}
    now = time.time()
    window = memory.window
    if window is None:
        window = window_from_status(stored, current, now)
    decision = scaling.decide(current, samples, policy_for(spec), window, now=now)
    memory.window = decision.recommendations
    if decision.desired < current:
        await mark_deletion_costs(memo.api, namespace, pods, samples)
    record: dict[str, Any] = {"recommendations": persisted_window(decision.recommendations, stored)}
    if decision.desired != current:
        record["lastScaleTime"] = _iso(now)
    elif stored.get("lastScaleTime"):
        record["lastScaleTime"] = stored["lastScaleTime"]
    condition = status.Condition(
        status.SCALING_ACTIVE,
        "True" if decision.able else "False",
        decision.reason,
        decision.message,
    )
    sockets = int(decision.sockets) if decision.sockets is not None else None
    verdict = ScalingVerdict(
        desired=decision.desired, condition=condition, record=record, sockets=sockets
    )
    direction = (
        "up" if decision.desired > current else "down" if decision.desired < current else "none"
    )
    memo.metrics.scale_decisions.labels(direction).inc()
    memo.metrics.desired_replicas.labels(namespace, name).set(decision.desired)
    if sockets is not None:
        memo.metrics.connected_sockets.labels(namespace, name).set(sockets)
    if direction != "none":
        reason = "ScaledUp" if direction == "up" else "ScaledDown"
        if not await post_event(memo.api, body, status.Event("Normal", reason, decision.message)):
            memory.terminating = True
            return decision
        log.info("%s/%s %s: %s", namespace, name, reason, decision.message)
    if verdict_changes_status(verdict, previous_status):
        await run_reconcile(memo, namespace, name, verdict)
    return decision


async def on_autoscale(
    name: str, namespace: str | None, body: kopf.Body, memo: Runtime, **_: Any
) -> None:
    assert namespace is not None  # the CRD is namespaced

    async def once() -> None:
        try:
            await autoscale_once(memo, namespace, name, body)
        except KubeError as e:
            delay = e.retry_after or memo.config.retry_seconds
            raise kopf.TemporaryError(str(e), delay=delay) from e

    await memo.gate(namespace, name).run(once)


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    kopf.timer(
        GROUP,
        VERSION,
        PLURAL,
        registry=registry,
        id="autoscale",
        interval=config.autoscale_seconds,
    )(on_autoscale)
