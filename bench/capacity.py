"""A capacity model: pods, Redis shards and PostgreSQL for a number of sockets and a message rate.

    .venv/bin/python -m bench.capacity              # 1M sockets, 50k msg/s: docs/scaling.md's table
    .venv/bin/python -m bench.capacity --sockets 200000 --messages-per-s 5000 --json
    .venv/bin/python -m bench.capacity --derive bench/results/scaleout.json   # rewrite the inputs

Every per-unit cost comes from a measurement (``bench/capacity_inputs.json``, derived from a
``python -m bench.scaleout`` results file by ``--derive``; each figure names the step it was read
from), and every limit and headroom is an ``Assumptions`` field with its reason. ``project`` is a
pure function of the three, so the figures in ``docs/scaling.md`` are reproduced by the tests
(``tests/bench/test_capacity.py``) from the checked-in inputs.

The model is linear on purpose: a replica's work is the sum of what its own sockets and its own
messages cost (nothing in it grows with the number of replicas: a replica subscribes to its own
users' channels, and the write path has no cluster-wide row), so pods and Redis shards are
``ceil(load / what one unit carries at its target utilisation)``. PostgreSQL is different: one
primary takes every write, so the model reports how far the load is from that primary's limits,
and the message rate at which the first of them is reached.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

INPUTS = Path(__file__).resolve().parent / "capacity_inputs.json"
GIB = 1024**3
MIB = 1024**2


class CapacityError(ValueError):
    """An input the model cannot use: missing, negative, not a number, or out of range."""


@dataclass(frozen=True)
class Measured:
    """Per-unit costs, each measured by ``bench.scaleout`` (see ``provenance`` in the inputs)."""

    replica_cpu_ms_per_message: float  # taking, committing and acking a send (no delivery)
    replica_cpu_ms_per_delivery: float  # one newMessage to one device, via Redis
    replica_cpu_us_per_socket_second: float  # an idle socket held open (pings)
    replica_cpu_ms_per_connect: float  # handshake, subscribe, presence
    replica_idle_cpu_ms_per_second: float  # a replica with no sockets at all
    replica_base_rss_bytes: float  # a replica's memory before any socket
    memory_per_socket_bytes: float  # a replica's memory per idle socket
    redis_commands_per_message: float
    redis_commands_per_delivery: float
    redis_commands_per_connect: float
    redis_commands_per_socket_second: float
    redis_commands_per_replica_second: float
    redis_cpu_us_per_command: float
    redis_bytes_per_socket: float
    postgres_cpu_ms_per_message: float
    postgres_commits_per_message: float
    postgres_wal_bytes_per_message: float
    postgres_wal_records_per_message: float
    postgres_tuples_per_message: float


@dataclass(frozen=True)
class Assumptions:
    """Limits and headroom: not measured here, each with its reason (docs/scaling.md)."""

    # One replica is one asyncio event loop: it cannot use more than one core.
    pod_cores: float = 1.0
    # Headroom for bursts, a reconnect storm after a rollout and GC pauses.
    pod_cpu_target: float = 0.6
    pod_memory_bytes: float = 2 * GIB
    pod_memory_target: float = 0.75
    # Two replicas at least, so a rollout or a lost node keeps every user served.
    min_pods: int = 2
    # A Redis shard executes commands on one thread: one core, kept half free for failover
    # resync, key expiry and bursts.
    redis_shard_cpu_target: float = 0.5
    redis_shard_memory_bytes: float = 8 * GIB
    redis_shard_memory_target: float = 0.5
    # Redis Cluster needs three masters (and their replicas) to elect a failover.
    min_redis_shards: int = 3
    # A large PostgreSQL primary, kept half idle (vacuum, checkpoints, read traffic, failover).
    postgres_cores: float = 32.0
    postgres_cpu_target: float = 0.5
    # WAL write bandwidth of the primary's volume: the baseline of a cloud block volume
    # (AWS gp3: 125 MiB/s without provisioned throughput); half of it kept for checkpoints
    # and replication catch-up.
    postgres_wal_bytes_per_s: float = 125 * MIB
    postgres_wal_target: float = 0.5
    # Commits (WAL flushes, with group commit) one primary sustains on that volume: assumed,
    # not measured here (measure yours with pgbench -N at the planned client count).
    postgres_commits_per_s: float = 20_000.0
    postgres_commit_target: float = 0.5


@dataclass(frozen=True)
class Workload:
    sockets: float
    messages_per_s: float
    # Devices that get each message: the recipient's online devices and the sender's other
    # ones. One-to-one messaging with 1.5 online devices per user gives 1.5 + 0.5 = 2.
    deliveries_per_message: float = 2.0
    # Reconnections per socket per hour (mobile networks, app switches, rollouts).
    connects_per_socket_per_hour: float = 2.0


@dataclass(frozen=True)
class Plan:
    pods: int
    pods_for_cpu: int
    pods_for_memory: int
    replica_cores: float
    sockets_per_pod: int
    messages_per_s_per_pod: float
    redis_shards: int
    redis_commands_per_s: float
    redis_cores: float
    redis_memory_bytes: float
    postgres_cores: float
    postgres_commits_per_s: float
    postgres_wal_bytes_per_s: float
    postgres_tuples_per_s: float
    postgres_primary_utilisation: Mapping[str, float]  # share of each limit, at its target
    postgres_limit_first_reached: str
    postgres_max_messages_per_s: float  # where that limit is reached

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["postgres_primary_utilisation"] = dict(self.postgres_primary_utilisation)
        return out


def _check_number(name: str, value: Any, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CapacityError(f"{name} must be a number, not {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        raise CapacityError(f"{name} must be {'positive' if positive else 'at least 0'}: {value}")
    return number


_MUST_BE_POSITIVE = {
    "memory_per_socket_bytes",
    "redis_cpu_us_per_command",
    "pod_cores",
    "pod_memory_bytes",
    "redis_shard_memory_bytes",
    "postgres_cores",
    "postgres_wal_bytes_per_s",
    "postgres_commits_per_s",
}


def validate(measured: Measured, assumptions: Assumptions, workload: Workload) -> None:
    """Refuse what would make the projection meaningless (CapacityError)."""
    for obj in (measured, assumptions, workload):
        for f in fields(obj):
            _check_number(f.name, getattr(obj, f.name), positive=f.name in _MUST_BE_POSITIVE)
    for f in fields(assumptions):
        if f.name.endswith("_target") and not 0 < getattr(assumptions, f.name) <= 1:
            raise CapacityError(f"{f.name} must be within (0, 1]: {getattr(assumptions, f.name)}")
    if assumptions.min_pods < 1 or assumptions.min_redis_shards < 1:
        raise CapacityError("min_pods and min_redis_shards must be at least 1")
    usable = assumptions.pod_memory_bytes * assumptions.pod_memory_target
    if usable <= measured.replica_base_rss_bytes + measured.memory_per_socket_bytes:
        raise CapacityError("a pod's memory target does not hold the replica and one socket")
    if measured.replica_idle_cpu_ms_per_second / 1000 >= (
        assumptions.pod_cores * assumptions.pod_cpu_target
    ):
        raise CapacityError("a replica's idle work alone exceeds a pod's CPU target")


def _ceil(value: float) -> int:
    # 2.0000000001 from float sums is 2, not 3.
    return math.ceil(round(value, 9))


def project(measured: Measured, assumptions: Assumptions, workload: Workload) -> Plan:
    """What the workload needs, from the measured unit costs and the assumptions."""
    validate(measured, assumptions, workload)
    m, a, w = measured, assumptions, workload
    connects_per_s = w.sockets * w.connects_per_socket_per_hour / 3600
    deliveries_per_s = w.messages_per_s * w.deliveries_per_message

    replica_cores = (
        w.messages_per_s * m.replica_cpu_ms_per_message / 1000
        + deliveries_per_s * m.replica_cpu_ms_per_delivery / 1000
        + w.sockets * m.replica_cpu_us_per_socket_second / 1e6
        + connects_per_s * m.replica_cpu_ms_per_connect / 1000
    )
    usable_cores = a.pod_cores * a.pod_cpu_target - m.replica_idle_cpu_ms_per_second / 1000
    pods_for_cpu = _ceil(replica_cores / usable_cores)
    sockets_per_pod = math.floor(
        (a.pod_memory_bytes * a.pod_memory_target - m.replica_base_rss_bytes)
        / m.memory_per_socket_bytes
    )
    pods_for_memory = _ceil(w.sockets / sockets_per_pod)
    pods = max(a.min_pods, pods_for_cpu, pods_for_memory)

    redis_commands = (
        w.messages_per_s * m.redis_commands_per_message
        + deliveries_per_s * m.redis_commands_per_delivery
        + connects_per_s * m.redis_commands_per_connect
        + w.sockets * m.redis_commands_per_socket_second
        + pods * m.redis_commands_per_replica_second
    )
    redis_cores = redis_commands * m.redis_cpu_us_per_command / 1e6
    redis_memory = w.sockets * m.redis_bytes_per_socket
    redis_shards = max(
        a.min_redis_shards,
        _ceil(redis_cores / a.redis_shard_cpu_target),
        _ceil(redis_memory / (a.redis_shard_memory_bytes * a.redis_shard_memory_target)),
    )

    pg_cores = w.messages_per_s * m.postgres_cpu_ms_per_message / 1000
    commits = w.messages_per_s * m.postgres_commits_per_message
    wal = w.messages_per_s * m.postgres_wal_bytes_per_message
    limits = {
        "cpu": (pg_cores, a.postgres_cores * a.postgres_cpu_target),
        "wal_bandwidth": (wal, a.postgres_wal_bytes_per_s * a.postgres_wal_target),
        "commits": (commits, a.postgres_commits_per_s * a.postgres_commit_target),
    }
    utilisation = {k: round(need / limit, 4) for k, (need, limit) in limits.items()}
    per_message = {
        "cpu": m.postgres_cpu_ms_per_message / 1000,
        "wal_bandwidth": m.postgres_wal_bytes_per_message,
        "commits": m.postgres_commits_per_message,
    }
    ceilings = {
        k: (limits[k][1] / per_message[k] if per_message[k] > 0 else math.inf) for k in limits
    }
    first = min(ceilings, key=lambda k: ceilings[k])
    return Plan(
        pods=pods,
        pods_for_cpu=pods_for_cpu,
        pods_for_memory=pods_for_memory,
        replica_cores=round(replica_cores, 3),
        sockets_per_pod=sockets_per_pod,
        messages_per_s_per_pod=round(w.messages_per_s / pods, 1),
        redis_shards=redis_shards,
        redis_commands_per_s=round(redis_commands, 1),
        redis_cores=round(redis_cores, 3),
        redis_memory_bytes=round(redis_memory),
        postgres_cores=round(pg_cores, 3),
        postgres_commits_per_s=round(commits, 1),
        postgres_wal_bytes_per_s=round(wal),
        postgres_tuples_per_s=round(w.messages_per_s * m.postgres_tuples_per_message, 1),
        postgres_primary_utilisation=utilisation,
        postgres_limit_first_reached=first,
        postgres_max_messages_per_s=round(ceilings[first], 1),
    )


# --- inputs --------------------------------------------------------------------------------


def load_inputs(path: Path = INPUTS) -> Measured:
    """The measured figures from a capacity-inputs file (``{"measured": {...}}``)."""
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CapacityError(f"cannot read {path}: {e}") from e
    return measured_from(document.get("measured") if isinstance(document, dict) else None)


def measured_from(values: Any) -> Measured:
    if not isinstance(values, dict):
        raise CapacityError("the inputs need a 'measured' object")
    names = [f.name for f in fields(Measured)]
    missing = [n for n in names if n not in values]
    if missing:
        raise CapacityError(f"missing measured figures: {', '.join(missing)}")
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise CapacityError(f"unknown measured figures: {', '.join(unknown)}")
    return Measured(**{n: _check_number(n, values[n]) for n in names})


def _median(values: Sequence[float], what: str) -> float:
    if not values:
        raise CapacityError(f"the results have no step to read {what} from")
    return float(statistics.median(values))


def derive(results: Mapping[str, Any]) -> dict[str, Any]:
    """Capacity inputs from a ``bench.scaleout`` results file, each figure with its source.

    Loaded figures are medians over the first revision's closed-loop steps (batches as full as
    the replicas make them, as at scale). The cost of one delivery is the slope of the delivery
    split (the same load with one and three deliveries per message); a message's own cost is the
    closed-loop cost per message less its deliveries at that slope. Sockets: the idle step.
    """
    try:
        head = results["revisions"][0]["ref"]
        closed = [
            s
            for s in results["steps"]
            if s["ref"] == head and s["rate"] is None and s["devices"] == 1
        ]
        split = results["delivery_split"]
        idle = results["idle_sockets"]
    except (KeyError, IndexError, TypeError) as e:
        raise CapacityError(f"not a bench.scaleout results file: missing {e}") from e

    def window(key: str) -> float:
        return _median([s["window"][key] for s in closed], key)

    def postgres(*keys: str) -> float:
        return _median(
            [sum(s["postgres_per_message"].get(k, 0.0) for k in keys) for s in closed], keys[0]
        )

    tables = {
        k
        for s in closed
        for k in s["postgres_per_message"]
        if k.startswith(("inserted ", "updated "))
    }
    redis_cmds = window("redis_commands_per_message")
    deliveries = _median([s["deliveries_per_message"] for s in closed], "deliveries")
    measured = {
        "replica_cpu_ms_per_message": round(
            window("replicas_cpu_ms_per_message") - split["cpu_ms_per_delivery"] * deliveries,
            4,
        ),
        "replica_cpu_ms_per_delivery": split["cpu_ms_per_delivery"],
        "replica_cpu_us_per_socket_second": max(idle["replica_cpu_us_per_socket_second"], 0.0),
        "replica_cpu_ms_per_connect": idle["replica_cpu_ms_per_connect"],
        "replica_idle_cpu_ms_per_second": _median(
            [s["idle"]["cpu_ms_per_replica_second"] for s in closed], "idle CPU"
        ),
        "replica_base_rss_bytes": idle["replica_rss_before_bytes"],
        "memory_per_socket_bytes": idle["memory_per_socket_bytes"],
        "redis_commands_per_message": round(
            redis_cmds - split["redis_commands_per_delivery"] * deliveries, 3
        ),
        "redis_commands_per_delivery": split["redis_commands_per_delivery"],
        "redis_commands_per_connect": idle["redis_commands_per_connect"],
        "redis_commands_per_socket_second": max(idle["redis_commands_per_socket_second"], 0.0),
        "redis_commands_per_replica_second": _median(
            [s["idle"]["redis_commands_per_replica_second"] for s in closed], "idle Redis"
        ),
        "redis_cpu_us_per_command": round(
            window("redis_cpu_ms_per_message") * 1000 / redis_cmds, 3
        ),
        "redis_bytes_per_socket": max(idle["redis_bytes_per_socket"], 0.0),
        "postgres_cpu_ms_per_message": window("postgres_cpu_ms_per_message"),
        "postgres_commits_per_message": postgres("xact_commit"),
        "postgres_wal_bytes_per_message": postgres("wal_bytes"),
        "postgres_wal_records_per_message": postgres("wal_records"),
        "postgres_tuples_per_message": postgres(*sorted(tables)),
    }
    measured_from(measured)  # the same checks as when read back
    steps = ", ".join(sorted({f"{s['replicas']} replicas" for s in closed}))
    return {
        "schema": "messaging-capacity-inputs/1",
        "derived_from": {
            "results": results.get("command", "python -m bench.scaleout"),
            "finished_at": results.get("finished_at"),
            "revision": results["revisions"][0],
            "load_average_end": results.get("machine", {}).get("load_average_end"),
        },
        "provenance": {
            "loaded figures": f"median over the {len(closed)} closed-loop steps of {head} "
            f"({steps}), over the sending window",
            "per delivery": "slope of the delivery split (two replicas, one and two devices "
            "per user); per message: the closed-loop figure less its deliveries at that slope",
            "sockets": f"{idle['sockets']} idle sockets on one replica",
        },
        "measured": measured,
    }


# --- output --------------------------------------------------------------------------------


def _si(value: float, unit: str = "") -> str:
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.1f} {prefix}{unit}".rstrip()
    return f"{value:.1f} {unit}".rstrip()


def markdown(plan: Plan, workload: Workload) -> str:
    """The projection as the table docs/scaling.md shows (and its test compares)."""
    u = plan.postgres_primary_utilisation
    rows = [
        ("Workload", f"{workload.sockets:,.0f} sockets, {workload.messages_per_s:,.0f} messages/s, "
         f"{workload.deliveries_per_message:g} deliveries per message, "
         f"{workload.connects_per_socket_per_hour:g} reconnects per socket per hour"),
        ("Replica CPU", f"{plan.replica_cores:,.1f} cores"),
        ("Pods", f"**{plan.pods}** (CPU needs {plan.pods_for_cpu}, memory needs "
         f"{plan.pods_for_memory}; {plan.sockets_per_pod:,} sockets per pod at most)"),
        ("Messages per pod", f"{plan.messages_per_s_per_pod:,.0f}/s"),
        ("Redis", f"{_si(plan.redis_commands_per_s)} commands/s = {plan.redis_cores:.2f} cores; "
         f"**{plan.redis_shards} shards**; {plan.redis_memory_bytes / MIB:,.0f} MiB"),
        ("PostgreSQL CPU", f"{plan.postgres_cores:.1f} cores ({u['cpu']:.0%} of the target)"),
        ("PostgreSQL commits", f"{plan.postgres_commits_per_s:,.0f}/s ({u['commits']:.0%})"),
        ("PostgreSQL WAL", f"{plan.postgres_wal_bytes_per_s / MIB:,.1f} MiB/s "
         f"({u['wal_bandwidth']:.0%})"),
        ("PostgreSQL tuples", f"{plan.postgres_tuples_per_s:,.0f}/s"),
        ("One primary's ceiling", f"{plan.postgres_max_messages_per_s:,.0f} messages/s "
         f"(first limit: {plan.postgres_limit_first_reached})"),
    ]  # fmt: skip
    return "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=Path, default=INPUTS)
    parser.add_argument("--sockets", type=float, default=1_000_000)
    parser.add_argument("--messages-per-s", type=float, default=50_000)
    parser.add_argument("--deliveries-per-message", type=float, default=2.0)
    parser.add_argument("--connects-per-socket-per-hour", type=float, default=2.0)
    parser.add_argument("--json", action="store_true", help="the plan as JSON (else: a table)")
    parser.add_argument(
        "--derive", type=Path, default=None, help="a bench.scaleout results file: write --inputs"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.derive is not None:
            document = derive(json.loads(args.derive.read_text()))
            args.inputs.write_text(json.dumps(document, indent=2) + "\n")
            print(f"wrote {args.inputs}")
        workload = Workload(
            args.sockets,
            args.messages_per_s,
            args.deliveries_per_message,
            args.connects_per_socket_per_hour,
        )
        plan = project(load_inputs(args.inputs), Assumptions(), workload)
    except (CapacityError, OSError, json.JSONDecodeError) as e:
        print(f"capacity: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(plan.as_json(), indent=2))
    else:
        print(markdown(plan, workload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
