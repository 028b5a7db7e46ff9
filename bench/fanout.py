"""Cross-replica fan-out: targeted per-user channels against python-socketio's AsyncRedisManager.

    .venv/bin/python -m bench.fanout            # both designs, three offered rates + closed loop
    .venv/bin/python -m bench.fanout --quick    # smoke run (about a minute and a half)

Issue 4's benchmark. For each design it starts three replicas sharing a private PostgreSQL and
Redis, connects 2,000 users (1,000 pairs: a sender with one socket, and a recipient with two
sockets on the two replicas the sender is not on, so every message is delivered twice and both
times through Redis), and measures:

- open-loop steps at fixed offered rates, and a closed-loop step (each sender keeps one message
  in flight, the next sent when the ack arrives: as fast as acks allow);
- per step: acked messages/s, delivered events/s, send->receive and send->ack latency (p50, p99,
  max, from the load generator's clock), lost / duplicated / misrouted deliveries (the ledger of
  ``messaging.bench``), CPU seconds per 1,000 acked messages of each replica, of Redis, of
  PostgreSQL and of the load generator (user+system time from /proc/<pid>/stat over the measured
  window);
- the scaling case: two more replicas holding only idle users (no conversation, no traffic),
  their CPU with no traffic at all and then during a load step at the same offered rate, for
  each design. With targeted fan-out they subscribe only to their own users' channels and
  decode nothing; with AsyncRedisManager they decode every event of the cluster.

Designs: ``targeted`` is ``messaging serve`` as shipped (per-user channels ``deliver:{userId}``);
``broadcast`` is ``python -m bench.broadcast_replica`` (the same service with AsyncRedisManager).
Each design gets a fresh database and an emptied Redis. Everything runs on this machine, load
generator included, so the totals are what two cores can do for the whole system; the machine's
load average is recorded because other work on it moves the figures. The replicas run the
service code of ``--service-from`` (default HEAD; ``working`` for the checkout as it is). Results:
bench/results/fanout.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench import cluster
from bench.fanout_load import Population, SetupError, Step, StepOutcome
from messaging.bench.accounting import LatencySummary, rate
from tests.support.servers import PostgresServer, RedisControl, ServerError

DESIGNS = {
    "targeted": None,  # messaging serve
    "broadcast": [*cluster.SERVICE[:1], "-m", "bench.broadcast_replica"],
}
SCRAPED = {
    "messaging_send_to_commit_seconds",
    "messaging_backplane_lag_seconds",
    "messaging_commit_to_deliver_seconds",
    "messaging_backplane_received",
    "messaging_backplane_published",
    "messaging_backplane_listener_restarts",
}
ACTIVE_REPLICAS = 3
IDLE_REPLICAS = 2


@dataclass
class Deployment:
    """One design's replicas and the processes whose CPU a step reports."""

    design: str
    active: list[cluster.Service]
    idle: list[cluster.Service] = field(default_factory=list)
    others: dict[str, int] = field(default_factory=dict)  # redis, postgres

    def pids(self) -> dict[str, int]:
        named = {s.name: s.pid for s in [*self.active, *self.idle]}
        return {**named, **self.others}


def cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    snapshot = {name: cluster.cpu_seconds(pid) for name, pid in pids.items()}
    snapshot["loadgen"] = time.process_time()
    return snapshot


def step_result(
    deployment: Deployment,
    step: Step,
    outcome: StepOutcome,
    cpu: dict[str, float],
) -> dict[str, Any]:
    tally = outcome.tally
    acked = tally.acked_in_window
    cpu_entries = {
        name: {
            "seconds": round(seconds, 3),
            "core_share": round(seconds / outcome.measured_s, 3),
            "seconds_per_1000_messages": round(seconds * 1000 / acked, 3) if acked else None,
        }
        for name, seconds in cpu.items()
    }
    return {
        "design": deployment.design,
        "step": step.name,
        "replicas": len(deployment.active) + len(deployment.idle),
        "offered_per_s": step.rate,
        "window": step.window,
        "measured_seconds": outcome.measured_s,
        "acked_per_s": round(rate(acked, outcome.measured_s), 1),
        "delivered_per_s": round(rate(tally.delivered_in_window, outcome.measured_s), 1),
        "latency_ms": {
            "send_to_receive": LatencySummary.of_microseconds(tally.delivery_us).as_json(),
            "send_to_ack": LatencySummary.of_microseconds(tally.ack_us).as_json(),
        },
        "totals": {
            "sent": tally.sent,
            "acked": tally.acked,
            "errors": dict(tally.errors),
            "unanswered": tally.unanswered,
            "expected_deliveries": tally.expected_deliveries,
            "delivered": tally.delivered,
            "lost": tally.lost,
            "duplicated": tally.duplicated,
            "misrouted": tally.misrouted,
        },
        "skipped_by_window": outcome.skipped_by_window,
        "foreign_events": outcome.foreign_events,
        "disconnects": outcome.disconnects,
        "cpu": cpu_entries,
        "load_average": os.getloadavg()[0],
    }


def scrape(urls: list[str]) -> dict[str, float]:
    """The histogram and counter samples of ``SCRAPED`` from every replica, summed."""
    total: dict[str, float] = {}
    for url in urls:
        try:
            with urllib.request.urlopen(f"{url}/metrics", timeout=10) as reply:  # noqa: S310
                text = reply.read().decode()
        except OSError:
            continue
        for family in text_string_to_metric_families(text):
            if family.name not in SCRAPED:
                continue
            for sample in family.samples:
                # "le" last, so a histogram's bucket keys share the prefix of its labels.
                pairs = sorted(sample.labels.items(), key=lambda kv: (kv[0] == "le", kv[0]))
                labels = ",".join(f"{k}={v}" for k, v in pairs)
                key = f"{sample.name}{{{labels}}}"
                total[key] = total.get(key, 0.0) + sample.value
    return total


def histogram_summary(delta: dict[str, float], name: str, labels: str = "") -> dict[str, Any]:
    """Mean and the bucket bound under which 99% fell, over the step (None when empty)."""
    count = delta.get(f"{name}_count{{{labels}}}", 0.0)
    if count <= 0:
        return {"count": 0, "mean_ms": None, "p99_at_most_ms": None}
    mean = delta.get(f"{name}_sum{{{labels}}}", 0.0) / count
    prefix = f"{name}_bucket{{" + (f"{labels}," if labels else "")
    bounds = []
    for key, value in delta.items():
        if key.startswith(prefix):
            bound = key[len(prefix) :].removeprefix("le=").rstrip("}")
            bounds.append((float(bound), value))
    p99 = next((b for b, v in sorted(bounds) if v >= 0.99 * count), None)
    return {
        "count": int(count),
        "mean_ms": round(mean * 1000, 2),
        "p99_at_most_ms": None if p99 is None or p99 == float("inf") else p99 * 1000,
    }


def service_metrics(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """What the replicas' own /metrics say about the step (targeted fan-out only)."""
    delta = {k: v - before.get(k, 0.0) for k, v in after.items()}
    return {
        "send_to_commit": histogram_summary(delta, "messaging_send_to_commit_seconds"),
        "backplane_lag": histogram_summary(delta, "messaging_backplane_lag_seconds"),
        "commit_to_deliver_backplane": histogram_summary(
            delta, "messaging_commit_to_deliver_seconds", "path=backplane"
        ),
        "backplane_received": int(delta.get("messaging_backplane_received_total{}", 0)),
        "publish_dropped": int(
            delta.get("messaging_backplane_published_total{outcome=dropped}", 0)
        ),
        "publish_failed": int(delta.get("messaging_backplane_published_total{outcome=failed}", 0)),
        "listener_restarts": int(delta.get("messaging_backplane_listener_restarts_total{}", 0)),
    }


async def measure_step(
    population: Population, deployment: Deployment, step: Step, number: int
) -> dict[str, Any]:
    pids = deployment.pids()
    urls = [s.metrics_url for s in [*deployment.active, *deployment.idle]]
    marks: dict[str, dict[str, float]] = {}

    def mark(name: str) -> Callable[[], None]:
        return lambda: marks.__setitem__(name, cpu_snapshot(pids))

    scraped_before = await asyncio.to_thread(scrape, urls)
    outcome = await population.run_step(step, number, mark("start"), mark("end"))
    scraped_after = await asyncio.to_thread(scrape, urls)
    cpu = {name: marks["end"][name] - marks["start"][name] for name in marks["start"]}
    result = step_result(deployment, step, outcome, cpu)
    result["service_metrics_whole_step"] = service_metrics(scraped_before, scraped_after)
    return result


async def idle_baseline(deployment: Deployment, seconds: float) -> dict[str, float]:
    """CPU share of a core each replica uses with every socket connected and no traffic."""
    pids = deployment.pids()
    before = cpu_snapshot(pids)
    await asyncio.sleep(seconds)
    after = cpu_snapshot(pids)
    return {name: round((after[name] - before[name]) / seconds, 4) for name in before}


# --- one design ------------------------------------------------------------------------------


@dataclass
class Context:
    procs: cluster.Processes
    pg: PostgresServer
    redis: RedisControl
    connections: str
    args: argparse.Namespace
    steps: list[Step]
    idle_step: Step


def flush_redis(port: int) -> None:
    """Each design starts from an empty Redis (no registry or presence left by the last one)."""
    subprocess.run(["redis-cli", "-p", str(port), "FLUSHALL"], check=True, capture_output=True)


async def start_replicas(
    ctx: Context, design: str, env: dict[str, str], names: Sequence[str]
) -> list[cluster.Service]:
    argv = DESIGNS[design]
    started = [ctx.procs.service(name, env, argv, wait=False) for name in names]
    await asyncio.gather(*(asyncio.to_thread(cluster.wait_ready, s) for s in started))
    return started


async def quiet(deployment: Deployment) -> None:
    await asyncio.to_thread(cluster.wait_quiet, list(deployment.pids().values()))


async def run_design(ctx: Context, design: str, number: int) -> dict[str, Any]:
    args = ctx.args
    await asyncio.to_thread(ctx.pg.create_database, f"fanout_{design}")
    database = ctx.pg.url(f"fanout_{design}")
    env = cluster.service_env(
        database_url=database,
        connections=ctx.connections,
        redis_url=ctx.redis.url,
        workdir=ctx.procs.workdir,
        code=ctx.procs.code,
    )
    await asyncio.to_thread(cluster.migrate, env)
    await asyncio.to_thread(flush_redis, ctx.redis.port)
    print(f"\n[{design}] starting {ACTIVE_REPLICAS} replicas ...", flush=True)
    active = await start_replicas(
        ctx, design, env, [f"{design}-{i}" for i in range(ACTIVE_REPLICAS)]
    )
    assert ctx.redis.proc is not None and ctx.pg.proc is not None
    deployment = Deployment(
        design, active, others={"redis": ctx.redis.proc.pid, "postgres": ctx.pg.proc.pid}
    )
    population = Population(
        urls=[s.url for s in active],
        jwt_secret=cluster.JWT_SECRET,
        run_id=f"{number}{uuid.uuid4().hex[:6]}",
    )
    try:
        devices = population.add_pairs(args.pairs, ACTIVE_REPLICAS)
        connected_at = time.monotonic()
        await population.connect(devices)
        await population.make_conversations()
        print(
            f"[{design}] {len(devices):,} sockets of {2 * args.pairs:,} users connected and "
            f"{args.pairs:,} conversations made in {time.monotonic() - connected_at:.1f} s",
            flush=True,
        )
        steps = []
        for index, step in enumerate(ctx.steps):
            await quiet(deployment)
            result = await measure_step(population, deployment, step, index)
            steps.append(result)
            print_step(result)

        print(
            f"[{design}] adding {IDLE_REPLICAS} replicas with {args.idle_users:,} idle users "
            "each ...",
            flush=True,
        )
        deployment.idle = await start_replicas(
            ctx,
            design,
            env,
            [f"{design}-idle-{j}" for j in range(ACTIVE_REPLICAS, ACTIVE_REPLICAS + IDLE_REPLICAS)],
        )
        population.urls.extend(s.url for s in deployment.idle)
        idle_devices = []
        for j in range(IDLE_REPLICAS):
            idle_devices += population.add_idle(
                args.idle_users, ACTIVE_REPLICAS + j, j * args.idle_users
            )
        await population.connect(idle_devices)
        await quiet(deployment)
        baseline = await idle_baseline(deployment, args.baseline_seconds)
        loaded = await measure_step(population, deployment, ctx.idle_step, len(ctx.steps))
        print_step(loaded)
        return {
            "design": design,
            "steps": steps,
            "idle_replicas": {
                "idle_users_per_replica": args.idle_users,
                "baseline_core_share_no_traffic": baseline,
                "step": loaded,
            },
            "sockets_connected_at_end": population.connected,
            "sockets": len(population.devices),
        }
    finally:
        population.close()
        await asyncio.gather(
            *(asyncio.to_thread(s.proc.stop) for s in [*deployment.active, *deployment.idle])
        )


# --- output ----------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "   n/a" if value is None else f"{value:>6.1f}"


def print_header() -> None:
    print(
        f"\n{'design':<9} {'step':<14} {'rep':>3} {'offered':>7} {'acked/s':>8} "
        f"{'deliv/s':>8} | {'send->receive ms':^20} | {'lost':>4} {'dup':>4} {'err':>4} | "
        "CPU s per 1,000 msgs: replicas ... | redis    pg loadgen"
    )
    print(f"{'':<9} {'':<14} {'':>3} {'':>7} {'':>8} {'':>8} | {'p50':>6} {'p99':>6} {'max':>6} |")


def print_step(r: dict[str, Any]) -> None:
    lat = r["latency_ms"]["send_to_receive"]
    totals = r["totals"]
    errors = sum(totals["errors"].values()) + totals["unanswered"]
    replicas = [
        v["seconds_per_1000_messages"]
        for k, v in r["cpu"].items()
        if k not in ("redis", "postgres", "loadgen")
    ]
    per_replica = " ".join(f"{x:.2f}" if x is not None else "n/a" for x in replicas)
    others = " ".join(
        f"{r['cpu'][k]['seconds_per_1000_messages'] or 0:>5.2f}"
        for k in ("redis", "postgres", "loadgen")
    )
    offered = "max" if r["offered_per_s"] is None else f"{r['offered_per_s']:.0f}"
    print(
        f"{r['design']:<9} {r['step']:<14} {r['replicas']:>3} {offered:>7} "
        f"{r['acked_per_s']:>8.0f} {r['delivered_per_s']:>8.0f} | {_ms(lat['p50'])} "
        f"{_ms(lat['p99'])} {_ms(lat['max'])} | {totals['lost']:>4} {totals['duplicated']:>4} "
        f"{errors:>4} | {per_replica} | {others}",
        flush=True,
    )


def print_idle_summary(designs: list[dict[str, Any]]) -> None:
    print("\nIdle replicas (only idle users, no traffic for them): CPU share of one core")
    print(
        f"{'design':<9} {'offered':>7} | {'no traffic':>10} | {'under load':>10} | "
        f"{'s per 1,000 msgs':>16} | active replicas' s per 1,000 msgs"
    )
    for d in designs:
        idle = d["idle_replicas"]
        step = idle["step"]
        names = [k for k in step["cpu"] if "-idle-" in k]
        active = [
            k for k in step["cpu"] if k not in names and k not in ("redis", "postgres", "loadgen")
        ]
        base = " ".join(f"{idle['baseline_core_share_no_traffic'][k]:.3f}" for k in names)
        load = " ".join(f"{step['cpu'][k]['core_share']:.3f}" for k in names)
        per = " ".join(f"{step['cpu'][k]['seconds_per_1000_messages'] or 0:.3f}" for k in names)
        act = " ".join(f"{step['cpu'][k]['seconds_per_1000_messages'] or 0:.2f}" for k in active)
        print(f"{d['design']:<9} {step['offered_per_s']:>7.0f} | {base} | {load} | {per} | {act}")


# --- driver ----------------------------------------------------------------------------------


def plan(args: argparse.Namespace) -> tuple[list[Step], Step]:
    steps = [
        Step(f"rate {r:g}/s", float(r), args.window, args.duration, args.warmup) for r in args.rates
    ]
    steps.append(Step("closed loop w1", None, 1, args.duration, args.warmup))
    idle_step = Step(
        f"idle+ {args.idle_rate:g}/s",
        float(args.idle_rate),
        args.window,
        args.duration,
        args.warmup,
    )
    return steps, idle_step


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 500 pairs, short steps, one rate"
    )
    parser.add_argument("--pairs", type=int, default=None, help="sender/recipient pairs (1000)")
    parser.add_argument(
        "--rates",
        type=lambda s: [float(x) for x in s.split(",")],
        default=None,
        help="offered rates, messages/s, comma-separated (default 250,500,1000)",
    )
    parser.add_argument("--window", type=int, default=4, help="max in flight per sender (open)")
    parser.add_argument("--duration", type=float, default=None, help="measured seconds per step")
    parser.add_argument("--warmup", type=float, default=None)
    parser.add_argument("--idle-users", type=int, default=None, help="per idle replica (500)")
    parser.add_argument("--idle-rate", type=float, default=None, help="default: middle rate")
    parser.add_argument("--baseline-seconds", type=float, default=None)
    parser.add_argument(
        "--designs", type=lambda s: s.split(","), default=list(DESIGNS), help="targeted,broadcast"
    )
    parser.add_argument(
        "--service-from",
        default="HEAD",
        metavar="REF",
        help="commit whose service/ the replicas run (default HEAD), or 'working'",
    )
    parser.add_argument("--out", type=Path, default=cluster.RESULTS_DIR / "fanout.json")
    args = parser.parse_args(argv)
    if args.pairs is None:
        args.pairs = 500 if args.quick else 1000
    if args.idle_users is None:
        args.idle_users = 200 if args.quick else 500
    if args.rates is None:
        args.rates = [300.0] if args.quick else [250.0, 500.0, 1000.0]
    if args.duration is None:
        args.duration = 4.0 if args.quick else 20.0
    if args.warmup is None:
        args.warmup = 1.0 if args.quick else 3.0
    if args.baseline_seconds is None:
        args.baseline_seconds = 2.0 if args.quick else 10.0
    if args.idle_rate is None:
        args.idle_rate = args.rates[len(args.rates) // 2]
    unknown = set(args.designs) - set(DESIGNS)
    if unknown:
        parser.error(f"unknown designs: {', '.join(sorted(unknown))}")
    return args


async def run_all(args: argparse.Namespace, procs: cluster.Processes) -> dict[str, Any]:
    measured_revision = await asyncio.to_thread(procs.export_service, args.service_from)
    print(
        f"service code: {measured_revision}\n"
        "starting PostgreSQL, Redis and the Connections stand-in ...",
        flush=True,
    )
    pg = await asyncio.to_thread(procs.postgres)
    redis = await asyncio.to_thread(procs.redis)
    connections = await asyncio.to_thread(procs.connections)
    steps, idle_step = plan(args)
    ctx = Context(procs, pg, redis, connections, args, steps, idle_step)
    designs = []
    print_header()
    for number, design in enumerate(args.designs):
        designs.append(await run_design(ctx, design, number))
    return {
        "schema": "messaging-bench-fanout/1",
        "revision": measured_revision,
        "config": {
            "pairs": args.pairs,
            "users": 2 * args.pairs,
            "sockets": 3 * args.pairs,
            "active_replicas": ACTIVE_REPLICAS,
            "idle_replicas": IDLE_REPLICAS,
            "idle_users_per_replica": args.idle_users,
            "window_open_loop": args.window,
            "steps": [s.__dict__ for s in steps],
            "idle_step": idle_step.__dict__,
            "postgres_settings": dict(cluster.BENCH_PG_SETTINGS),
            "placement": "sender p: replica p%3; recipient p: replicas (p+1)%3 and (p+2)%3",
        },
        "designs": designs,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    load_before = os.getloadavg()
    result: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="messaging-bench-fanout-") as tmp:
        procs = cluster.Processes(Path(tmp))
        try:
            with cluster.sigterm_unwinds():
                result = cluster.run_async(run_all(args, procs), fast_loop=True)
        except (KeyboardInterrupt, cluster.Interrupted):
            print("\ninterrupted; every process started was stopped", file=sys.stderr)
            return 130
        except (ServerError, SetupError) as exc:
            print(f"fan-out benchmark failed: {exc}", file=sys.stderr)
            return 1
        finally:
            procs.close()
            procs.keep_logs(cluster.RESULTS_DIR / "logs" / "fanout")
    assert result is not None
    result["started_at"] = started
    result["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }
    print_idle_summary(result["designs"])
    print(
        f"\nload average {load_before[0]:.1f} -> {result['machine']['load_average_after'][0]:.1f}"
        f" on {os.cpu_count()} CPUs"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    clean = all(
        s["totals"]["lost"] == 0
        and s["totals"]["duplicated"] == 0
        and s["totals"]["misrouted"] == 0
        for d in result["designs"]
        for s in [*d["steps"], d["idle_replicas"]["step"]]
    )
    return 0 if clean else 3


if __name__ == "__main__":
    sys.exit(main())
