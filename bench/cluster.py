"""Processes for bench/history.py and bench/fanout.py: a tuned PostgreSQL, the service, its helpers.

Built on the harness (tests/support/servers.py: spawn, Proc, PostgreSQL, Redis, wait_until); what
this adds is the benchmark settings for PostgreSQL and ``Processes``, one owner that stops
everything it started, in reverse order, however the run ends (error, Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import uvloop

from messaging.bench import probes
from tests.support import launch, servers
from tests.support.servers import REPO, PostgresServer, Proc, RedisControl, ServerError

JWT_SECRET = "benchmark-only-secret-0123456789abcdef0123456789"  # noqa: S105 - private servers
T = TypeVar("T")
RESULTS_DIR = REPO / "bench" / "results"
SERVICE = launch.SERVICE  # `python -m messaging.cli`, as the harness launches it
BENCH_PG_USER = "bench"  # the role of the benchmark databases (trust auth, loopback only)

# Settings for a benchmark database on one machine. fsync/full_page_writes/synchronous_commit off:
# these benchmarks measure the query path and the fan-out, not this VM's disk flush latency
# (every send commits through one stream-counter row, so with fsync on the disk sets the pace).
BENCH_PG_SETTINGS: Mapping[str, str] = {
    "shared_buffers": "256MB",
    "effective_cache_size": "4GB",
    "work_mem": "16MB",
    "maintenance_work_mem": "512MB",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "30min",
    "fsync": "off",
    "full_page_writes": "off",
    "synchronous_commit": "off",
    "max_connections": "300",
    "random_page_cost": "1.1",
}


@dataclass
class Service:
    """One service process (``messaging serve`` or a bench launcher) and its ports."""

    proc: Proc
    http_port: int
    grpc_port: int
    metrics_port: int

    @property
    def name(self) -> str:
        return self.proc.name

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        """Where ``messaging serve`` answers /metrics: its own port, not the public one."""
        return f"http://127.0.0.1:{self.metrics_port}"


class Interrupted(Exception):
    """SIGTERM arrived: unwind like Ctrl-C, so every started process is stopped."""


class Processes:
    """Owns every process a benchmark starts; ``close`` (or leaving ``run``) stops them all."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        if os.geteuid() == 0:
            workdir.chmod(0o755)  # PostgreSQL runs as `postgres` and must reach its directory
        self.log_dir = workdir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._stack = contextlib.ExitStack()
        self.code: Path | None = None  # PYTHONPATH of the service code run (None: working tree)

    def export_service(self, ref: str) -> dict[str, Any]:
        """Run ``ref``'s service code from now on (see ``export_service``); its revision."""
        self.code, measured = export_service(ref, self.workdir / "src")
        return measured

    def close(self) -> None:
        self._stack.close()

    def keep_logs(self, target: Path) -> None:
        """Copy the processes' logs next to the results (the workdir is deleted afterwards)."""
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True, exist_ok=True)
        for log in self.log_dir.glob("*.log"):
            with contextlib.suppress(OSError):
                shutil.copy(log, target / log.name)

    def postgres(self, settings: Mapping[str, str] | None = None) -> PostgresServer:
        pg = PostgresServer(
            self.workdir / "pg",
            user=BENCH_PG_USER,
            # Room for a benchmark's pools (the default 100 is not), unless the settings say.
            settings={"max_connections": "200", **(settings or BENCH_PG_SETTINGS)},
        )
        self._stack.callback(pg.stop)
        pg.start()
        return pg

    def redis(self) -> RedisControl:
        redis = RedisControl(self.workdir / "redis")
        self._stack.callback(redis.stop)
        redis.start()
        return redis

    def spawn(self, name: str, argv: list[str], env: Mapping[str, str]) -> Proc:
        proc = servers.spawn(name, argv, self.log_dir, env=env, cwd=REPO)
        self._stack.callback(proc.stop)
        return proc

    def connections(self) -> str:
        """A Connections stand-in where everyone is connected; returns its address."""
        return launch.start_connections(
            self.spawn, env={} if self.code is None else {"PYTHONPATH": str(self.code)}
        )

    def service(
        self,
        name: str,
        env: Mapping[str, str],
        argv: list[str] | None = None,
        *,
        wait: bool = True,
    ) -> Service:
        """Start a replica on fresh loopback ports (``messaging serve`` unless ``argv``)."""
        http_port, grpc_port = servers.free_port(), servers.free_port()
        metrics_port = servers.free_port()
        proc = launch.spawn_replica(
            name,
            self.log_dir,
            {**env, **launch.replica_env(name, http_port, grpc_port, metrics_port)},
            argv,
        )
        self._stack.callback(proc.stop)
        service = Service(proc, http_port, grpc_port, metrics_port)
        if wait:
            wait_ready(service)
        return service


def wait_ready(service: Service, timeout: float = 60.0) -> None:
    launch.wait_ready(service.url, service.proc, timeout)


# A benchmark sender is one user sending as fast as acks allow: far past a person's budget. The
# limits stay on (their checks are part of the measured cost) with budgets out of reach.
BENCH_RATE_LIMITS = {
    "MESSAGING_RATE_LIMIT_SEND_PER_SECOND": "1000000",
    "MESSAGING_RATE_LIMIT_SEND_BURST": "1000000",
    "MESSAGING_MAX_SENDS_IN_FLIGHT_PER_USER": "10000",
}


def service_env(
    *,
    database_url: str,
    connections: str,
    redis_url: str = "",
    workdir: Path,
    code: Path | None = None,
) -> dict[str, str]:
    """The environment every replica of a benchmark shares (``code``: see export_service)."""
    env = {
        "MESSAGING_MODE": "production",
        "MESSAGING_DATABASE_URL": database_url,
        "MESSAGING_JWT_SECRET": JWT_SECRET,
        "MESSAGING_CONNECTIONS_ADDRESS": connections,
        # Per-request INFO logs would measure the log handler, not the service.
        "MESSAGING_LOG_LEVEL": "WARNING",
        "MESSAGING_LOG_FORMAT": "json",
        # Stopping a replica between runs need not spread reconnections over ten seconds.
        "MESSAGING_DRAIN_WINDOW_SECONDS": "0.5",
        # `messaging migrate` writes the schema version here (default: /dev/termination-log).
        "MESSAGING_TERMINATION_MESSAGE_PATH": str(workdir / "termination-log"),
        **BENCH_RATE_LIMITS,
    }
    if redis_url:
        env["MESSAGING_REDIS_URL"] = redis_url
    if code is not None:
        env["PYTHONPATH"] = str(code)  # ahead of the editable install's path to the checkout
    return env


def migrate(env: Mapping[str, str]) -> None:
    done = subprocess.run(
        [*SERVICE, "migrate"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        cwd=REPO,
    )
    if done.returncode != 0:
        raise ServerError(f"messaging migrate failed:\n{done.stdout}\n{done.stderr}")


def cpu_seconds(pid: int) -> float:
    """User+system CPU of ``pid`` and its children so far (0 if it is gone)."""
    return probes.cpu_seconds(pid) or 0.0


def wait_quiet(pids: list[int], limit_s: float = 60.0, busy_cpu_s: float = 0.05) -> float:
    """Wait until every process uses under 5% CPU over a second; returns seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        before = [cpu_seconds(pid) for pid in pids]
        time.sleep(1.0)
        after = [cpu_seconds(pid) for pid in pids]
        if all(a - b < busy_cpu_s for a, b in zip(after, before, strict=True)):
            break
    return time.monotonic() - started


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
    return done.stdout.strip()


def revision() -> dict[str, Any]:
    """The commit checked out, and the service files that differ from it (others edit too)."""
    return {
        "source": "working tree",
        "commit": _git("rev-parse", "--short", "HEAD"),
        "uncommitted_service_files": _git("status", "--porcelain", "--", "service").splitlines(),
    }


def export_service(ref: str, target: Path) -> tuple[Path | None, dict[str, Any]]:
    """The service code the benchmark's processes run: ``ref``'s service/ exported under
    ``target`` (a directory for PYTHONPATH), or, for ``working``, the working tree (None).

    Several engineers edit service/ in this checkout at once; replicas started a few minutes
    apart from the working tree can run different code, and half-finished edits break runs.
    A committed revision makes a run reproducible and names exactly what was measured.
    """
    if ref == "working":
        return None, revision()
    commit = _git("rev-parse", "--short", "--verify", f"{ref}^{{commit}}")
    if not commit:
        raise ServerError(f"--service-from {ref!r} is not a commit (or use 'working')")
    target.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit, "service"],
        cwd=REPO,
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target / "service", {"source": ref, "commit": commit}


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Turn SIGTERM into ``Interrupted`` while synchronous code runs (``finally`` blocks then
    stop the processes); ``run_async`` takes over inside an event loop."""

    def handler(signum: int, frame: FrameType | None) -> Any:
        raise Interrupted(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interruptible(main: Callable[[], int]) -> int:
    """``main()`` under ``sigterm_unwinds``, for a benchmark's ``__main__``: SIGTERM (``timeout``,
    ``kill``) or Ctrl-C stops every process it started and exits 130. Without it Python dies at
    SIGTERM without running ``finally``, and PostgreSQL and Redis outlive the run."""
    try:
        with sigterm_unwinds():
            return main()
    except (KeyboardInterrupt, Interrupted):
        print("\ninterrupted; every process started was stopped", file=sys.stderr)
        return 130


def run_async(main: Coroutine[Any, Any, T], *, fast_loop: bool = False) -> T:
    """Run ``main`` in a fresh event loop (uvloop when ``fast_loop``); SIGTERM cancels it.

    An exception raised from a signal handler inside an event loop lands in whatever callback
    was running (a socket's ``data_received``, say) and is swallowed there, so in the loop
    SIGTERM cancels the main task instead and surfaces as ``Interrupted``. Ctrl-C is the
    runner's own (cancel, then KeyboardInterrupt).
    """
    factory = uvloop.new_event_loop if fast_loop else None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(_cancel_on_sigterm(main))


async def _cancel_on_sigterm(main: Coroutine[Any, Any, T]) -> T:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    terminated: list[bool] = []

    def on_sigterm() -> None:
        terminated.append(True)
        task.cancel()

    previous = signal.getsignal(signal.SIGTERM)
    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        return await main
    except asyncio.CancelledError:
        if terminated:
            raise Interrupted("SIGTERM") from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, previous)
