"""Group fan-out: one 50-member group, members spread over three replicas, every member sending.

    .venv/bin/python -m bench.fanout_group            # three offered rates + closed loop
    .venv/bin/python -m bench.fanout_group --quick    # smoke run

Issue 16's benchmark row. It starts three replicas of ``messaging serve`` sharing a private
PostgreSQL and Redis (``bench.fanout``'s machinery), connects the members (member m on replica
m mod 3, one socket each), makes the group, and sends round-robin from every member: each message
is expected on the 49 other members' sockets, two thirds of them through Redis. Per step:
messages/s acked, deliveries/s (first arrival per socket), send->receive p50/p99, lost /
duplicated / misrouted, and CPU: the replicas' user+system seconds per delivery, and per message
for PostgreSQL and Redis. Everything runs on this machine, load generator included; the load
average is recorded because other work on it moves the figures. Results:
bench/results/fanout_group.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import cluster
from bench.fanout import (
    Context,
    Deployment,
    flush_redis,
    measure_step,
    quiet,
    start_replicas,
)
from bench.fanout_load import Population, SetupError, Step
from tests.support.servers import ServerError

ACTIVE_REPLICAS = 3


def per_delivery(result: dict[str, Any]) -> dict[str, Any]:
    """CPU of the replicas per delivery, and of PostgreSQL and Redis per message."""
    delivered = result["delivered_per_s"] * result["measured_seconds"]
    acked = result["acked_per_s"] * result["measured_seconds"]
    replicas = sum(
        v["seconds"] for k, v in result["cpu"].items() if k not in ("redis", "postgres", "loadgen")
    )
    return {
        "replicas_us_per_delivery": round(replicas * 1e6 / delivered, 1) if delivered else None,
        "postgres_ms_per_message": (
            round(result["cpu"]["postgres"]["seconds"] * 1e3 / acked, 3) if acked else None
        ),
        "redis_us_per_delivery": (
            round(result["cpu"]["redis"]["seconds"] * 1e6 / delivered, 1) if delivered else None
        ),
    }


def print_row(result: dict[str, Any]) -> None:
    lat = result["latency_ms"]["send_to_receive"]
    totals = result["totals"]
    cpu = result["cpu_per_delivery"]
    offered = "max" if result["offered_per_s"] is None else f"{result['offered_per_s']:.0f}"
    print(
        f"{result['step']:<16} {offered:>7} {result['acked_per_s']:>8.1f} "
        f"{result['delivered_per_s']:>9.0f} | {lat['p50'] or 0:>6.1f} {lat['p99'] or 0:>7.1f} | "
        f"{totals['lost']:>4} {totals['duplicated']:>4} {totals['misrouted']:>4} "
        f"{sum(totals['errors'].values()) + totals['unanswered']:>4} | "
        f"{cpu['replicas_us_per_delivery']!s:>8} {cpu['postgres_ms_per_message']!s:>8} "
        f"{cpu['redis_us_per_delivery']!s:>7} | load {result['load_average']:.1f}",
        flush=True,
    )


async def run(args: argparse.Namespace, procs: cluster.Processes) -> dict[str, Any]:
    revision = await asyncio.to_thread(procs.export_service, args.service_from)
    print(f"service code: {revision}", flush=True)
    pg = await asyncio.to_thread(procs.postgres)
    redis = await asyncio.to_thread(procs.redis)
    connections = await asyncio.to_thread(procs.connections)
    steps = [
        Step(f"rate {r:g}/s", float(r), args.window, args.duration, args.warmup) for r in args.rates
    ]
    steps.append(Step("closed loop w1", None, 1, args.duration, args.warmup))
    ctx = Context(procs, pg, redis, connections, args, steps, steps[0])
    await asyncio.to_thread(pg.create_database, "fanout_group")
    database = pg.url("fanout_group")
    env = cluster.service_env(
        database_url=database,
        connections=connections,
        redis_url=redis.url,
        workdir=procs.workdir,
        code=procs.code,
    )
    await asyncio.to_thread(cluster.migrate, env)
    await asyncio.to_thread(flush_redis, redis.port)
    active = await start_replicas(
        ctx, "targeted", env, [f"group-{i}" for i in range(ACTIVE_REPLICAS)]
    )
    assert redis.proc is not None and pg.proc is not None
    deployment = Deployment(
        "group", active, others={"redis": redis.proc.pid, "postgres": pg.proc.pid}
    )
    population = Population(
        urls=[s.url for s in active], jwt_secret=cluster.JWT_SECRET, run_id=uuid.uuid4().hex[:6]
    )
    results = []
    try:
        devices = population.add_group(args.members, ACTIVE_REPLICAS)
        await population.connect(devices)
        await population.make_group("bench")
        print(
            f"{args.members} members on {ACTIVE_REPLICAS} replicas; each message is expected on "
            f"{args.members - 1} sockets\n"
            f"{'step':<16} {'offered':>7} {'msgs/s':>8} {'deliv/s':>9} | {'p50 ms':>6} "
            f"{'p99 ms':>7} | lost  dup misr  err | us/deliv pg ms/msg redis us | machine",
            flush=True,
        )
        for index, step in enumerate(steps):
            await quiet(deployment)
            result = await measure_step(population, deployment, step, index)
            result["cpu_per_delivery"] = per_delivery(result)
            results.append(result)
            print_row(result)
    finally:
        population.close()
        await asyncio.gather(*(asyncio.to_thread(s.proc.stop) for s in active))
    return {
        "schema": "messaging-bench-fanout-group/1",
        "revision": revision,
        "config": {
            "members": args.members,
            "replicas": ACTIVE_REPLICAS,
            "placement": "member m: replica m%3, one socket; every member sends",
            "steps": [s.__dict__ for s in steps],
        },
        "steps": results,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: one rate, short steps")
    parser.add_argument("--members", type=int, default=50)
    parser.add_argument(
        "--rates",
        type=lambda s: [float(x) for x in s.split(",")],
        default=None,
        help="offered messages/s, comma-separated (default 20,50,100)",
    )
    parser.add_argument("--window", type=int, default=4, help="max in flight per sender (open)")
    parser.add_argument("--duration", type=float, default=None)
    parser.add_argument("--warmup", type=float, default=None)
    parser.add_argument("--service-from", default="HEAD", metavar="REF")
    parser.add_argument("--out", type=Path, default=cluster.RESULTS_DIR / "fanout_group.json")
    args = parser.parse_args(argv)
    if args.rates is None:
        args.rates = [20.0] if args.quick else [20.0, 50.0, 100.0]
    if args.duration is None:
        args.duration = 4.0 if args.quick else 15.0
    if args.warmup is None:
        args.warmup = 1.0 if args.quick else 3.0
    if args.members < 2:
        parser.error("a group needs at least two members")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    load_before = os.getloadavg()
    wall = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="messaging-bench-group-") as tmp:
        procs = cluster.Processes(Path(tmp))
        try:
            with cluster.sigterm_unwinds():
                result = cluster.run_async(run(args, procs), fast_loop=True)
        except (KeyboardInterrupt, cluster.Interrupted):
            print("\ninterrupted; every process started was stopped", file=sys.stderr)
            return 130
        except (ServerError, SetupError) as exc:
            print(f"group fan-out benchmark failed: {exc}", file=sys.stderr)
            return 1
        finally:
            procs.close()
            procs.keep_logs(cluster.RESULTS_DIR / "logs" / "fanout_group")
    result["started_at"] = started
    result["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "wall_seconds": round(time.monotonic() - wall, 1),
    }
    print(
        f"load average {load_before[0]:.1f} -> {result['machine']['load_average_after'][0]:.1f}"
        f" on {os.cpu_count()} CPUs"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    clean = all(
        s["totals"]["lost"] == 0
        and s["totals"]["duplicated"] == 0
        and s["totals"]["misrouted"] == 0
        for s in result["steps"]
    )
    return 0 if clean else 3


if __name__ == "__main__":
    sys.exit(main())
