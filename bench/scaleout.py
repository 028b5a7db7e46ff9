"""Adding replicas against one PostgreSQL: throughput, p99 and lock waits at 2, 4 and 6 (issue 19).

    .venv/bin/python -m bench.scaleout                       # HEAD and the global-lock revision
    .venv/bin/python -m bench.scaleout --quick               # one run, short steps
    .venv/bin/python -m bench.scaleout --refs HEAD --replicas 2,6 --rate 400

One PostgreSQL (durable: fsync and synchronous_commit on, as in production) and one Redis. For
each revision (``--refs``: by default this checkout's HEAD and f3c30d6, the last revision whose
sends took their position under the one ``message_stream`` row lock), each replica count and
each load, a fresh database, ``messaging migrate`` and N ``messaging serve`` replicas of that
revision's code; then ``messaging bench`` drives the same load spread over the N replicas: an
open loop at ``--rate`` messages/s (the same work whatever N: p99 is comparable) and a closed
loop with ``--closed-window`` in flight per sender (as fast as acks allow: throughput).

While the load runs, ``pg_stat_activity`` and ``pg_locks`` are sampled every ``--interval``
seconds (``bench.lockwaits``): backends waiting on a heavyweight lock, and the ungranted locks by
type and relation. Around the sending window: CPU of every replica, PostgreSQL, Redis (/proc),
the replicas' run-queue wait (/proc/<pid>/task/*/schedstat: time runnable but without a core,
which is what CPU contention costs them), Redis ``INFO commandstats``, and the messages
committed (``count(*)``). Around the whole step, with the statistics settled: PostgreSQL's
commits, WAL records and bytes, and tuples written per table (``pg_stat_database``,
``pg_stat_wal``, ``pg_stat_user_tables``).

Then, once, what the capacity model (``bench/capacity.py``, ``docs/scaling.md``) also needs: CPU
and Redis commands per delivery (the closed loop on two replicas with one, then two devices per
user: one delivery per message, then three) and idle sockets on one replica (memory per socket,
CPU and Redis commands per handshake, and per socket-second while they sit idle).

Rounds alternate the order of replica counts and revisions, so what the neighbours do on this
shared machine lands on all alike. Results: ``bench/results/scaleout.json`` (every step in
full, the load average with each); the table is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from bench import lockwaits
from bench.cluster import (
    JWT_SECRET,
    RESULTS_DIR,
    Interrupted,
    Processes,
    Service,
    cpu_seconds,
    export_service,
    migrate,
    run_async,
    service_env,
    sigterm_unwinds,
    wait_quiet,
    wait_ready,
)
from bench.run import ensure_packages
from messaging.bench import probes
from tests.support import launch, servers
from tests.support.servers import PostgresServer, RedisControl

# f3c30d6: the parent of 837ad2f ("no cluster-wide lock on the write path"): every send took its
# stream position with UPDATE message_stream ... WHERE id = 1, one row for the whole cluster.
GLOBAL_LOCK_REF = "f3c30d6"
OUT = RESULTS_DIR / "scaleout.json"
LOGS = RESULTS_DIR / "logs" / "scaleout"
# A backend flushes its statistics at most once a second while busy and within 10 s once idle
# (PostgreSQL 15's PGSTAT_IDLE_INTERVAL): the step's totals are read after that has passed.
STATS_SETTLE_S = 11.0
# Durable PostgreSQL: a lock held across a commit is held across its WAL flush, which is what
# makes a hot row expensive. The rest as the other benchmarks.
PG_SETTINGS = {
    "fsync": "on",
    "synchronous_commit": "on",
    "shared_buffers": "256MB",
    "max_connections": "300",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "30min",
}


@dataclass(frozen=True)
class Load:
    name: str
    rate: float | None  # open loop at this many messages/s in total, else closed loop
    window: int
    devices: int = 1
    users: int = 120


@dataclass
class Revision:
    ref: str
    code: Path | None
    revision: dict[str, Any]
    connections: str = ""


# --- readings ------------------------------------------------------------------------------


def schedstat(pid: int) -> tuple[float, float]:
    """(on-CPU s, runnable-waiting s) summed over every thread of ``pid`` and its children."""
    run = wait = 0.0
    for member in probes.descendants(pid):
        for task in Path(f"/proc/{member}/task").glob("*"):
            with contextlib.suppress(OSError, lockwaits.BadSample):
                r, w = lockwaits.parse_schedstat((task / "schedstat").read_text())
                run, wait = run + r, wait + w
    return run, wait


def redis_commands(redis: RedisControl) -> dict[str, float]:
    done = subprocess.run(
        ["redis-cli", "-p", str(redis.port), "INFO", "commandstats"],
        capture_output=True,
        text=True,
        check=True,
    )
    calls = lockwaits.parse_commandstats(done.stdout)
    calls.pop("info", None)  # this reading itself
    return {k: float(v) for k, v in calls.items()}


def redis_used_memory(redis: RedisControl) -> int:
    done = subprocess.run(
        ["redis-cli", "-p", str(redis.port), "INFO", "memory"],
        capture_output=True,
        text=True,
        check=True,
    )
    for line in done.stdout.splitlines():
        if line.startswith("used_memory:"):
            return int(line.split(":", 1)[1])
    raise lockwaits.BadSample("INFO memory without used_memory")


PG_TOTALS_SQL = """
SELECT 'xact_commit', xact_commit::float8 FROM pg_stat_database WHERE datname = current_database()
UNION ALL SELECT 'xact_rollback', xact_rollback::float8 FROM pg_stat_database
    WHERE datname = current_database()
UNION ALL SELECT 'wal_records', wal_records::float8 FROM pg_stat_wal
UNION ALL SELECT 'wal_bytes', wal_bytes::float8 FROM pg_stat_wal
UNION ALL SELECT 'wal_fpi', wal_fpi::float8 FROM pg_stat_wal
UNION ALL SELECT 'inserted ' || relname, n_tup_ins::float8 FROM pg_stat_user_tables
UNION ALL SELECT 'updated ' || relname, n_tup_upd::float8 FROM pg_stat_user_tables
"""


async def pg_totals(conn: asyncpg.Connection) -> dict[str, float]:
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    return {name: value for name, value in await conn.fetch(PG_TOTALS_SQL)}


async def messages_committed(conn: asyncpg.Connection) -> int:
    value = await conn.fetchval("SELECT count(*) FROM messages")
    return int(value)


async def sample_waits(
    conn: asyncpg.Connection, summary: lockwaits.WaitSummary, running: list[int]
) -> None:
    """Sample until cancelled; also the machine's runnable tasks (/proc/loadavg) each time."""
    while True:
        summary.add(lockwaits.parse_sample(await conn.fetch(lockwaits.SAMPLE_SQL)))
        running.append(runnable_tasks())
        await asyncio.sleep(summary.interval_s)


def read_result(path: Path) -> dict[str, Any] | None:
    """The load generator's JSON result, None when it wrote none."""
    try:
        result: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return result


def runnable_tasks() -> int:
    """Tasks runnable on the machine right now (the 4th field of /proc/loadavg: running/total)."""
    with Path("/proc/loadavg").open() as f:
        return int(f.read().split()[3].split("/")[0])


@dataclass
class Window:
    """What the processes had used at one moment (the sending window is after - before)."""

    at: float
    replicas_cpu: list[float]
    replicas_sched: list[tuple[float, float]]
    pg_cpu: float
    redis_cpu: float
    redis: dict[str, float]
    messages: int


async def window_reading(
    replicas: Sequence[Service], pg: PostgresServer, redis: RedisControl, conn: asyncpg.Connection
) -> Window:
    assert pg.proc is not None and redis.proc is not None
    return Window(
        at=time.monotonic(),
        replicas_cpu=[cpu_seconds(r.pid) for r in replicas],
        replicas_sched=[schedstat(r.pid) for r in replicas],
        pg_cpu=cpu_seconds(pg.proc.pid),
        redis_cpu=cpu_seconds(redis.proc.pid),
        redis=redis_commands(redis),
        messages=await messages_committed(conn),
    )


def window_costs(before: Window, after: Window) -> dict[str, Any]:
    """Per committed message over the sending window: CPU, run-queue wait, Redis commands."""
    messages = after.messages - before.messages
    if messages <= 0:
        return {"messages": messages}
    seconds = after.at - before.at
    cpu = [a - b for a, b in zip(after.replicas_cpu, before.replicas_cpu, strict=True)]
    waited = [a[1] - b[1] for a, b in zip(after.replicas_sched, before.replicas_sched, strict=True)]
    oncpu = [a[0] - b[0] for a, b in zip(after.replicas_sched, before.replicas_sched, strict=True)]
    commands = lockwaits.delta(before.redis, after.redis)
    return {
        "messages": messages,
        "seconds": round(seconds, 3),
        "replicas_cpu_ms_per_message": round(sum(cpu) * 1000 / messages, 4),
        "replica_cpu_ms_per_message_each": [round(c * 1000 / messages, 4) for c in cpu],
        "replicas_cores_used": round(sum(cpu) / seconds, 3),
        "replicas_runqueue_wait_ms_per_message": round(sum(waited) * 1000 / messages, 4),
        "replicas_runqueue_share": round(lockwaits.contention_share(sum(waited), sum(oncpu)), 4),
        "postgres_cpu_ms_per_message": round((after.pg_cpu - before.pg_cpu) * 1000 / messages, 4),
        "redis_cpu_ms_per_message": round(
            (after.redis_cpu - before.redis_cpu) * 1000 / messages, 4
        ),
        "redis_commands_per_message": round(sum(commands.values()) / messages, 3),
        "redis_commands_by_name_per_message": lockwaits.per_message(
            {k: v for k, v in commands.items() if v}, messages, 3
        ),
    }


# --- one step ------------------------------------------------------------------------------


def start_replicas(
    procs: Processes, count: int, env: Mapping[str, str], label: str
) -> list[Service]:
    started = [procs.service(f"{label}-r{i}", env, wait=False) for i in range(count)]
    for service in started:
        wait_ready(service, timeout=180)
    return started


async def idle_costs(
    replicas: Sequence[Service], redis: RedisControl, seconds: float
) -> dict[str, Any]:
    """CPU and Redis commands of the replicas with no clients at all, per replica-second."""
    cpu0 = [cpu_seconds(r.pid) for r in replicas]
    cmd0 = redis_commands(redis)
    started = time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - started
    cpu1 = [cpu_seconds(r.pid) for r in replicas]
    cmd1 = redis_commands(redis)
    per = elapsed * len(replicas)
    return {
        "cpu_ms_per_replica_second": round((sum(cpu1) - sum(cpu0)) * 1000 / per, 3),
        "redis_commands_per_replica_second": round(
            sum(lockwaits.delta(cmd0, cmd1).values()) / per, 2
        ),
    }


async def drive(  # noqa: PLR0917 - one call site, every argument named by its type
    argv: list[str],
    replicas: Sequence[Service],
    pg: PostgresServer,
    redis: RedisControl,
    conn: asyncpg.Connection,
    sampler_conn: asyncpg.Connection,
    interval: float,
) -> tuple[int, lockwaits.WaitSummary, list[int], Window | None, Window | None]:
    """Run the load generator; sample from its first progress line (sending) until it exits."""
    summary = lockwaits.WaitSummary(interval)
    running: list[int] = []
    bench = await asyncio.create_subprocess_exec(
        *argv,
        env={**os.environ, "MESSAGING_JWT_SECRET": JWT_SECRET},
        stdout=subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert bench.stderr is not None
    before: Window | None = None
    sampler: asyncio.Task[None] | None = None
    errors: list[str] = []
    try:
        async for raw in bench.stderr:
            line = raw.decode(errors="replace")
            if before is None and line.startswith("["):
                before = await window_reading(replicas, pg, redis, conn)
                sampler = asyncio.create_task(sample_waits(sampler_conn, summary, running))
            elif not line.startswith("["):
                errors.append(line.rstrip())
        code = await bench.wait()
        if sampler is not None:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        after = await window_reading(replicas, pg, redis, conn) if before is not None else None
    finally:
        if bench.returncode is None:
            bench.terminate()
            await bench.wait()
    if errors:
        print("\n".join(f"  | {e}" for e in errors[-5:]), file=sys.stderr, flush=True)
    return code, summary, running, before, after


async def run_group(
    *,
    procs: Processes,
    pg: PostgresServer,
    redis: RedisControl,
    rev: Revision,
    replicas_n: int,
    loads: Sequence[Load],
    args: argparse.Namespace,
    key: str,
) -> list[dict[str, Any]]:
    """A fresh database and ``replicas_n`` replicas of ``rev``, then each load in turn."""
    database = pg.create_database(key)
    env = service_env(
        database_url=database,
        connections=rev.connections,
        redis_url=redis.url,
        workdir=procs.workdir,
        code=rev.code,
    )
    migrate(env)
    replicas = start_replicas(procs, replicas_n, env, key)
    steps = []
    try:
        ready_at = time.monotonic()
        wait_quiet([r.pid for r in replicas], limit_s=20)
        idle = await idle_costs(replicas, redis, args.idle_seconds)
        await asyncio.sleep(max(0.0, STATS_SETTLE_S - (time.monotonic() - ready_at)))
        conn = await asyncpg.connect(pg.url(key))
        sampler_conn = await asyncpg.connect(pg.url(key))
        try:
            for i, load in enumerate(loads):
                step = await run_load(
                    replicas,
                    pg,
                    redis,
                    conn,
                    sampler_conn,
                    load,
                    args,
                    procs.workdir / f"{key}-{i}",
                )
                steps.append(
                    {
                        "key": f"{key}-{i}",
                        "ref": rev.ref,
                        "commit": rev.revision.get("commit"),
                        "replicas": replicas_n,
                        "idle": idle,
                        **step,
                    }
                )
        finally:
            await conn.close()
            await sampler_conn.close()
    finally:
        for r in replicas:
            r.proc.stop()
    return steps


async def run_load(  # noqa: PLR0917 - one call site
    replicas: Sequence[Service],
    pg: PostgresServer,
    redis: RedisControl,
    conn: asyncpg.Connection,
    sampler_conn: asyncpg.Connection,
    load: Load,
    args: argparse.Namespace,
    out: Path,
) -> dict[str, Any]:
    """One ``messaging bench`` load against the replicas; returns its step record."""
    totals0 = await pg_totals(conn)
    committed0 = await messages_committed(conn)
    argv = [
        sys.executable,
        "-m",
        "messaging.bench",
        *(r.url for r in replicas),
        *(a for r in replicas for a in ("--pid", str(r.pid))),
        "--users",
        str(load.users),
        "--devices",
        str(load.devices),
        "--window",
        str(load.window),
        "--duration",
        str(args.duration),
        "--warmup",
        str(args.warmup),
        "--out",
        str(out),
        *(["--rate", str(load.rate)] if load.rate else []),
    ]
    load1_start = os.getloadavg()[0]
    # A loaded machine can time out the setup's first checks (a handshake, createConversation
    # against the Connections stand-in): a run that never started sending is tried again.
    for _attempt in range(3):
        code, waits, running, before, after = await drive(
            argv, replicas, pg, redis, conn, sampler_conn, args.interval
        )
        if before is not None:
            break
    load1_end = os.getloadavg()[0]
    await asyncio.sleep(STATS_SETTLE_S)  # also the quiet time before the next load
    totals1 = await pg_totals(conn)
    committed = await messages_committed(conn) - committed0
    result = read_result(out)
    if result is None or before is None or after is None:
        raise servers.ServerError(f"{out.name}: the load generator failed (exit {code})")
    window = window_costs(before, after)
    pg_delta = lockwaits.delta(totals0, totals1)
    totals = result["totals"]
    return {
        "load": load.name,
        "rate": load.rate,
        "in_flight_window": load.window,
        "devices": load.devices,
        "users": load.users,
        "exit": code,
        "acked_per_s": result["rates"]["acked_per_s"],
        "delivered_per_s": result["rates"]["delivered_per_s"],
        "send_to_receive_ms": result["latency_ms"]["send_to_receive"],
        "send_to_ack_ms": result["latency_ms"]["send_to_ack"],
        "totals": totals,
        "deliveries_per_message": round(totals["delivered"] / totals["acked"], 4)
        if totals["acked"]
        else None,
        "lock_waits": waits.as_json(window.get("messages", 0)),
        "window": window,
        "postgres_per_message": lockwaits.per_message(
            {k: v for k, v in pg_delta.items() if v}, committed
        )
        if committed > 0
        else {},
        "messages_committed": committed,
        "loadgen_cpu_ms_per_message": result["loadgen"]["cpu_ms_per_message"],
        "machine_runnable_mean": round(statistics.fmean(running), 2) if running else None,
        "load1": [round(load1_start, 2), round(load1_end, 2)],
    }


async def idle_sockets(  # noqa: PLR0917 - one call site
    procs: Processes,
    pg: PostgresServer,
    redis: RedisControl,
    rev: Revision,
    sockets: int,
    hold: float,
) -> dict[str, Any]:
    """``sockets`` idle sockets on one replica: memory per socket, CPU and Redis while idle."""
    key = "idle"
    env = service_env(
        database_url=pg.create_database(key),
        connections=rev.connections,
        redis_url=redis.url,
        workdir=procs.workdir,
        code=rev.code,
    )
    migrate(env)
    (replica,) = start_replicas(procs, 1, env, key)
    try:
        wait_quiet([replica.pid], limit_s=20)
        baseline = await idle_costs([replica], redis, 6.0)
        mem0 = redis_used_memory(redis)
        out = procs.workdir / "idle.json"
        settle = 5.0
        cpu_start, cmd_start = cpu_seconds(replica.pid), redis_commands(redis)
        bench = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "messaging.bench",
            replica.url,
            "--mode",
            "idle",
            "--users",
            str(sockets),
            "--pid",
            str(replica.pid),
            "--hold",
            str(hold),
            "--settle",
            str(settle),
            "--out",
            str(out),
            env={**os.environ, "MESSAGING_JWT_SECRET": JWT_SECRET},
            stdout=subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        assert bench.stderr is not None
        reading: dict[str, Any] = {}
        async for raw in bench.stderr:
            if b"sockets open" not in raw or reading:
                continue
            # Connecting: CPU and Redis commands per handshake (the idle baseline is small
            # against a few seconds of handshakes, and is not subtracted here).
            cpu_open, cmd_open = cpu_seconds(replica.pid), redis_commands(redis)
            await asyncio.sleep(settle)
            cpu0, cmd0, t0 = cpu_seconds(replica.pid), redis_commands(redis), time.monotonic()
            mem1 = redis_used_memory(redis)
            await asyncio.sleep(max(hold - settle - 3.0, 1.0))
            cpu1, cmd1, t1 = cpu_seconds(replica.pid), redis_commands(redis), time.monotonic()
            socket_seconds = sockets * (t1 - t0)
            # Held sockets: what they cost above the replica's own idle work.
            above_cpu = (cpu1 - cpu0) - baseline["cpu_ms_per_replica_second"] / 1000 * (t1 - t0)
            above_cmd = sum(lockwaits.delta(cmd0, cmd1).values()) - baseline[
                "redis_commands_per_replica_second"
            ] * (t1 - t0)
            reading = {
                "replica_cpu_ms_per_connect": round((cpu_open - cpu_start) * 1000 / sockets, 4),
                "redis_commands_per_connect": round(
                    sum(lockwaits.delta(cmd_start, cmd_open).values()) / sockets, 3
                ),
                "replica_cpu_us_per_socket_second": round(above_cpu * 1e6 / socket_seconds, 4),
                "redis_commands_per_socket_second": round(above_cmd / socket_seconds, 5),
                "redis_bytes_per_socket": round((mem1 - mem0) / sockets, 1),
                "measured_seconds": round(t1 - t0, 2),
                "replica_idle_baseline": baseline,
            }
        await bench.wait()
    finally:
        replica.proc.stop()
    result = read_result(out) or {}
    rss_before = [s.get("rss_before") for s in result.get("servers", [])]
    return {
        "sockets": result.get("sockets"),
        "alive_at_end": result.get("alive_at_end"),
        "memory_per_socket_bytes": result.get("memory_per_socket_bytes"),
        "replica_rss_before_bytes": rss_before[0] if rss_before else None,
        **reading,
        "load1": round(os.getloadavg()[0], 2),
    }


# --- the whole run -------------------------------------------------------------------------


def start_connections(procs: Processes, rev: Revision, name: str) -> None:
    rev.connections = launch.start_connections(
        procs.spawn, name, {} if rev.code is None else {"PYTHONPATH": str(rev.code)}
    )


def row_text(step: Mapping[str, Any]) -> str:
    lat = step["send_to_receive_ms"]
    waits = step["lock_waits"]
    window = step["window"]
    top = next(iter(waits["locks_not_granted"]), "-")
    return (
        f"{step['ref']:>8} {step['replicas']:>2} replicas {step['load']:>12}: "
        f"acked {step['acked_per_s']:>7,.0f}/s  p50 {lat['p50'] or 0:>7.1f}  "
        f"p99 {lat['p99'] or 0:>7.1f} ms  lock waits {waits['lock_waits']:>4} "
        f"({waits['lock_wait_ms_per_message'] or 0:.3f} ms/msg; {top})  "
        f"cpu {window.get('replicas_cpu_ms_per_message', 0):.3f} ms/msg  "
        f"runq {window.get('replicas_runqueue_share', 0):.0%}  load {step['load1'][0]:.1f}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--refs", default=f"HEAD,{GLOBAL_LOCK_REF}", help="revisions, comma-separated"
    )
    parser.add_argument("--replicas", default="2,4,6", help="replica counts, comma-separated")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--users",
        default="120",
        help="users (paired), comma-separated: each load runs once per value; more users spread "
        "the same messages over more conversations (fewer shared counter rows per batch)",
    )
    parser.add_argument("--rate", type=float, default=150.0, help="open-loop messages/s (0: none)")
    parser.add_argument(
        "--window", type=int, default=16, help="open loop: max in flight per sender"
    )
    parser.add_argument("--closed-window", type=int, default=2, help="closed loop (0: none)")
    parser.add_argument("--duration", type=float, default=12.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--interval", type=float, default=0.05, help="lock sampling period, s")
    parser.add_argument("--idle-seconds", type=float, default=4.0)
    parser.add_argument("--idle-sockets", type=int, default=4000, help="0: skip that step")
    parser.add_argument("--idle-hold", type=float, default=25.0)
    parser.add_argument("--no-deliveries", action="store_true", help="skip the 2-device step")
    parser.add_argument("--quick", action="store_true", help="one round, 6 s steps")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--table", type=Path, default=None, help="print the table of this results file and exit"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup, args.idle_hold = 1, 6.0, 2.0, 15.0
    try:
        args.users = [int(u) for u in str(args.users).split(",")]
    except ValueError:
        parser.error("--users must be comma-separated numbers")
    if any(u < 2 or u % 2 for u in args.users):
        parser.error("--users must be even numbers")
    if args.interval <= 0:
        parser.error("--interval must be positive")
    return args


def loads(args: argparse.Namespace) -> list[Load]:
    out = []
    for users in args.users:
        named = "" if len(args.users) == 1 else f" {users}u"
        if args.rate:
            out.append(Load(f"{args.rate:.0f}/s{named}", args.rate, args.window, 1, users))
        if args.closed_window:
            name = f"closed w{args.closed_window}{named}"
            out.append(Load(name, None, args.closed_window, 1, users))
    return out


async def main_async(args: argparse.Namespace, procs: Processes) -> dict[str, Any]:
    pg = procs.postgres(PG_SETTINGS)
    redis = procs.redis()
    revisions: list[Revision] = []
    for i, ref in enumerate(args.refs.split(",")):
        code, revision = export_service(ref, procs.workdir / f"src{i}")
        rev = Revision(ref, code, revision)
        start_connections(procs, rev, f"connections{i}")
        revisions.append(rev)
    counts = [int(n) for n in args.replicas.split(",")]
    steps: list[dict[str, Any]] = []
    n = 0
    for rnd in range(args.rounds):
        order = counts if rnd % 2 == 0 else list(reversed(counts))
        for count in order:
            revs = revisions if (rnd + counts.index(count)) % 2 == 0 else revisions[::-1]
            for rev in revs:
                n += 1
                group = await run_group(
                    procs=procs,
                    pg=pg,
                    redis=redis,
                    rev=rev,
                    replicas_n=count,
                    loads=loads(args),
                    args=args,
                    key=f"s{n}",
                )
                for step in group:
                    step["round"] = rnd
                    print(row_text(step), flush=True)
                steps.extend(group)
    extra: dict[str, Any] = {}
    head = revisions[0]
    if not args.no_deliveries and args.closed_window:
        # Closed loop: batches as full as the replicas make them, so the fixed cost of a
        # statement and a commit is shared as under real load (at a low open-loop rate it is
        # paid per message and swamps the difference a second device makes).
        n += 1
        split = await run_group(
            procs=procs,
            pg=pg,
            redis=redis,
            rev=head,
            replicas_n=2,
            loads=[Load(f"{args.rate:.0f}/s x{d}dev", args.rate, args.window, d) for d in (1, 2)],
            args=args,
            key=f"s{n}",
        )
        for step in split:
            print(row_text(step), flush=True)
        low, high = split
        per_message, per_delivery = lockwaits.delivery_split(
            cpu_per_message_low=low["window"]["replicas_cpu_ms_per_message"],
            deliveries_low=low["deliveries_per_message"],
            cpu_per_message_high=high["window"]["replicas_cpu_ms_per_message"],
            deliveries_high=high["deliveries_per_message"],
        )
        redis_message, redis_delivery = lockwaits.delivery_split(
            cpu_per_message_low=low["window"]["redis_commands_per_message"],
            deliveries_low=low["deliveries_per_message"],
            cpu_per_message_high=high["window"]["redis_commands_per_message"],
            deliveries_high=high["deliveries_per_message"],
        )
        extra["delivery_split"] = {
            "steps": split,
            "cpu_ms_per_message_excluding_deliveries": round(per_message, 4),
            "cpu_ms_per_delivery": round(per_delivery, 4),
            "redis_commands_per_message_excluding_deliveries": round(redis_message, 3),
            "redis_commands_per_delivery": round(redis_delivery, 3),
        }
        print(
            f"split: {per_message:.4f} ms CPU per message + {per_delivery:.4f} per delivery; "
            f"{redis_message:.2f} Redis commands per message + {redis_delivery:.2f} per delivery",
            flush=True,
        )
    if args.idle_sockets:
        extra["idle_sockets"] = await idle_sockets(
            procs, pg, redis, head, args.idle_sockets, args.idle_hold
        )
        print(f"idle sockets: {json.dumps(extra['idle_sockets'])}", flush=True)
    return {
        "schema": "messaging-scaleout/1",
        "finished_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python -m bench.scaleout", *sys.argv[1:]]),
        "revisions": [{"ref": r.ref, **r.revision} for r in revisions],
        "machine": {"cores": os.cpu_count(), "load_average_end": os.getloadavg()},
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "postgres_settings": PG_SETTINGS,
        "steps": steps,
        **extra,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.table is not None:
        print(lockwaits.summary_table(json.loads(args.table.read_text())["steps"]))
        return 0
    ensure_packages()
    workdir = Path(tempfile.mkdtemp(prefix="bench-scaleout-"))
    procs = Processes(workdir)
    try:
        with sigterm_unwinds():
            report = run_async(main_async(args, procs))
    except Interrupted:
        return 130
    finally:
        procs.keep_logs(LOGS)
        procs.close()
        shutil.rmtree(workdir, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(lockwaits.summary_table(report["steps"]))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
