"""The benchmark: the project and the Node.js reference side by side, in one run.

Starts a private PostgreSQL and Redis, two replicas of each system in turn, runs the same loads
against both with ``messaging bench`` (window 1 and 4 cross-replica, a sweep of offered rates,
idle sockets), and writes BENCHMARKS.md, a plot and the raw JSON under bench/results/.

    .venv/bin/python -m bench.run [--quick] [--only reference|project]
"""

from __future__ import annotations

import argparse
import functools
import glob
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import cluster, node_reference, report
from bench.cluster import BENCH_PG_USER, BENCH_RATE_LIMITS
from messaging.bench import js_client, probes
from tests.support import launch, servers
from tests.support.servers import REPO, PostgresServer, Proc, RedisControl, ServerError

PYTHON = REPO / ".venv" / "bin" / "python"
MESSAGING = REPO / ".venv" / "bin" / "messaging"
JWT_SECRET = "benchmark-only-secret-0123456789abcdef0123456789"  # noqa: S105 - private servers
WEBHOOK_SECRET = "whsec_YmVuY2htYXJrLXdlYmhvb2stc2VjcmV0LTMyYnl0ZXM="  # noqa: S105 - private
PG_GLOB = "/usr/lib/postgresql/*/bin/postgres"
EXIT_CODES_WITH_RESULT = (0, 3)  # 3: the run finished but found lost/duplicated deliveries


@dataclass(frozen=True)
class Load:
    key: str
    name: str
    kind: str  # "window" or "rate"
    window: int
    rate: float | None
    duration: float
    warmup: float
    client: str = "python"  # who drives it: our Python client or the official JS client

    def as_json(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "key": self.key,
            "name": self.name,
            "kind": self.kind,
            "window": self.window,
            "rate": self.rate,
            "duration": self.duration,
            "warmup": self.warmup,
        }


@dataclass
class System:
    key: str
    name: str
    urls: list[str] = field(default_factory=list)
    procs: list[Proc] = field(default_factory=list)
    replicas: list[Proc] = field(default_factory=list)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def plan_loads(args: argparse.Namespace) -> list[Load]:
    duration, warmup = (5.0, 1.0) if args.quick else (args.duration, args.warmup)
    loads = [
        Load(f"w{w}", f"window {w}", "window", w, None, duration, warmup) for w in args.windows
    ]
    # The same windows driven by the official socket.io-client (a second load generator).
    loads += [
        Load(f"js-w{w}", f"window {w}, JS client", "window", w, None, duration, warmup, "js")
        for w in args.js_windows
    ]
    rates = args.rates or ([1000.0, 3000.0, 6000.0] if args.quick else None)
    if rates is None:
        rates = [1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 6000.0, 7000.0, 8000.0, 10000.0]
    sweep_duration, sweep_warmup = (3.0, 1.0) if args.quick else (args.sweep_duration, 2.0)
    loads += [
        Load(
            f"rate-{int(r)}",
            f"offered {int(r):,}/s",
            "rate",
            args.sweep_window,
            r,
            sweep_duration,
            sweep_warmup,
        )
        for r in rates
    ]
    return loads


# --- systems -----------------------------------------------------------------------------


def start_reference(pg: PostgresServer, redis: RedisControl, log_dir: Path) -> System:
    node_reference.npm_ci()
    pg.create_database("reference")
    database = pg.url("reference")
    system = System("reference", "reference (Node.js)")
    for i in (1, 2):
        port = servers.free_port()
        proc = node_reference.start_reference(
            f"reference-{i}",
            port=port,
            database_url=database,
            redis_url=redis.url,
            jwt_secret=JWT_SECRET,
            log_dir=log_dir,
        )
        system.procs.append(proc)
        system.replicas.append(proc)
        system.urls.append(f"http://127.0.0.1:{port}")
    return system


def project_available() -> str | None:
    """None when ``messaging serve`` can run here, else why not."""
    if not MESSAGING.exists():
        return f"{MESSAGING} does not exist"
    for command in (["serve", "--help"], ["migrate", "--help"], ["dev-connections", "--help"]):
        done = subprocess.run(
            [str(MESSAGING), *command], capture_output=True, text=True, check=False, timeout=60
        )
        if done.returncode != 0:
            return f"`messaging {' '.join(command)}` failed: {done.stderr.strip()[-300:]}"
    return None


def start_project(
    pg: PostgresServer, redis: RedisControl, log_dir: Path, *, webhook_url: str | None = None
) -> System:
    pg.create_database("messaging")
    database = pg.url("messaging")
    system = System("project", "project (Python)")
    connections_port = servers.free_port()
    base_env = {
        "MESSAGING_DATABASE_URL": database,
        "MESSAGING_REDIS_URL": redis.url,
        "MESSAGING_JWT_SECRET": JWT_SECRET,
        "MESSAGING_CONNECTIONS_ADDRESS": f"127.0.0.1:{connections_port}",
        # Node logs nothing per message; per-request INFO logs would be a different contest.
        "MESSAGING_LOG_LEVEL": "WARNING",
        **BENCH_RATE_LIMITS,
    }
    if webhook_url is not None:  # one endpoint taking every event type, as operators set it
        base_env["MESSAGING_WEBHOOKS"] = json.dumps(
            [{"url": webhook_url, "secretEnv": "MESSAGING_WEBHOOK_0_SECRET", "events": []}]
        )
        base_env["MESSAGING_WEBHOOK_0_SECRET"] = WEBHOOK_SECRET
    migrate = subprocess.run(
        [str(MESSAGING), "migrate"],
        env={**os.environ, **base_env},
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if migrate.returncode != 0:
        raise ServerError(f"messaging migrate failed:\n{migrate.stdout}\n{migrate.stderr}")
    connections = servers.spawn(
        "dev-connections",
        [str(MESSAGING), "dev-connections", "--all-connected", "--port", str(connections_port)],
        log_dir,
        env=base_env,
    )
    system.procs.append(connections)
    servers.wait_until(
        lambda: servers.port_open(connections_port), "dev-connections to listen", connections
    )
    for i in (1, 2):
        http_port, grpc_port, metrics_port = servers.free_ports(3)
        proc = servers.spawn(
            f"project-{i}",
            [str(MESSAGING), "serve"],
            log_dir,
            env={
                **base_env,
                **launch.replica_env(f"bench-{i}", http_port, grpc_port, metrics_port),
            },
        )
        system.procs.append(proc)
        system.replicas.append(proc)
        url = f"http://127.0.0.1:{http_port}"
        servers.wait_until(
            functools.partial(servers.http_ok, f"{url}/readyz"), f"{proc.name} to be ready", proc
        )
        system.urls.append(url)
    return system


def start_webhook_sink(log_dir: Path) -> tuple[System, str]:
    """A local receiver answering every webhook 204 (``--webhook``), and its endpoint URL."""
    port = servers.free_port()
    sink = servers.spawn(
        "webhook-sink", [str(PYTHON), "-m", "bench.webhook_sink", str(port)], log_dir
    )
    system = System("webhook-sink", "webhook receiver", procs=[sink])
    servers.wait_until(lambda: servers.port_open(port), "the webhook sink to listen", sink)
    return system, f"http://127.0.0.1:{port}/hooks"


# --- runs --------------------------------------------------------------------------------


def run_bench(argv: Sequence[str], out: Path) -> dict[str, Any]:
    command = [str(PYTHON), "-m", "messaging.bench", *argv, "--out", str(out)]
    print("  $ " + shlex.join(command[1:]), flush=True)
    with subprocess.Popen(
        command,
        env={**os.environ, "MESSAGING_JWT_SECRET": JWT_SECRET},
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stderr is not None
        last = ""
        for line in proc.stderr:  # pass the progress through, keep the last word
            sys.stderr.write(line)
            last = line.strip() or last
    if proc.returncode not in EXIT_CODES_WITH_RESULT or not out.exists():
        raise RuntimeError(f"messaging bench exited with {proc.returncode}: {last[-300:]}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def new_entry(system: System) -> dict[str, Any]:
    return {"key": system.key, "name": system.name, "loads": {}, "failures": {}, "idle": None}


def run_idle(
    system: System, everyone: Sequence[System], args: argparse.Namespace, results_dir: Path
) -> dict[str, Any]:
    """Idle sockets on one replica; run first, on fresh processes, whose heaps are still small."""
    print(f"[{system.name}] idle: {args.idle_sockets:,} sockets on one replica", flush=True)
    wait_quiet(everyone)
    return run_bench(
        [
            system.urls[0],
            "--pid",
            str(system.replicas[0].pid),
            "--mode",
            "idle",
            "--users",
            str(args.idle_sockets),
            "--hold",
            str(5 if args.quick else 15),
            "--settle",
            str(3 if args.quick else 8),
            "--label",
            f"{system.key} idle",
        ],
        results_dir / f"{system.key}-idle.json",
    )


def run_load(
    system: System,
    load: Load,
    everyone: Sequence[System],
    args: argparse.Namespace,
    results_dir: Path,
) -> dict[str, Any]:
    print(f"[{system.name}] {load.name}", flush=True)
    argv = [
        *system.urls,
        *(arg for proc in system.replicas for arg in ("--pid", str(proc.pid))),
        "--users",
        str(args.users),
        "--devices",
        "1",
        "--window",
        str(load.window),
        "--duration",
        str(load.duration),
        "--warmup",
        str(load.warmup),
        "--procs",
        str(args.procs),
        "--label",
        f"{system.key} {load.name}",
    ]
    if load.rate is not None:
        argv += ["--rate", str(load.rate)]
    if load.client != "python":
        argv += ["--client", load.client]
    waited = wait_quiet(everyone)
    if waited > 5:
        print(f"  (waited {waited:.0f}s for the replicas to go idle)", flush=True)
    return run_bench(argv, results_dir / f"{system.key}-{load.key}.json")


def run_all(
    systems: Sequence[System], loads: Sequence[Load], args: argparse.Namespace, results_dir: Path
) -> tuple[list[dict[str, Any]], list[str]]:
    """Every load on every system, interleaved; returns the entries and notes on failures.

    Both systems stay up (an idle one costs nothing) and take turns load by load, so a slow
    drift of the machine (the disk's fsync latency on a shared host above all) lands on both
    alike instead of on whichever ran second. A system whose replica dies is dropped from
    the rest of the run (noted), and the other goes on.
    """
    entries = {system.key: new_entry(system) for system in systems}
    notes: list[str] = []
    live = list(systems)

    def still_alive(system: System) -> bool:
        dead = [proc for proc in system.procs if not proc.alive()]
        if not dead:
            return True
        for proc in dead:
            note = f"{proc.name} exited with {proc.popen.returncode} during the run; "
            note += f"{system.name} was not measured further. Last log lines: "
            note += " / ".join(proc.log_tail(3).splitlines())
            print(f"  {note}", flush=True)
            notes.append(note)
        live.remove(system)
        return False

    steps: list[tuple[str, Load | None]] = [("idle", None)] if args.idle_sockets else []
    steps += [(load.key, load) for load in loads]
    for key, load in steps:
        for system in list(live):
            entry = entries[system.key]
            if load is None:
                entry["idle"] = _attempt(
                    entry,
                    key,
                    lambda: run_idle(system, live, args, results_dir),  # noqa: B023
                )
            else:
                result = _attempt(
                    entry,
                    key,
                    lambda: run_load(system, load, live, args, results_dir),  # noqa: B023
                )
                if result is not None:
                    entry["loads"][key] = result
            still_alive(system)
    return [entries[system.key] for system in systems], notes


def _attempt(
    entry: dict[str, Any], key: str, run: Callable[[], dict[str, Any]]
) -> dict[str, Any] | None:
    """One failed run is recorded and reported, and the benchmark goes on with the next."""
    try:
        return run()
    except RuntimeError as e:
        print(f"  FAILED: {e}", flush=True)
        entry["failures"][key] = str(e)
        return None


def wait_quiet(
    systems: Sequence[System], limit_s: float = 180.0, busy_cpu_s: float = 0.05
) -> float:
    """Wait until every replica is idle (under 5% CPU over a second); returns seconds waited.

    A run must not start while a replica still works off the previous one (say, 10,000
    disconnects): its sockets would time out and its figures would carry the last run's cost.
    """
    started = time.monotonic()
    pids = [proc.pid for system in systems for proc in system.replicas]
    while time.monotonic() - started < limit_s:
        before = [probes.cpu_seconds(pid) or 0.0 for pid in pids]
        time.sleep(1.0)
        after = [probes.cpu_seconds(pid) or 0.0 for pid in pids]
        if all(a - b < busy_cpu_s for a, b in zip(after, before, strict=True)):
            break
    return time.monotonic() - started


# --- the report ----------------------------------------------------------------------------


def _first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    except OSError:
        return "?"
    return (
        (done.stdout or done.stderr).strip().splitlines()[0] if done.stdout or done.stderr else "?"
    )


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    pg_bin = servers.postgres_bin_dir() if glob.glob(PG_GLOB) else None
    lock = json.loads((node_reference.REFERENCE_DIR / "package-lock.json").read_text())["packages"]
    versions = ", ".join(
        [
            f"Python {platform.python_version()}",
            f"Node.js {_first_line(['node', '--version'])}",
            f"socket.io {lock['node_modules/socket.io']['version']}",
            _first_line([str(pg_bin / "postgres"), "--version"]) if pg_bin else "PostgreSQL ?",
            _first_line(["redis-server", "--version"]).split(" sha=")[0],
        ]
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": f"{mem_kb / 1024 / 1024:.0f} GiB",
        "versions": versions,
    }


def write_report(summary: dict[str, Any], results_dir: Path, markdown: Path) -> None:
    results_dir.mkdir(parents=True, exist_ok=True)
    summary_path = results_dir / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    # The plot is committed with BENCHMARKS.md (results/ is not), so it lives beside it.
    plot_path = markdown.parent / "docs" / "benchmarks-throughput-latency.png"
    plot_path.parent.mkdir(parents=True, exist_ok=True)
    has_plot = report.plot(summary, plot_path)
    plot_name = os.path.relpath(plot_path, markdown.parent) if has_plot else None
    previous = markdown.read_text() if markdown.exists() else None
    markdown.write_text(
        report.with_hand_written(report.render_markdown(summary, plot_name), previous)
    )
    print(
        f"wrote {markdown}, {results_dir / 'summary.json'}" + (f", {plot_path}" if has_plot else "")
    )


# --- main ----------------------------------------------------------------------------------


def _setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError("expected NAME=VALUE")
    return name, value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("reference", "project"), default=None)
    parser.add_argument("--quick", action="store_true", help="short runs, a 3-point sweep")
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--windows", type=int, nargs="+", default=[1, 4])
    parser.add_argument(
        "--js-windows",
        type=int,
        nargs="*",
        default=[1, 4],
        help="windows also driven by the official socket.io-client (none: only our client)",
    )
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rates", type=float, nargs="*", default=None, help="sweep (msgs/s)")
    parser.add_argument("--sweep-window", type=int, default=16)
    parser.add_argument("--sweep-duration", type=float, default=10.0)
    parser.add_argument("--idle-sockets", type=int, default=None, help="0 to skip the idle run")
    parser.add_argument("--procs", type=int, default=1, help="load-generator processes")
    parser.add_argument(
        "--pg-setting",
        type=_setting,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra PostgreSQL setting for both systems (repeat), e.g. synchronous_commit=off",
    )
    parser.add_argument(
        "--from-summary",
        type=Path,
        default=None,
        metavar="SUMMARY_JSON",
        help="run nothing: write BENCHMARKS.md and the plot again from a summary.json",
    )
    parser.add_argument(
        "--webhook",
        action="store_true",
        help="give the project's replicas one webhook endpoint (a local receiver), every type",
    )
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--markdown", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument(
        "--require-project",
        action="store_true",
        help="fail instead of skipping when `messaging serve` is not available",
    )
    args = parser.parse_args(argv)
    if args.idle_sockets is None:
        args.idle_sockets = 2000 if args.quick else 10000
    return args


def revision() -> str:
    """The commit measured, and whether the service's working tree differed from it."""
    head = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "service"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return f"{head} (with uncommitted changes under service/)" if dirty else head


def ensure_packages() -> None:
    """apt-get install PostgreSQL, Redis and Node.js when they are missing (as root only): the
    benchmark may run on a machine hack/test.sh never prepared."""
    missing = []
    if not glob.glob(PG_GLOB):
        missing.append("postgresql")
    if shutil.which("redis-server") is None:
        missing.append("redis-server")
    if shutil.which("node") is None or shutil.which("npm") is None:
        missing.extend(["nodejs", "npm"])
    if not missing:
        return
    if os.geteuid() != 0:
        raise ServerError(f"missing {', '.join(missing)} and not root to apt-get install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True, env=env)
    # Debian starts the packaged services; the benchmark runs its own private ones.
    for service in ("postgresql", "redis-server"):
        subprocess.run(["service", service, "stop"], check=False, capture_output=True)


def load_average() -> float:
    """The machine's 1-minute load average: other work competing for the cores shows here."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0915 - one flat script of steps
    args = parse_args(argv)
    if args.from_summary is not None:
        write_report(json.loads(args.from_summary.read_text()), args.results, args.markdown)
        return 0
    load_at_start = load_average()
    measured_revision = revision()
    ensure_packages()
    loads = plan_loads(args)
    notes: list[str] = []
    if any(load.client == "js" for load in loads) and (
        missing := js_client.check_installed(js_client.default_node_modules())
    ):
        notes.append(f"The loads of the JS client were not run: {missing}.")
        loads = [load for load in loads if load.client != "js"]
    wanted = ["reference", "project"] if args.only is None else [args.only]
    if "project" in wanted and (why := project_available()) is not None:
        if args.require_project or args.only == "project":
            print(f"the project cannot run: {why}", file=sys.stderr)
            return 1
        notes.append(f"The project was not measured: {why}.")
        wanted.remove("project")
    results_dir = args.results
    log_dir = results_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*results_dir.glob("*.json"), *log_dir.glob("*.log")]:
        stale.unlink()  # only what an earlier run of this script wrote
    systems: list[dict[str, Any]] = []
    with servers.workspace("messaging-bench-") as work:
        pg = PostgresServer(
            work, user=BENCH_PG_USER, settings={"max_connections": "200", **dict(args.pg_setting)}
        )
        redis = RedisControl(work)
        try:
            pg.start()
            redis.start()
            started_aux: list[System] = []
            started: list[System] = []
            try:
                webhook_url = None
                if args.webhook:
                    sink, webhook_url = start_webhook_sink(log_dir)
                    started_aux.append(sink)
                    notes.append(
                        "The project's replicas had one webhook endpoint (every event type), "
                        "served by a local receiver answering 204: each send also wrote its "
                        "events to the outbox, and the replicas delivered them during the run."
                    )
                for key in wanted:
                    if key == "reference":
                        started.append(start_reference(pg, redis, log_dir))
                    else:
                        started.append(start_project(pg, redis, log_dir, webhook_url=webhook_url))
                systems, failures = run_all(started, loads, args, results_dir)
                notes += failures
            finally:
                for system in [*started, *started_aux]:
                    system.stop()
        finally:
            redis.stop()
            pg.stop()
    summary = {
        "schema": "messaging-benchmark/1",
        "command": shlex.join(
            ["python", "-m", "bench.run", *(sys.argv[1:] if argv is None else argv)]
        ),
        "finished_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {**machine_info(), "load_average": [load_at_start, load_average()]},
        "revision": measured_revision,
        "settings": {
            "users": args.users,
            "devices": 1,
            "duration": 5.0 if args.quick else args.duration,
            "warmup": 1.0 if args.quick else args.warmup,
            "procs": args.procs,
            "sweep_window": args.sweep_window,
            "postgres": dict(args.pg_setting),
        },
        "loads": [load.as_json() for load in loads],
        "systems": systems,
        "notes": notes,
    }
    write_report(summary, results_dir, args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(cluster.interruptible(main))
