"""A benchmark stopped with SIGTERM stops the servers it started.

``timeout`` or ``kill`` on a benchmark used to leave its PostgreSQL and Redis running: Python dies
at SIGTERM without running ``finally`` or atexit. ``bench.cluster.interruptible`` is what every
benchmark's ``__main__`` runs under."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support import servers

HOLDS_A_REDIS = """
import time
from bench import cluster
from tests.support import servers

def main() -> int:
    with servers.running_redis() as redis:
        print(redis.url, flush=True)
        time.sleep(120)
    return 0

raise SystemExit(cluster.interruptible(main))
"""


def test_a_benchmark_stopped_with_sigterm_stops_its_servers_and_exits_130(
    tmp_path: Path,
) -> None:
    script = tmp_path / "bench_like.py"
    script.write_text(HOLDS_A_REDIS)
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=servers.REPO,
        env={**os.environ, "PYTHONPATH": str(servers.REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline().strip().rsplit(":", 1)[1].split("/")[0])
    assert servers.port_open(port)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 130
    deadline = time.monotonic() + 10
    while servers.port_open(port) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not servers.port_open(port), "Redis outlived the benchmark that started it"
