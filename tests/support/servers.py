"""The harness's server processes: PostgreSQL, Redis and the S3-compatible object store.

One launcher for the tests, the benchmarks (`bench/`) and the fault suites alike, so that what a
benchmark measures runs the way the tests run it. Everything listens on a loopback port chosen
at start, keeps its files in one directory and is stopped by the handle that started it; nothing
touches a system service. The classes are plain (``start``/``stop``, and a restart on the same
port, which the fault suites use to take a server away and bring it back); the ``running_*``
context managers stop them however the block ends, also at interpreter exit. The pytest fixtures
(`tests/support/fixtures.py`) are thin wrappers over these.

Nothing here installs packages: hack/test.sh does. A missing binary is a ``ServerError`` (the
fixtures fail loudly instead of skipping).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import glob
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"


class ServerError(RuntimeError):
    """A server could not be found or started (its log tail is in the message)."""


# --- ports and processes -------------------------------------------------------------------------


# Ports come from below the kernel's ephemeral range (32768-60999 by default), where no outbound
# connection is ever given a local port: a port the kernel hands out for ``bind(0)`` is also one it
# may hand the very next client socket (a test's httpx, a replica's Redis link), and a replica that
# then binds it fails with "address in use" (seen in CI). Each process walks its own slice, chosen
# by xdist worker, so two workers never offer each other's ports, and never offers a port twice.
_PORT_RANGE = (20000, 32000)
_PORT_SLICES = 6


def _port_slice() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    slot = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else os.getpid()
    low, high = _PORT_RANGE
    size = (high - low) // _PORT_SLICES
    start = low + (slot % _PORT_SLICES) * size
    return range(start, start + size)


_slice = _port_slice()
_next_port = itertools.cycle(
    itertools.chain(_slice[(offset := os.getpid() % len(_slice)) :], _slice[:offset])
)


def free_ports(count: int) -> list[int]:
    """Ports nothing listens on right now, none of them offered before by this process (until
    its slice of 2,000 wraps). Every probe socket is held until all are chosen."""
    with contextlib.ExitStack() as stack:
        chosen: list[int] = []
        for _ in range(len(_slice)):
            if len(chosen) == count:
                return chosen
            port = next(_next_port)
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
            chosen.append(port)
        if len(chosen) == count:
            return chosen
    raise ServerError(f"no {count} free ports in {_slice}")


def free_port() -> int:
    return free_ports(1)[0]


def port_open(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback http
            return bool(200 <= response.status < 300)
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class Proc:
    """A started process with its log; ``stop`` ends exactly this process (and its group)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=grace)


def spawn(
    name: str,
    argv: list[str],
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    *,
    user: str | None = None,
) -> Proc:
    """Start ``argv`` in a session of its own (``stop`` reaches its children too), its output
    appended to ``log_dir/name.log``; as ``user`` when given (we are root then)."""
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
            **as_user(user),
        )
    return Proc(name, popen, log_path)


def as_user(user: str | None) -> dict[str, Any]:
    """``subprocess`` arguments that run a child as ``user`` (its group, no others), or as us."""
    if user is None:
        return {}
    return {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}


def wait_until(
    check: Callable[[], bool], what: str, proc: Proc | None = None, timeout: float = 60.0
) -> None:
    """Poll ``check`` until it holds; fail early, with its log, when ``proc`` exits meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and not proc.alive():
            raise ServerError(f"{proc.name} exited while waiting for {what}:\n{proc.log_tail()}")
        time.sleep(0.05)
    tail = "" if proc is None else "\n" + proc.log_tail()
    raise ServerError(f"timed out waiting for {what}{tail}")


def wait_for_port(host: str, port: int, timeout: float = 30.0) -> None:
    wait_until(lambda: port_open(port, host), f"{host}:{port} to listen", None, timeout)


@contextlib.contextmanager
def workspace(prefix: str = "messaging-") -> Iterator[Path]:
    """A temporary directory, removed with everything in it when the block ends."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def stopped_at_exit(stop: Callable[[], None]) -> Iterator[None]:
    """Run ``stop`` when the block ends, and at interpreter exit should it never end (a run
    interrupted inside a session fixture): no server outlives the process that started it."""
    atexit.register(stop)
    try:
        yield
    finally:
        stop()
        atexit.unregister(stop)


class _Server(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


ServerT = TypeVar("ServerT", bound=_Server)


@contextlib.contextmanager
def running(
    make: Callable[[Path], ServerT],
    workdir: Path | None,
    prefix: str,
    *,
    stop: Callable[[ServerT], None] | None = None,
) -> Iterator[ServerT]:
    """The shape of every ``running_*``: ``make(workdir)`` (a fresh temporary directory named
    ``prefix…`` unless ``workdir``), started, stopped (``stop``, else its ``stop``) however the
    block ends, also at interpreter exit, and the temporary directory removed."""
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = stack.enter_context(workspace(prefix))
        server = make(workdir)
        stack.enter_context(stopped_at_exit(server.stop if stop is None else lambda: stop(server)))
        server.start()
        yield server


# --- PostgreSQL ----------------------------------------------------------------------------------


def postgres_bin_dir() -> Path:
    """The newest installed PostgreSQL's bin directory (Debian layout)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda p: int(n) if (n := Path(p).parents[1].name).isdigit() else 0,
    )
    if not found:
        raise ServerError("PostgreSQL server binaries not found: run hack/test.sh (installs them)")
    return Path(found[-1]).parent


class PostgresServer:
    """A throw-away PostgreSQL cluster: trust auth for ``user``, one loopback port, its files
    under ``workdir``; ``settings`` are extra ``-c name=value`` options.

    ``start`` creates the cluster the first time and (re)starts the server on the same port;
    ``stop`` is a fast shutdown (clients are disconnected), as an operator's would be; ``kill``
    an immediate one. PostgreSQL refuses to run as root, so as root it runs as the packaged
    ``postgres`` user.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        user: str = "postgres",
        settings: Mapping[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.host = LOOPBACK
        self.port = port or free_port()
        self.user = user
        self.settings = dict(settings or {})
        self.bin_dir = postgres_bin_dir()
        self.data_dir = workdir / "pgdata"
        self.proc: Proc | None = None
        self._run_as = "postgres" if os.geteuid() == 0 else None

    def _init(self) -> None:
        self.data_dir.mkdir(parents=True)
        if self._run_as is not None:
            self.workdir.chmod(0o755)  # the postgres user must reach its directory
            shutil.chown(self.data_dir, self._run_as)
        subprocess.run(
            [str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", self.user,
             "--auth=trust", "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True, cwd=self.workdir, **as_user(self._run_as),
        )  # fmt: skip

    def start(self, attempts: int = 3) -> None:
        """Start (or restart) the server; a no-op while it runs.

        A restart on the same port can meet the port briefly taken (by another process's
        ``free_port`` pick, say) and the postmaster then exits at once: it is tried again, so a
        test that restarts the session's server does not leave it down for every later test.
        """
        for attempt in range(1, attempts + 1):
            try:
                self._start()
                return
            except ServerError:
                if attempt == attempts or (self.proc is not None and self.proc.alive()):
                    raise
                time.sleep(1.0)

    def _start(self) -> None:
        if self.proc is not None and self.proc.alive():
            return
        if not self.data_dir.exists():
            self._init()
        options = {"listen_addresses": self.host, **self.settings}
        self.proc = spawn(
            "postgres",
            [str(self.bin_dir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
             "-k", str(self.data_dir),
             *(arg for k, v in options.items() for arg in ("-c", f"{k}={v}"))],
            self.workdir, cwd=self.workdir, user=self._run_as,
        )  # fmt: skip
        wait_until(lambda: port_open(self.port), "PostgreSQL to listen", self.proc)
        wait_until(
            lambda: self.psql("postgres", "SELECT 1", check=False) == "1",
            "PostgreSQL to accept queries",
            self.proc,
        )

    def _shutdown(self, sig: int) -> None:
        # The postmaster alone: it ends its backends the way the mode says (a signal to the whole
        # group would also cancel their queries first, which no real shutdown does).
        if self.proc is None or not self.proc.alive():
            return
        self.proc.popen.send_signal(sig)
        try:
            self.proc.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.stop(signal.SIGKILL)

    def stop(self) -> None:
        """Fast shutdown: clients are disconnected, the data is kept for ``start``."""
        self._shutdown(signal.SIGINT)

    def kill(self) -> None:
        """Immediate shutdown (the crash-recovery kind): for throw-away clusters at the end."""
        self._shutdown(signal.SIGQUIT)

    @contextlib.asynccontextmanager
    async def stopped(self) -> AsyncIterator[None]:
        """Down for the block (fast shutdown), started again after it, also when it fails."""
        await asyncio.to_thread(self.stop)
        try:
            yield
        finally:
            await asyncio.to_thread(self.start)

    def url(self, database: str = "postgres") -> str:
        """A libpq URL (psql, Node.js, ``MESSAGING_DATABASE_URL``)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def dsn(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL the service's engine takes."""
        return f"postgresql+asyncpg://{self.user}@{self.host}:{self.port}/{database}"

    def psql(self, database: str, sql: str, check: bool = True) -> str:
        done = subprocess.run(
            [str(self.bin_dir / "psql"), "-h", self.host, "-p", str(self.port), "-U", self.user,
             "-d", database, "-v", "ON_ERROR_STOP=1", "-Atc", sql],
            check=check, capture_output=True, text=True,
        )  # fmt: skip
        return done.stdout.strip()

    def create_database(self, name: str) -> str:
        """Create ``name``; returns its ``dsn``.

        Starts the server again first if it died (a test that stopped it and failed before
        starting it): that test fails, not every test after it on this worker.
        """
        if self.proc is not None and not self.proc.alive():
            print(f"PostgreSQL was down; starting it again:\n{self.proc.log_tail()}")
            self.start()
        self.psql("postgres", f'CREATE DATABASE "{name}"')
        return self.dsn(name)


@contextlib.contextmanager
def running_postgres(
    workdir: Path | None = None,
    *,
    user: str = "postgres",
    settings: Mapping[str, str] | None = None,
) -> Iterator[PostgresServer]:
    """A started ``PostgresServer`` (in a fresh temporary directory unless ``workdir``), killed
    and its files removed when the block ends."""
    with running(
        lambda path: PostgresServer(path, user=user, settings=settings),
        workdir,
        "messaging-pg-",
        stop=PostgresServer.kill,
    ) as server:
        yield server


# --- Redis ---------------------------------------------------------------------------------------


class RedisControl:
    """A private Redis (no persistence), with a handle to stop and restart it on the same port."""

    def __init__(self, workdir: Path, *, port: int | None = None) -> None:
        self.host = LOOPBACK
        self.port = port or free_port()
        self.workdir = workdir
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def process(self) -> subprocess.Popen[bytes]:
        """The running server's process (the fault suites freeze it with SIGSTOP)."""
        assert self.proc is not None
        return self.proc.popen

    def start(self) -> None:
        """Start it, or again after ``stop`` (a no-op while it runs)."""
        if self.proc is not None and self.proc.alive():
            return
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServerError("redis-server not found: run hack/test.sh (installs it)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = spawn(
            "redis",
            [binary, "--port", str(self.port), "--bind", self.host, "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            self.workdir,
        )  # fmt: skip
        wait_until(lambda: port_open(self.port, self.host), "Redis to listen", self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(signal.SIGTERM)

    def cli(self, *args: str) -> str:
        return subprocess.run(
            ["redis-cli", "-h", self.host, "-p", str(self.port), *args],
            check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip


@contextlib.contextmanager
def running_redis(workdir: Path | None = None) -> Iterator[RedisControl]:
    """A started ``RedisControl``, stopped and its files removed when the block ends."""
    with running(RedisControl, workdir, "messaging-redis-") as server:
        yield server


# --- the S3-compatible object store (attachments) ------------------------------------------------

S3_ACCESS_KEY_ID = "messaging-test-access"
S3_SECRET_ACCESS_KEY = "messaging-test-secret-0123456789"
S3_REGION = "us-east-1"


def s3_server_binary() -> Path:
    """The binary hack/s3-server.sh built (hack/test.sh runs it; it is cached by version)."""
    printed = subprocess.run(
        [str(REPO / "hack" / "s3-server.sh"), "--print-binary"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    binary = Path(os.environ.get("MESSAGING_S3_SERVER_BINARY", printed))
    if not binary.is_file():
        raise ServerError(
            f"the S3 test server is not built ({binary}): run hack/s3-server.sh "
            "(hack/test.sh does; the first build takes a few minutes)"
        )
    return binary


class S3Server:
    """versitygw (built by hack/s3-server.sh) with its POSIX backend under ``workdir``."""

    def __init__(self, workdir: Path, *, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.endpoint_url = f"http://{LOOPBACK}:{self.port}"
        self.access_key_id = S3_ACCESS_KEY_ID
        self.secret_access_key = S3_SECRET_ACCESS_KEY
        self.region = S3_REGION
        self.data_dir = workdir / "data"
        self.proc: Proc | None = None

    def start(self) -> None:
        binary = s3_server_binary()
        sidecar = self.workdir / "meta"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        sidecar.mkdir(exist_ok=True)
        # Metadata in a sidecar directory rather than xattrs: works on any filesystem.
        self.proc = spawn(
            "versitygw",
            [str(binary), "--access", self.access_key_id, "--secret", self.secret_access_key,
             "--region", self.region, "--port", f"{LOOPBACK}:{self.port}", "--quiet",
             "posix", "--sidecar", str(sidecar), str(self.data_dir)],
            self.workdir,
        )  # fmt: skip
        wait_until(lambda: port_open(self.port), "versitygw to listen", self.proc, timeout=30)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(signal.SIGTERM)


@contextlib.contextmanager
def running_s3(workdir: Path | None = None) -> Iterator[S3Server]:
    """A started ``S3Server``, stopped and its files removed when the block ends."""
    with running(S3Server, workdir, "messaging-s3-") as server:
        yield server
