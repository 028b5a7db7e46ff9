"""``messaging bench``: load and idle-memory runs against any deployment's replicas.

The coordinator (this process) spawns the load-generator workers, starts them together, prints
a progress line, reads the servers' CPU and memory around the run, and writes the result. The
workers do all socket work, so ``--procs`` spreads the generator over cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing
import multiprocessing.synchronize
import os
import queue
import resource
import secrets
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import orjson

from messaging.bench import js_client, probes
from messaging.bench.accounting import (
    Tally,
    load_result,
    memory_per_socket,
    server_cpu_entry,
)
from messaging.bench.load import SetupError, Worker, WorkerPlan

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INCORRECT = 3  # the run completed but lost, duplicated or misrouted deliveries


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="messaging bench",
        description=(
            "Load-test the Socket.IO send path of a messaging deployment (sendMessage -> "
            "newMessage on the recipient's devices), or measure idle memory per socket."
        ),
        epilog=(
            f"Exit status: {EXIT_OK} ok, {EXIT_FAILED} the run failed, {EXIT_USAGE} bad "
            f"arguments, {EXIT_INCORRECT} deliveries were lost, duplicated or misrouted."
        ),
    )
    parser.add_argument(
        "urls",
        nargs="+",
        metavar="URL",
        help="replica base URLs (http://host:port); devices are spread round-robin over them",
    )
    parser.add_argument("--mode", choices=("load", "idle"), default="load")
    parser.add_argument(
        "--metrics-url",
        action="append",
        default=[],
        metavar="URL",
        help=(
            "a replica's metrics-port base URL (http://host:9090), once per URL in the same "
            "order: idle mode reads memory there when no --pid is given"
        ),
    )
    parser.add_argument("--users", type=int, default=100, help="users (paired up; even)")
    parser.add_argument("--devices", type=int, default=1, help="sockets per user")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds sent, not measured")
    parser.add_argument(
        "--window", type=int, default=1, help="messages in flight per sender (max, with --rate)"
    )
    parser.add_argument(
        "--rate", type=float, default=None, help="offered messages/s in total (open loop)"
    )
    parser.add_argument("--content-chars", type=int, default=64, help="padding per message")
    parser.add_argument("--procs", type=int, default=1, help="load-generator processes")
    parser.add_argument(
        "--client",
        choices=("python", "js"),
        default="python",
        help="who drives the load: our lean Python client, or the official socket.io-client "
        "under Node.js (load mode only; a second load generator to check the first)",
    )
    parser.add_argument(
        "--node-modules",
        default=js_client.default_node_modules(),
        help=f"with --client js: a node_modules holding socket.io-client "
        f"(default: ${js_client.NODE_MODULES_ENV}, else this checkout's tests/node)",
    )
    parser.add_argument(
        "--jwt-secret",
        default=os.environ.get("MESSAGING_JWT_SECRET", ""),
        help="HS256 secret for minting tokens (default: $MESSAGING_JWT_SECRET)",
    )
    parser.add_argument("--ack-timeout", type=float, default=10.0)
    parser.add_argument("--drain", type=float, default=10.0, help="max seconds to await stragglers")
    parser.add_argument("--connect-concurrency", type=int, default=64)
    parser.add_argument(
        "--pid",
        type=int,
        action="append",
        default=[],
        help="a server process id on this machine (repeat, one per replica, in URL order): "
        "its CPU per message, and its memory in idle mode",
    )
    parser.add_argument(
        "--hold", type=float, default=10.0, help="idle mode: seconds to hold the sockets"
    )
    parser.add_argument(
        "--settle", type=float, default=3.0, help="idle mode: seconds before reading memory"
    )
    parser.add_argument("--label", default="", help="a name for this run, kept in the result")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON result here")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    return parser


def _validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.jwt_secret:
        parser.error("a JWT secret is needed: --jwt-secret or MESSAGING_JWT_SECRET")
    if args.users < 2 or args.users % 2:
        parser.error("--users must be an even number, at least 2")
    if args.devices < 1 or args.window < 1 or args.procs < 1:
        parser.error("--devices, --window and --procs must be at least 1")
    if args.procs > args.users // 2:
        parser.error("--procs cannot exceed the number of user pairs")
    if args.rate is not None and args.rate <= 0:
        parser.error("--rate must be positive")
    if args.pid and len(args.pid) != len(args.urls):
        parser.error("give one --pid per replica URL, in the same order")
    if args.metrics_url and len(args.metrics_url) != len(args.urls):
        parser.error("give one --metrics-url per replica URL, in the same order")
    if args.client == "js":
        if args.mode != "load":
            parser.error("--client js drives load runs only")
        missing = js_client.check_installed(args.node_modules)
        if missing:
            parser.error(missing)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _validate(parser, args)
    _raise_fd_limit()
    plan = WorkerPlan(
        mode=args.mode,
        urls=tuple(args.urls),
        users=args.users,
        devices=args.devices,
        jwt_secret=args.jwt_secret,
        run_id=secrets.token_hex(4),
        workers=args.procs,
        duration_s=args.duration,
        warmup_s=args.warmup,
        window=args.window,
        rate=None if args.rate is None else args.rate / args.procs,
        content_chars=args.content_chars,
        ack_timeout_s=args.ack_timeout,
        drain_s=args.drain,
        connect_concurrency=args.connect_concurrency,
        client=args.client,
        node_modules=args.node_modules,
    )
    progress = None if args.quiet else sys.stderr
    try:
        if args.mode == "idle":
            result = _run_idle(plan, args, progress)
        else:
            result = _run_load(plan, args, progress)
    except RunError as e:
        print(f"bench failed: {e}", file=sys.stderr)
        return EXIT_FAILED
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    print(render_summary(result))
    if result["mode"] == "load" and not result["clean"]:
        return EXIT_INCORRECT
    return EXIT_OK


class RunError(Exception):
    """A worker died or the run could not start."""


# --- workers -----------------------------------------------------------------------------


def _worker_entry(
    plan: WorkerPlan,
    events: multiprocessing.Queue[tuple[str, int, dict[str, Any]]],
    go: multiprocessing.synchronize.Event,
) -> None:
    """Process entry point: run one worker on its own event loop (uvloop when installed)."""

    def report(kind: str, data: dict[str, Any]) -> None:
        events.put((kind, plan.worker, data))

    async def wait_go() -> None:
        await asyncio.get_running_loop().run_in_executor(None, go.wait)

    async def body() -> dict[str, Any]:
        if plan.client == "js":
            return await js_client.JsWorker(plan, report).run_load(wait_go)
        worker = Worker(plan, report)
        if plan.mode == "idle":
            return await worker.run_idle(wait_go)
        return await worker.run_load(wait_go)

    try:
        _raise_fd_limit()
        try:
            import uvloop  # noqa: PLC0415 - optional accelerator

            result = uvloop.run(body())
        except ImportError:
            result = asyncio.run(body())
        report("done", result)
    except SetupError as e:
        report("failed", {"error": str(e)})
    except BaseException:  # report anything, then let the process end
        report("failed", {"error": traceback.format_exc()})


class _Crew:
    """The worker processes and the channel they report on."""

    def __init__(self, plan: WorkerPlan) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.events: multiprocessing.Queue[tuple[str, int, dict[str, Any]]] = ctx.Queue()
        self.go = ctx.Event()
        self.procs = [
            ctx.Process(
                target=_worker_entry,
                args=(replace(plan, worker=i), self.events, self.go),
                name=f"bench-worker-{i}",
                daemon=True,
            )
            for i in range(plan.workers)
        ]
        self.latest: dict[int, dict[str, Any]] = {}

    def start(self) -> None:
        for proc in self.procs:
            proc.start()

    def collect(
        self, kind: str, timeout: float, progress: _Progress | None = None
    ) -> dict[int, dict[str, Any]]:
        """Wait until every worker has reported ``kind``; progress reports update the line."""
        got: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while len(got) < len(self.procs):
            if time.monotonic() > deadline:
                raise RunError(f"workers did not report {kind!r} within {timeout:.0f}s")
            try:
                event, index, data = self.events.get(timeout=0.2)
            except queue.Empty:
                dead = [p.name for p in self.procs if p.exitcode is not None]
                if dead and len(got) < len(self.procs):
                    raise RunError(f"worker(s) exited early: {', '.join(dead)}") from None
                if progress is not None:
                    progress.show(self.latest)
                continue
            if event == "failed":
                raise RunError(f"worker {index}: {data['error']}")
            if event == "progress":
                self.latest[index] = data
                if progress is not None:
                    progress.show(self.latest)
            elif event == kind:
                got[index] = data
        return got

    def stop(self) -> None:
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)


class _Progress:
    """One status line, rewritten in place on a terminal and every few seconds otherwise."""

    def __init__(self, stream: TextIO, total_seconds: float) -> None:
        self.stream = stream
        self.total = total_seconds
        self.started = time.monotonic()
        self.tty = stream.isatty()
        self.every = 0.5 if self.tty else 5.0
        self.shown_at = 0.0
        self.previous: tuple[float, int, int] = (self.started, 0, 0)

    def show(self, latest: dict[int, dict[str, Any]]) -> None:
        now = time.monotonic()
        if now - self.shown_at < self.every or not latest:
            return
        self.shown_at = now
        total = {
            key: sum(d[key] for d in latest.values())
            for key in ("sent", "acked", "delivered", "errors", "in_flight")
        }
        then, acked_then, delivered_then = self.previous
        span = max(now - then, 1e-9)
        self.previous = (now, total["acked"], total["delivered"])
        elapsed = now - self.started
        done = min(elapsed / self.total, 1.0) if self.total else 1.0
        bar = "#" * int(done * 20)
        line = (
            f"[{bar:<20}] {elapsed:5.1f}/{self.total:.0f}s  acked {total['acked']:,} "
            f"({(total['acked'] - acked_then) / span:,.0f}/s)  delivered {total['delivered']:,} "
            f"({(total['delivered'] - delivered_then) / span:,.0f}/s)  "
            f"in flight {total['in_flight']:,}  errors {total['errors']:,}"
        )
        self.stream.write(("\r" + line + "\x1b[K") if self.tty else line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


# --- runs --------------------------------------------------------------------------------


def _setup_timeout(plan: WorkerPlan) -> float:
    sockets = plan.users * plan.devices
    return 60.0 + sockets * plan.connect_timeout_s / max(plan.connect_concurrency, 1)


def _cpu_readings(pids: Sequence[int]) -> list[float | None]:
    return [probes.cpu_seconds(pid) for pid in pids]


def _run_load(plan: WorkerPlan, args: argparse.Namespace, stream: TextIO | None) -> dict[str, Any]:
    crew = _Crew(plan)
    started_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    crew.start()
    try:
        crew.collect("ready", _setup_timeout(plan))
        cpu_before = _cpu_readings(args.pid)
        progress = None if stream is None else _Progress(stream, plan.warmup_s + plan.duration_s)
        crew.go.set()
        budget = plan.warmup_s + plan.duration_s + plan.drain_s + plan.ack_timeout_s + 60
        done = crew.collect("done", budget, progress)
        cpu_after = _cpu_readings(args.pid)
        if progress is not None:
            progress.finish()
    finally:
        crew.stop()

    tally = Tally()
    for report in done.values():
        tally.merge(Tally.from_wire(report["tally"]))
    loadgen_cpu = sum(float(r["cpu_seconds"]) for r in done.values())
    servers = [
        server_cpu_entry(
            name=name,
            pid=pid,
            cpu_seconds=None if before is None or after is None else after - before,
            acked=tally.acked,
        )
        for name, pid, before, after in zip(
            args.urls if args.pid else [], args.pid, cpu_before, cpu_after, strict=True
        )
    ]
    config = {
        "label": args.label,
        "urls": list(args.urls),
        "users": plan.users,
        "devices": plan.devices,
        "window": plan.window,
        "rate": args.rate,
        "duration_s": plan.duration_s,
        "warmup_s": plan.warmup_s,
        "content_chars": plan.content_chars,
        "procs": plan.workers,
        "client": plan.client,
        "senders": plan.users,
    }
    result = load_result(
        tally=tally,
        config=config,
        measured_seconds=plan.duration_s,
        offered_per_s=args.rate,
        loadgen_cpu_seconds=loadgen_cpu,
        servers=servers,
        started_at=started_at,
    )
    result["totals"]["skipped_by_window"] = sum(int(r["skipped"]) for r in done.values())
    result["totals"]["disconnects"] = sum(int(r["disconnects"]) for r in done.values())
    result["totals"]["foreign_deliveries"] = sum(int(r["foreign"]) for r in done.values())
    return result


def _memory_readings(args: argparse.Namespace) -> list[int | None]:
    """One reading per replica URL: from /proc by --pid, else from its metrics port, else none."""
    if args.pid:
        return [probes.rss_bytes(pid) for pid in args.pid]
    if args.metrics_url:
        return [probes.metrics_rss_bytes(url) for url in args.metrics_url]
    return [None for _ in args.urls]


def _run_idle(plan: WorkerPlan, args: argparse.Namespace, stream: TextIO | None) -> dict[str, Any]:
    started_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    before = _memory_readings(args)
    crew = _Crew(plan)
    crew.start()
    try:
        crew.go.clear()
        ready = crew.collect("ready", _setup_timeout(plan))
        sockets = sum(int(r["sockets"]) for r in ready.values())
        if stream is not None:
            stream.write(f"{sockets:,} sockets open; settling {args.settle:.0f}s\n")
        time.sleep(args.settle)
        after = _memory_readings(args)
        time.sleep(max(args.hold - args.settle, 0.0))
        crew.go.set()
        done = crew.collect("done", 120.0)
    finally:
        crew.stop()
    alive = sum(int(r["alive_at_end"]) for r in done.values())
    failures: dict[str, int] = {}
    for report in ready.values():
        for kind, count in report["failures"].items():
            failures[kind] = failures.get(kind, 0) + int(count)
    per_socket = memory_per_socket(before, after, sockets)
    source = "pid" if args.pid else ("metrics" if args.metrics_url else None)
    return {
        "schema": "messaging-bench/1",
        "mode": "idle",
        "started_at": started_at,
        "config": {
            "label": args.label,
            "urls": list(args.urls),
            "users": plan.users,
            "devices": plan.devices,
            "procs": plan.workers,
            "hold_s": args.hold,
            "settle_s": args.settle,
            "memory_source": source,
        },
        "sockets": sockets,
        "alive_at_end": alive,
        "connect_failures": failures,
        "servers": [
            {"name": url, "rss_before": b, "rss_after": a}
            for url, b, a in zip(args.urls, before, after, strict=True)
        ],
        "memory_per_socket_bytes": None if per_socket is None else round(per_socket),
    }


def render_summary(result: dict[str, Any]) -> str:
    """The human-readable lines printed after a run."""
    if result["mode"] == "idle":
        per = result["memory_per_socket_bytes"]
        per_text = (
            "unknown (no --metrics-url, no --pid)" if per is None else f"{per / 1024:.1f} KiB"
        )
        return (
            f"idle: {result['sockets']:,} sockets held, {result['alive_at_end']:,} alive at "
            f"the end, failures {result['connect_failures'] or 'none'}; "
            f"server memory per socket {per_text}"
        )
    totals, rates, lat = result["totals"], result["rates"], result["latency_ms"]["send_to_receive"]
    ack = result["latency_ms"]["send_to_ack"]

    def ms(value: float | None) -> str:
        return (
            "-"
            if value is None or (isinstance(value, float) and math.isnan(value))
            else (f"{value:.1f}")
        )

    lines = [
        f"acked/s {rates['acked_per_s']:,.0f}  delivered/s {rates['delivered_per_s']:,.0f}"
        + (f"  (offered {rates['offered_per_s']:,.0f}/s)" if rates["offered_per_s"] else ""),
        f"send->receive ms: p50 {ms(lat['p50'])}  p95 {ms(lat['p95'])}  p99 {ms(lat['p99'])}  "
        f"max {ms(lat['max'])}   send->ack p50 {ms(ack['p50'])}  p99 {ms(ack['p99'])}",
        f"sent {totals['sent']:,}  acked {totals['acked']:,}  errors {totals['errors'] or 0}  "
        f"unanswered {totals['unanswered']}  lost {totals['lost']}  "
        f"duplicated {totals['duplicated']}  misrouted {totals['misrouted']}",
        f"load generator: {result['loadgen']['cpu_ms_per_message']} ms CPU per message "
        f"({result['loadgen']['procs']} procs, "
        f"{result['config'].get('client', 'python')} client)",
    ]
    lines.extend(
        f"server {s['name']} (pid {s['pid']}): {s['cpu_ms_per_message']} ms CPU per message"
        for s in result["servers"]
    )
    return "\n".join(lines)


def _raise_fd_limit() -> None:
    """Thousands of sockets need thousands of descriptors: lift the soft limit to the hard."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else 1_048_576
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
