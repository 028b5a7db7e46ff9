"""The Node.js reference server (`bench/reference/`): installing its locked dependencies and
starting a replica of it, on the harness's processes (`tests/support/servers.py`)."""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support.servers import REPO, Proc, ServerError, http_ok, spawn, wait_until

REFERENCE_DIR = REPO / "bench" / "reference"


def npm_ci(reference_dir: Path = REFERENCE_DIR) -> None:
    """Install the reference's locked dependencies unless they are already in place.

    Under an exclusive lock: ``npm ci`` first deletes ``node_modules``, so two at once (two xdist
    workers, or a test and the ``bench.ab`` it runs) left a reference starting from a half-removed
    tree (``@redis/client``'s commands undefined), and a second one waiting finds it done.
    """
    marker = reference_dir / "node_modules" / ".package-lock.json"
    lock = reference_dir / "package-lock.json"
    key = hashlib.sha256(str(reference_dir.resolve()).encode()).hexdigest()[:16]
    with (Path(tempfile.gettempdir()) / f"messaging-npm-ci-{key}.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
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
