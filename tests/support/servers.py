"""Real PostgreSQL and Redis servers for the tests, on private ports and temporary directories.

Each starts once per test session and is stopped at the end, also when the run fails or is
interrupted. Nothing here installs packages: hack/test.sh does that; if a server binary is
missing the fixture fails loudly instead of skipping.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found: run hack/test.sh (installs them)")
    return Path(found[-1]).parent


def _as_postgres_user() -> tuple[list[str], int | None, int | None]:
    """PostgreSQL refuses to run as root: drop to the `postgres` system user when we are root."""
    if os.geteuid() != 0:
        return [], None, None
    entry = pwd.getpwnam("postgres")
    return ["runuser", "-u", "postgres", "--"], entry.pw_uid, entry.pw_gid


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    bin_dir: Path
    data_dir: Path | None = None
    options: str = ""
    run_as: tuple[str, ...] = ()

    def _pg_ctl(self, *args: str) -> None:
        assert self.data_dir is not None
        subprocess.run(
            [*self.run_as, str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args],
            check=True, capture_output=True,
        )  # fmt: skip

    def stop(self) -> None:
        """Stop the server the way an operator would (fast: clients are disconnected)."""
        self._pg_ctl("-m", "fast", "-w", "stop")

    def start(self) -> None:
        assert self.data_dir is not None
        self._pg_ctl("-o", self.options, "-l", str(self.data_dir.parent / "postgres.log"),
                     "-w", "start")  # fmt: skip

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://{self.user}@{self.host}:{self.port}/{database}"

    def psql(self, database: str, sql: str) -> str:
        out = subprocess.run(
            [str(self.bin_dir / "psql"), "-h", self.host, "-p", str(self.port), "-U", self.user,
             "-d", database, "-v", "ON_ERROR_STOP=1", "-Atc", sql],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        return out.stdout

    def create_database(self, name: str) -> str:
        self.psql("postgres", f'CREATE DATABASE "{name}"')
        return self.dsn(name)


def _start_redis(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found: run hack/test.sh (installs it)")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir), "--logfile", str(workdir / "redis.log")],
        start_new_session=True,
    )  # fmt: skip
    wait_for_port("127.0.0.1", port)
    return proc


class RedisControl:
    """The test Redis, with a handle to stop and restart it on the same port."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.host = "127.0.0.1"
        self.port = port
        self.workdir = workdir
        self.process = _start_redis(port, workdir)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(10)

    def start(self) -> None:
        if self.process.poll() is not None:
            self.process = _start_redis(self.port, self.workdir)

    def cli(self, *args: str) -> str:
        return subprocess.run(
            ["redis-cli", "-h", self.host, "-p", str(self.port), *args],
            check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bin_dir = _postgres_bin()
    prefix, uid, gid = _as_postgres_user()
    root = Path(tempfile.mkdtemp(prefix="messaging-pg-"))
    data = root / "data"
    if uid is not None and gid is not None:
        os.chown(root, uid, gid)
    port = free_port()
    subprocess.run(
        [*prefix, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
         "-E", "UTF8", "--no-sync"],
        check=True, capture_output=True,
    )  # fmt: skip
    options = f"-p {port} -k {root} -h 127.0.0.1 -c fsync=off -c full_page_writes=off"
    options += " -c max_connections=300"
    subprocess.run(
        [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l",
         str(root / "postgres.log"), "-w", "start"],
        check=True, capture_output=True,
    )  # fmt: skip

    def stop() -> None:
        subprocess.run(
            [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            check=False, capture_output=True,
        )  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)

    atexit.register(stop)
    try:
        yield PostgresServer(
            host="127.0.0.1",
            port=port,
            user="postgres",
            bin_dir=bin_dir,
            data_dir=data,
            options=options,
            run_as=tuple(prefix),
        )
    finally:
        stop()
        atexit.unregister(stop)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisControl]:
    workdir = Path(tempfile.mkdtemp(prefix="messaging-redis-"))
    control = RedisControl(free_port(), workdir)
    atexit.register(control.stop)
    try:
        yield control
    finally:
        control.stop()
        atexit.unregister(control.stop)
        shutil.rmtree(workdir, ignore_errors=True)


# --- the S3-compatible object store (attachments) ------------------------------------------------

S3_ACCESS_KEY_ID = "messaging-test-access"
S3_SECRET_ACCESS_KEY = "messaging-test-secret-0123456789"
S3_REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    """versitygw (built by hack/s3-server.sh) with its POSIX backend in a temporary directory."""

    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    region: str
    data_dir: Path


def _s3_server_binary() -> Path:
    """The binary hack/s3-server.sh built (hack/test.sh runs it; it is cached by version)."""
    script = Path(__file__).resolve().parents[2] / "hack" / "s3-server.sh"
    printed = subprocess.run(
        [str(script), "--print-binary"], check=True, capture_output=True, text=True
    ).stdout.strip()
    binary = Path(os.environ.get("MESSAGING_S3_SERVER_BINARY", printed))
    if not binary.is_file():
        raise RuntimeError(
            f"the S3 test server is not built ({binary}): run hack/s3-server.sh "
            "(hack/test.sh does; the first build takes a few minutes)"
        )
    return binary


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    binary = _s3_server_binary()
    root = Path(tempfile.mkdtemp(prefix="messaging-s3-"))
    data, sidecar = root / "data", root / "meta"
    data.mkdir()
    sidecar.mkdir()
    port = free_port()
    with (root / "versitygw.log").open("wb") as log_file:
        # Metadata in a sidecar directory rather than xattrs: works on any filesystem.
        proc = subprocess.Popen(
            [str(binary), "--access", S3_ACCESS_KEY_ID, "--secret", S3_SECRET_ACCESS_KEY,
             "--region", S3_REGION, "--port", f"127.0.0.1:{port}", "--quiet",
             "posix", "--sidecar", str(sidecar), str(data)],
            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def stop() -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(root, ignore_errors=True)

    atexit.register(stop)
    try:
        wait_for_port("127.0.0.1", port)
        yield S3Server(
            endpoint_url=f"http://127.0.0.1:{port}",
            access_key_id=S3_ACCESS_KEY_ID,
            secret_access_key=S3_SECRET_ACCESS_KEY,
            region=S3_REGION,
            data_dir=data,
        )
    finally:
        stop()
        atexit.unregister(stop)
