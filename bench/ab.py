"""A/B of the send path's CPU per message: two revisions of the service, taking turns.

    .venv/bin/python -m bench.ab f3c30d6 working --rounds 3 --window 1 --duration 8
    .venv/bin/python -m bench.ab reference main working    # beside the Node.js reference

Starts one PostgreSQL (``bench.run``'s settings: fsync on) and one Redis, and for each side its
own database, ``messaging migrate``, Connections stand-in and two ``messaging serve`` replicas
of that side's code (a commit's ``service/`` exported with ``git archive``, or a copy of the
working tree's), configured like ``bench.run``'s project. Then, round after round, each side in
turn (the order alternating) takes the same ``messaging bench`` load, so whatever else the
machine is doing lands on both alike. Prints, per run, acked/s and the replicas' CPU
milliseconds per acked message (/proc/<pid>/stat over the run), and per side the median.

``--profile SIDE`` records the first replica of that side with py-spy during its last round
(``--profile-out``: a speedscope or flamegraph file, by extension; raw text with ``.txt``).

The side named ``reference`` is the Node.js reference of ``bench/reference`` (two replicas on
its own database, the same PostgreSQL and Redis): in the same rotation, so a ratio of acked/s
against it is measured under the same load as the sides it is compared with.

Wall-clock throughput on a shared machine moves with the other work; CPU per message moves
much less, which is why it is the figure compared here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import cluster, node_reference
from bench.cluster import (
    BENCH_RATE_LIMITS,
    JWT_SECRET,
    Processes,
    cpu_seconds,
    export_service,
    wait_quiet,
)
from messaging.bench.client import SocketClient
from messaging.bench.load import mint_token
from tests.support import launch, servers
from tests.support.servers import REPO, PostgresServer, Proc

SERVICE = [sys.executable, "-m", "messaging.cli"]
OUT = REPO / "bench" / "results" / "ab"  # profiles and the processes' logs of the last run


@dataclass
class Side:
    ref: str
    code: Path
    env: dict[str, str] = field(default_factory=dict)
    urls: list[str] = field(default_factory=list)
    metrics_urls: list[str] = field(default_factory=list)
    replicas: list[Proc] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    post_sql: str = ""  # run on the side's database after migrating (an experiment's schema)
    extra_env: dict[str, str] = field(default_factory=dict)  # --side-env, e.g. tracing on


REFERENCE = "reference"  # the side that runs bench/reference (Node.js), not a revision


def export(ref: str, target: Path) -> Path:
    if ref == REFERENCE:
        return node_reference.REFERENCE_DIR
    if ref == "working":
        shutil.copytree(REPO / "service", target / "service")
        return target / "service"
    code, _ = export_service(ref, target)
    assert code is not None
    return code


def start_side(
    procs: Processes, side: Side, key: str, pg: PostgresServer, redis_url: str, *, cprofile: bool
) -> None:
    pg.create_database(key)
    database = pg.url(key)
    if side.ref == REFERENCE:
        start_reference(procs, side, key, database, redis_url)
        return
    side.env = {
        "PYTHONPATH": str(side.code),
        "MESSAGING_DATABASE_URL": database,
        "MESSAGING_REDIS_URL": redis_url,
        "MESSAGING_JWT_SECRET": JWT_SECRET,
        "MESSAGING_LOG_LEVEL": "WARNING",
        "MESSAGING_TERMINATION_MESSAGE_PATH": str(procs.workdir / f"termination-{key}"),
        **BENCH_RATE_LIMITS,
        **side.extra_env,
    }
    done = subprocess.run(
        [*SERVICE, "migrate"],
        env={**os.environ, **side.env},
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    if done.returncode != 0:
        raise servers.ServerError(f"{key}: migrate failed\n{done.stdout}\n{done.stderr}")
    if side.post_sql:
        pg.psql(key, side.post_sql)
    side.env["MESSAGING_CONNECTIONS_ADDRESS"] = launch.start_connections(
        procs.spawn, f"{key}-connections", side.env
    )
    for i in (1, 2):
        http_port, grpc_port, metrics_port = servers.free_ports(3)
        profiled = [sys.executable, "-m", "bench.profiled_serve", str(OUT / f"{key}-{i}.prof")]
        proc = procs.spawn(
            f"{key}-{i}",
            profiled if cprofile else [*SERVICE, "serve"],
            {**side.env, **launch.replica_env(f"{key}-{i}", http_port, grpc_port, metrics_port)},
        )
        url = f"http://127.0.0.1:{http_port}"
        servers.wait_until(lambda u=url: servers.http_ok(f"{u}/readyz"), f"{key}-{i}", proc)  # type: ignore[misc]
        side.replicas.append(proc)
        side.urls.append(url)
        side.metrics_urls.append(f"http://127.0.0.1:{metrics_port}")


def start_reference(procs: Processes, side: Side, key: str, database: str, redis_url: str) -> None:
    node_reference.npm_ci()
    for i in (1, 2):
        port = servers.free_port()
        proc = node_reference.start_reference(
            f"{key}-{i}",
            port=port,
            database_url=database,
            redis_url=redis_url,
            jwt_secret=JWT_SECRET,
            log_dir=procs.log_dir,
        )
        side.replicas.append(proc)
        side.urls.append(f"http://127.0.0.1:{port}")
        side.metrics_urls.append("")  # the reference has no /metrics


WATCHED = (
    "messaging_group_commit_messages_sum",
    "messaging_group_commit_messages_count",
    "messaging_send_to_commit_seconds_sum",
    "messaging_send_to_commit_seconds_count",
)


def scrape(side: Side) -> dict[str, float]:
    """The watched series summed over the replicas (metrics port, else the public port)."""
    totals = dict.fromkeys(WATCHED, 0.0)
    for public, private in zip(side.urls, side.metrics_urls, strict=True):
        if not private:
            continue
        for base in (private, public):
            try:
                with urllib.request.urlopen(f"{base}/metrics", timeout=5) as r:  # noqa: S310
                    text = r.read().decode()
            except OSError:
                continue
            for line in text.splitlines():
                name, _, value = line.partition(" ")
                if name in totals:
                    totals[name] += float(value)
            break
    return totals


def run_once(
    side: Side, args: argparse.Namespace, out: Path, profile: Path | None, others: list[int]
) -> dict[str, Any]:
    argv = [
        sys.executable,
        "-m",
        "messaging.bench",
        *side.urls,
        *(a for p in side.replicas for a in ("--pid", str(p.pid))),
        "--users",
        str(args.users),
        "--window",
        str(args.window),
        "--duration",
        str(args.duration),
        "--warmup",
        str(args.warmup),
        *([] if args.cprofile else ["--quiet"]),
        "--out",
        str(out),
    ]
    if args.rate:
        argv += ["--rate", str(args.rate)]
    if args.client != "python":
        argv += ["--client", args.client]
    spy = None
    if profile is not None:
        fmt = {".txt": "raw", ".svg": "flamegraph"}.get(profile.suffix, "speedscope")
        spy = subprocess.Popen(
            [
                str(REPO / ".venv" / "bin" / "py-spy"),
                "record",
                "--pid",
                str(side.replicas[0].pid),
                "--rate",
                "200",
                "--format",
                fmt,
                "--output",
                str(profile),
                "--duration",
                str(int(args.warmup + args.duration + 8)),
                # --native pauses the process for each sample (it cannot read C stacks otherwise).
                *(["--native"] if args.native else ["--nonblocking"]),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    before = scrape(side)
    others_before = [cpu_seconds(pid) for pid in others]
    for _attempt in range(3):  # a loaded machine can time out the first handshakes' checks
        out.unlink(missing_ok=True)
        env = {**os.environ, "MESSAGING_JWT_SECRET": JWT_SECRET}
        if args.cprofile:
            # Profile the sending only: from the first progress line (sockets are connected).
            bench = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
            assert bench.stderr is not None
            started = False
            for line in bench.stderr:
                if not started and line.startswith("["):
                    started = True
                    for p in side.replicas:
                        os.kill(p.pid, signal.SIGUSR1)
            bench.wait()
            for p in side.replicas:
                os.kill(p.pid, signal.SIGUSR2)
        else:
            subprocess.run(argv, env=env, check=False)
        if out.exists():
            break
    after = scrape(side)
    others_after = [cpu_seconds(pid) for pid in others]
    if spy is not None:
        spy.wait()
    result: dict[str, Any] = json.loads(out.read_text())
    d = {k: after[k] - before[k] for k in WATCHED}
    batches = d["messaging_group_commit_messages_count"]
    sends = d["messaging_send_to_commit_seconds_count"]
    acked = result["totals"]["acked"]
    result["server_metrics"] = {
        # PostgreSQL (all its processes), then Redis: the sides take turns, so this is this side's.
        "pg_redis_cpu_ms_per_msg": [
            round((a - b) * 1000 / acked, 4) if acked else None
            for a, b in zip(others_after, others_before, strict=True)
        ],
        "mean_batch": d["messaging_group_commit_messages_sum"] / batches if batches else None,
        "send_to_commit_ms": 1000 * d["messaging_send_to_commit_seconds_sum"] / sends
        if sends
        else None,
    }
    return result


def handshake_burst(side: Side, users: int, *, cprofile: bool = False) -> dict[str, Any]:
    """``users`` new users open a socket on the first replica at once: seconds until the last is
    connected, and the replica's CPU per handshake (closing them is not counted)."""

    async def burst() -> tuple[float, int]:
        run = uuid.uuid4().hex[:8]
        clients = [SocketClient() for _ in range(users)]
        tokens = [mint_token(JWT_SECRET, f"burst-{run}-{n}", 600) for n in range(users)]
        started = time.perf_counter()
        done = await asyncio.gather(
            *(c.connect(side.urls[0], t, limit_s=60) for c, t in zip(clients, tokens, strict=True)),
            return_exceptions=True,
        )
        seconds = time.perf_counter() - started
        for client in clients:
            client.close()
        await asyncio.sleep(1.0)
        return seconds, sum(1 for d in done if d is None)

    pid = side.replicas[0].pid
    if cprofile:
        os.kill(pid, signal.SIGUSR1)
    before = cpu_seconds(pid)
    seconds, connected = asyncio.run(burst())
    cpu = cpu_seconds(pid) - before
    if cprofile:
        os.kill(pid, signal.SIGUSR2)
    return {
        "connected": connected,
        "seconds": round(seconds, 3),
        "cpu_ms_per_handshake_incl_close": round(cpu * 1000 / users, 3),
        "load1": os.getloadavg()[0],
    }


def summary(result: dict[str, Any]) -> dict[str, Any]:
    cpu = [s["cpu_ms_per_message"] for s in result["servers"]]
    lat = result["latency_ms"]["send_to_ack"]
    return {
        "host_cpu_ms_per_msg": host_cpu(result),
        "acked_per_s": result["rates"]["acked_per_s"],
        "cpu_ms_per_msg": cpu,
        "cpu_mean": statistics.fmean(c for c in cpu if c is not None),
        "ack_p50": lat.get("p50"),
        "ack_p99": lat.get("p99"),
        **result["server_metrics"],
        "errors": result["totals"]["errors"],
        "lost": result["totals"]["lost"],
        "load1": os.getloadavg()[0],
    }


def host_cpu(result: dict[str, Any]) -> float | None:
    """CPU per message of every process the run had: the replicas, PostgreSQL, Redis and the load
    generator. On two cores shared by all of them, a closed-loop run's throughput follows it."""
    parts = [
        *(s["cpu_ms_per_message"] for s in result["servers"]),
        *result["server_metrics"]["pg_redis_cpu_ms_per_msg"],
        result["loadgen"]["cpu_ms_per_message"],
    ]
    return None if None in parts else round(sum(parts), 4)


STATEMENTS = """
SELECT calls, round(mean_exec_time::numeric, 3) AS mean_ms,
       round((rows::float / calls)::numeric, 1) AS rows_per_call,
       wal_records / calls AS wal_rec, wal_bytes / calls AS wal_bytes,
       shared_blks_hit / calls AS hit, shared_blks_dirtied / calls AS dirtied,
       left(regexp_replace(query, '\\s+', ' ', 'g'), 90)
FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY total_exec_time DESC LIMIT 8
"""


def print_statements(pg: PostgresServer, sides: list[Side]) -> None:
    """The top statements of each side's database (calls, mean ms, rows, WAL per call)."""
    for i, side in enumerate(sides):
        print(f"== statements of {side.ref}", flush=True)
        pg.psql(f"side{i}", "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        print(pg.psql(f"side{i}", STATEMENTS), flush=True)


def print_medians(sides: list[Side], *, handshakes: bool) -> None:
    """Per side the medians of its rounds; beside a reference side, the ratio to it."""
    for side in sides:
        if handshakes:
            took = statistics.median(r["seconds"] for r in side.runs)
            cpu = statistics.median(r["cpu_ms_per_handshake_incl_close"] for r in side.runs)
            print(f"median {side.ref:>10}: {took:.3f} s, {cpu:.3f} ms CPU each", flush=True)
            continue
        cpu = statistics.median(r["cpu_mean"] for r in side.runs)
        rate = statistics.median(r["acked_per_s"] for r in side.runs)
        hosts = [h for r in side.runs if (h := r["host_cpu_ms_per_msg"]) is not None]
        host = f", all processes {statistics.median(hosts):.4f} ms/msg" if hosts else ""
        print(
            f"median {side.ref:>10}: cpu {cpu:.4f} ms/msg per replica{host}, acked {rate:,.0f}/s",
            flush=True,
        )
    reference = next((s for s in sides if s.ref == REFERENCE), None)
    if reference is not None and not handshakes:
        base = statistics.median(r["acked_per_s"] for r in reference.runs)
        for side in sides:
            if side is not reference:
                ratios = [
                    a["acked_per_s"] / b["acked_per_s"]
                    for a, b in zip(side.runs, reference.runs, strict=True)
                ]
                rate = statistics.median(r["acked_per_s"] for r in side.runs)
                print(
                    f"{side.ref:>10} / reference: {rate / base:.2f}x (medians), per round "
                    + ", ".join(f"{r:.2f}x" for r in ratios),
                    flush=True,
                )


def make_sides(refs: list[str], side_env: list[str], workdir: Path) -> list[Side]:
    """One side per ref (``REF+SQL``: SQL after migrating), with ``N:NAME=VALUE`` env items."""
    sides = []
    for i, spec in enumerate(refs):
        ref, _, sql = spec.partition("+")
        sides.append(Side(spec, export(ref, workdir / f"src{i}"), post_sql=sql))
    for item in side_env:
        index, _, pair = item.partition(":")
        name, _, value = pair.partition("=")
        sides[int(index)].extra_env[name] = value
    return sides


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "refs",
        nargs="+",
        help="commits (or 'working'), one per side; REF+SQL runs SQL after migrating that side",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--window", type=int, default=1)
    parser.add_argument("--rate", type=float, default=None)
    parser.add_argument(
        "--handshakes",
        type=int,
        default=0,
        help="instead of a load: this many new users connect to the first replica at once",
    )
    parser.add_argument(
        "--client",
        choices=("python", "js"),
        default="python",
        help="the load generator: our client, or the official socket.io-client (Node.js)",
    )
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--profile", default=None, help="side (ref, or all) to record with py-spy")
    parser.add_argument("--profile-out", type=Path, default=OUT / "py-spy.txt")
    parser.add_argument(
        "--native", action="store_true", help="py-spy --native: C frames (uvloop, asyncpg) too"
    )
    parser.add_argument(
        "--cprofile",
        action="store_true",
        help=f"run the replicas under bench.profiled_serve (CPU-clock cProfile of the sending; "
        f"{OUT}/sideN-R.prof)",
    )
    parser.add_argument("--pg-setting", action="append", default=[], help="name=value")
    parser.add_argument(
        "--side-env",
        action="append",
        default=[],
        help="N:NAME=VALUE, an environment variable of side N's processes (0-based), e.g. "
        "1:MESSAGING_OTEL_ENDPOINT=http://127.0.0.1:4317 with `python -m bench.otlp_sink`",
    )
    parser.add_argument(
        "--statements", action="store_true", help="pg_stat_statements per side at the end"
    )
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-ab-"))
    procs = Processes(workdir)
    sides: list[Side] = []
    try:
        settings = {"fsync": "on"}
        if args.statements:
            settings["shared_preload_libraries"] = "pg_stat_statements"
            settings["track_io_timing"] = "on"
        settings.update(s.split("=", 1) for s in args.pg_setting)
        pg = procs.postgres(settings)
        redis = procs.redis()
        sides = make_sides(args.refs, args.side_env, workdir)
        for i, side in enumerate(sides):
            start_side(procs, side, f"side{i}", pg, redis.url, cprofile=args.cprofile)
        pids = [p.pid for s in sides for p in s.replicas]
        for rnd in range(args.rounds):
            order = sides if rnd % 2 == 0 else list(reversed(sides))
            for side in order:
                wait_quiet(pids, limit_s=20)
                last = rnd == args.rounds - 1
                profile = None
                if last and args.profile in (side.ref, "all"):
                    name = f"{args.profile_out.stem}-{sides.index(side)}{args.profile_out.suffix}"
                    profile = args.profile_out.with_name(name)
                out = workdir / f"{sides.index(side)}-{rnd}.json"
                assert pg.proc is not None and redis.proc is not None
                others = [pg.proc.pid, redis.proc.pid]
                if args.handshakes:
                    row = handshake_burst(side, args.handshakes, cprofile=args.cprofile)
                    side.runs.append(row)
                    print(f"round {rnd} {side.ref:>10}: {json.dumps(row)}", flush=True)
                    continue
                row = summary(run_once(side, args, out, profile, others))
                side.runs.append(row)
                print(f"round {rnd} {side.ref:>10}: {json.dumps(row)}", flush=True)
        if args.statements:
            print_statements(pg, sides)
        print_medians(sides, handshakes=bool(args.handshakes))
    finally:
        for side in sides:
            if side.ref == REFERENCE:  # not spawned through procs: stopped here
                for proc in side.replicas:
                    proc.stop()
        procs.keep_logs(OUT / "logs")
        procs.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(cluster.interruptible(main))
