"""The replica count the HorizontalPodAutoscaler would choose, as a pure function.

It follows kube-controller-manager's `replica_calculator.go` (plain per-pod metrics) and the
`autoscaling/v2` default behaviour: no scale-up stabilization, scale-down limited to the highest
recommendation within the window, then min/max. The window's recommendation history is passed in
and handed back, so the caller keeps it (in the MessagingCluster's status) across restarts.

Two deliberate differences from the HPA: no rate-limiting policies (a connection surge is served
at once), and a result never moves against the load's direction in either branch of the
calculation (the HPA checks that only when pods are missing metrics).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from messaging_operator.replicas import clamp

# Reasons, as the ScalingActive condition and the Events show them.
SCALED_UP = "ScaledUp"
SCALED_DOWN = "ScaledDown"
WITHIN_TOLERANCE = "WithinTolerance"
STABILIZED = "ScaleDownStabilized"
NO_METRICS = "FailedGetPodsMetric"
TOO_FEW_REPLICAS = "TooFewReplicas"  # the load wants fewer than replicas.min
TOO_MANY_REPLICAS = "TooManyReplicas"  # the load wants more than replicas.max
STEADY = "Steady"


@dataclass(frozen=True)
class PodSample:
    """One pod of the Deployment as the autoscaler sees it.

    `sockets` is None when a ready pod's metrics could not be read; not-ready pods are not read.
    `gone` covers pods being deleted or already failed: the HPA ignores those entirely.
    """

    name: str
    ready: bool
    sockets: float | None = None
    gone: bool = False


@dataclass(frozen=True)
class Recommendation:
    at: float  # seconds since the epoch
    replicas: int


@dataclass(frozen=True)
class Policy:
    min_replicas: int
    max_replicas: int
    target_per_pod: float
    tolerance: float = 0.1
    stabilization_seconds: float = 300.0


@dataclass(frozen=True)
class Decision:
    desired: int
    recommendations: tuple[Recommendation, ...]
    able: bool  # metrics were available, so the autoscaler is actively deciding
    reason: str
    message: str
    sockets: float | None  # total across pods with metrics; None when none could be read
    ratio: float | None  # mean sockets per pod over target


@dataclass(frozen=True)
class _Calculation:
    replicas: int
    ratio: float
    sockets: float


def calculate(current: int, pods: Sequence[PodSample], policy: Policy) -> _Calculation | None:
    """The HPA replica calculator for a per-pod metric; None when no pod reported a value."""
    metrics: dict[str, float] = {}
    unready: list[str] = []
    missing: list[str] = []
    for pod in pods:
        if pod.gone:
            continue
        if not pod.ready:
            unready.append(pod.name)
        elif pod.sockets is None:
            missing.append(pod.name)
        else:
            metrics[pod.name] = pod.sockets
    if not metrics:
        return None
    sockets = sum(metrics.values())
    ratio = _ratio(metrics.values(), policy.target_per_pod)
    scale_up_with_unready = bool(unready) and ratio > 1.0
    if not scale_up_with_unready and not missing:
        if abs(1.0 - ratio) <= policy.tolerance:
            return _Calculation(current, ratio, sockets)
        wanted = math.ceil(ratio * len(metrics))
        return _Calculation(_not_against(current, wanted, ratio), ratio, sockets)
    # Missing pods count as at target on a scale-down and as idle on a scale-up, and unready pods
    # as idle on a scale-up: both make the autoscaler more conservative, never more eager.
    filled = dict(metrics)
    for name in missing:
        filled[name] = policy.target_per_pod if ratio < 1.0 else 0.0
    if scale_up_with_unready:
        for name in unready:
            filled[name] = 0.0
    new_ratio = _ratio(filled.values(), policy.target_per_pod)
    if (
        abs(1.0 - new_ratio) <= policy.tolerance
        or (ratio < 1.0 < new_ratio)
        or (ratio > 1.0 > new_ratio)
    ):
        return _Calculation(current, ratio, sockets)
    wanted = math.ceil(new_ratio * len(filled))
    return _Calculation(_not_against(current, wanted, new_ratio), ratio, sockets)


def _ratio(values: Iterable[float], target: float) -> float:
    values = list(values)
    return (sum(values) / len(values)) / target


def _not_against(current: int, wanted: int, ratio: float) -> int:
    if (ratio < 1.0 and wanted > current) or (ratio > 1.0 and wanted < current):
        return current
    return wanted


def stabilize(
    current: int,
    recommended: int,
    history: Sequence[Recommendation],
    *,
    now: float,
    window: float,
) -> tuple[int, tuple[Recommendation, ...]]:
    """autoscaling/v2's default behaviour: scale up at once, scale down to the window's maximum."""
    kept = [rec for rec in history if now - window < rec.at <= now]
    ceiling = max([recommended, *(rec.replicas for rec in kept)])
    chosen = max(current, recommended)  # an immediate scale-up (up-window of zero)
    chosen = min(chosen, ceiling)  # a scale-down only as far as the window allows
    # A recommendation followed by a later one at least as high can never be the window's
    # maximum again: dropping it keeps the history as short as max - min + 1 entries.
    kept.append(Recommendation(at=now, replicas=recommended))
    needed: list[Recommendation] = []
    for rec in reversed(kept):
        if not needed or rec.replicas > needed[-1].replicas:
            needed.append(rec)
    return chosen, tuple(reversed(needed))


def decide(
    current: int,
    pods: Sequence[PodSample],
    policy: Policy,
    history: Sequence[Recommendation],
    *,
    now: float,
) -> Decision:
    """One autoscaler pass: what the Deployment's replica count should be now, and why."""
    low, high = policy.min_replicas, policy.max_replicas
    calc = calculate(current, pods, policy)
    if calc is None:
        # Like the HPA: without metrics, only the bounds are enforced.
        bounded = clamp(current, low, high)
        return Decision(
            desired=bounded,
            recommendations=tuple(history),
            able=False,
            reason=NO_METRICS,
            message="no ready pod reported messaging_connected_sockets",
            sockets=None,
            ratio=None,
        )
    chosen, kept = stabilize(
        current, calc.replicas, history, now=now, window=policy.stabilization_seconds
    )
    desired = clamp(chosen, low, high)
    load = (
        f"{calc.sockets:.0f} sockets on {current} pod{'' if current == 1 else 's'}, "
        f"{calc.ratio:.2f} of the target {policy.target_per_pod:.0f} per pod"
    )
    if desired > current:
        reason = SCALED_UP
    elif desired < current:
        reason = SCALED_DOWN
    elif calc.replicas < low and desired == low:
        reason = TOO_FEW_REPLICAS
    elif calc.replicas > high and desired == high:
        reason = TOO_MANY_REPLICAS
    elif chosen > calc.replicas:
        reason = STABILIZED
    elif abs(1.0 - calc.ratio) <= policy.tolerance:
        reason = WITHIN_TOLERANCE
    else:
        reason = STEADY
    message = f"{current} -> {desired} replicas: {load}"
    return Decision(
        desired=desired,
        recommendations=kept,
        able=True,
        reason=reason,
        message=message,
        sockets=calc.sockets,
        ratio=calc.ratio,
    )
