"""Private PostgreSQL, Redis and server processes for benchmarks and the bench's own tests.

Everything listens on loopback ports chosen at start, keeps its files in one temporary
directory, and is stopped by the handle that started it; nothing touches a system service.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REFERENCE_DIR = REPO / "bench" / "reference"
PG_ROOTS = (Path("/usr/lib/postgresql"),)
PG_USER = "bench"


class ServerError(Exception):
    """A server needed for the benchmark could not be installed or started."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pg_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin directory (Debian layout), if any."""
    candidates = [
        d / "bin" for root in PG_ROOTS if root.is_dir() for d in root.iterdir() if d.is_dir()
    ]
    candidates = [c for c in candidates if (c / "initdb").exists()]
    if not candidates:
        return None
    return max(candidates, key=lambda c: int(c.parent.name) if c.parent.name.isdigit() else 0)


def ensure_packages() -> None:
    """apt-get install PostgreSQL and Redis when they are missing (as root only)."""
    missing = []
    if pg_bin_dir() is None:
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
) -> Proc:
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,  # its own group: stop() reaches its children too
        )
    return Proc(name, popen, log_path)


def wait_until(
    check: Callable[[], bool], what: str, proc: Proc | None = None, timeout: float = 60.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and not proc.alive():
            raise ServerError(f"{proc.name} exited while waiting for {what}:\n{proc.log_tail()}")
        time.sleep(0.1)
    tail = "" if proc is None else "\n" + proc.log_tail()
    raise ServerError(f"timed out waiting for {what}{tail}")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback http
            return bool(200 <= response.status < 300)
    except (urllib.error.URLError, OSError):
        return False


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Postgres:
    """A throw-away cluster: trust auth for user ``bench`` on a private loopback port."""

    workdir: Path
    port: int = field(default_factory=free_port)
    proc: Proc | None = None
    settings: Mapping[str, str] = field(default_factory=dict)  # extra `-c name=value`

    def url(self, database: str) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def _as_owner(self, argv: list[str]) -> list[str]:
        # PostgreSQL refuses to run as root; run it as the packaged postgres user instead.
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *argv]
        return argv

    def start(self) -> None:
        bin_dir = pg_bin_dir()
        if bin_dir is None:
            raise ServerError("PostgreSQL is not installed")
        data = self.workdir / "pgdata"
        data.mkdir(parents=True)
        if os.geteuid() == 0:
            self.workdir.chmod(0o755)
            shutil.chown(data, "postgres")
        subprocess.run(
            self._as_owner(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    PG_USER,
                    "--auth=trust",
                    "-E",
                    "UTF8",
                ]
            ),
            check=True,
            capture_output=True,
        )
        self.proc = spawn(
            "postgres",
            self._as_owner(
                [
                    str(bin_dir / "postgres"),
                    "-D",
                    str(data),
                    "-p",
                    str(self.port),
                    "-k",
                    str(data),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "max_connections=200",
                    *(arg for k, v in self.settings.items() for arg in ("-c", f"{k}={v}")),
                ]
            ),
            self.workdir,
        )
        wait_until(lambda: port_open(self.port), "PostgreSQL to listen", self.proc)
        wait_until(
            lambda: self.psql("postgres", "SELECT 1", check=False) == "1",
            "PostgreSQL to accept queries",
            self.proc,
        )

    def psql(self, database: str, sql: str, check: bool = True) -> str:
        bin_dir = pg_bin_dir()
        assert bin_dir is not None
        done = subprocess.run(
            [
                str(bin_dir / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                PG_USER,
                "-d",
                database,
                "-Atc",
                sql,
            ],
            check=check,
            capture_output=True,
            text=True,
        )
        return done.stdout.strip()

    def create_database(self, name: str) -> str:
        self.psql("postgres", f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(signal.SIGINT)  # fast shutdown


@dataclass
class Redis:
    workdir: Path
    port: int = field(default_factory=free_port)
    proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        server = shutil.which("redis-server")
        if server is None:
            raise ServerError("redis-server is not installed")
        self.proc = spawn(
            "redis",
            [
                server,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            self.workdir,
        )
        wait_until(lambda: port_open(self.port), "Redis to listen", self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


def npm_ci(reference_dir: Path = REFERENCE_DIR) -> None:
    """Install the reference's locked dependencies unless they are already in place."""
    marker = reference_dir / "node_modules" / ".package-lock.json"
    lock = reference_dir / "package-lock.json"
    if marker.exists() and marker.stat().st_mtime >= lock.stat().st_mtime:
        return
    npm = shutil.which("npm")
    if npm is None:
        raise ServerError("npm is not installed")
    subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=reference_dir,
        check=True,
    )


def start_reference(
    name: str, *, port: int, database_url: str, redis_url: str, jwt_secret: str, log_dir: Path
) -> Proc:
    node = shutil.which("node")
    if node is None:
        raise ServerError("node is not installed")
    proc = spawn(
        name,
        [node, "server.js"],
        log_dir,
        env={
            "PORT": str(port),
            "HOST": "127.0.0.1",
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "JWT_SECRET": jwt_secret,
            "NODE_ENV": "production",
        },
        cwd=REFERENCE_DIR,
    )
    wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), f"{name} to serve", proc)
    return proc


@contextlib.contextmanager
def workspace(prefix: str = "messaging-bench-") -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
