"""The one place that decides how many messaging pods a cluster should have.

Three things can name a count: the autoscaler's verdict of this pass, the count the operator
chose last time (status.desiredReplicas), and `spec.replicas.count` (the /scale subresource)
when autoscaling is off. Every count the operator writes passes through `choose`, and every
bound through `clamp`, so the rules cannot drift apart between the autoscaler and the pass.
"""

from __future__ import annotations

from messaging_operator.spec import ClusterSpec


def clamp(wanted: int, low: int, high: int) -> int:
    return max(low, min(high, wanted))


def fixed(spec: ClusterSpec) -> int:
    """The count when the operator does not autoscale: /scale's count (unset: min), in bounds."""
    wanted = spec.replicas.count if spec.replicas.count is not None else spec.replicas.min
    return clamp(wanted, spec.replicas.min, spec.replicas.max)


def starting_point(recorded: object, live: int | None) -> int:
    """The autoscaler's "current" count: the operator's last choice, not the live field.

    A hand edit of the Deployment's replicas is drift to undo, not a new starting point.
    """
    if isinstance(recorded, int) and recorded > 0:
        return recorded
    return live or 0


def choose(spec: ClusterSpec, *, autoscaled: int | None, recorded: object, live: int | None) -> int:
    """The replica count to write: the autoscaler's when it runs, else the last choice."""
    if not spec.autoscaling.enabled:
        return fixed(spec)
    low, high = spec.replicas.min, spec.replicas.max
    if autoscaled is not None:
        wanted = autoscaled
    elif isinstance(recorded, int) and recorded > 0:
        wanted = recorded
    elif live is not None:
        wanted = live
    else:
        wanted = low
    return clamp(wanted, low, high)
