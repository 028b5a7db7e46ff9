"""The test PostgreSQL survives the tests that take it down, so one failure stays one failure.

A CI run had one worker's session server stay down after a test that restarted it, and every
later test on that worker failed or errored (134 of them). Each test here starts a private
server (not the session's) and does to it what such a test does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import servers
from tests.support.servers import PostgresServer, running_postgres


@pytest.fixture
def server() -> Iterator[PostgresServer]:
    with running_postgres(settings={"fsync": "off"}) as started:
        yield started


async def test_a_block_that_fails_while_postgresql_is_stopped_still_starts_it_again(
    server: PostgresServer,
) -> None:
    with pytest.raises(RuntimeError, match="the test failed"):
        async with server.stopped():
            assert server.psql("postgres", "SELECT 1", check=False) == ""
            raise RuntimeError("the test failed while the server was down")
    assert server.psql("postgres", "SELECT 1") == "1"


def test_a_database_asked_of_a_server_that_died_is_created_after_starting_it_again(
    server: PostgresServer,
) -> None:
    server.kill()
    dsn = server.create_database("after_the_crash")
    assert dsn.endswith("/after_the_crash")
    assert server.psql("after_the_crash", "SELECT current_database()") == "after_the_crash"


def test_a_benchmark_stopped_with_sigterm_stops_its_servers(tmp_path: Path) -> None:
    """``timeout`` or ``kill`` on a benchmark (SIGTERM) used to leave its PostgreSQL and Redis
    running: Python dies at SIGTERM without running ``finally`` or atexit."""
    script = tmp_path / "bench_like.py"
    script.write_text(
        "import sys, time\n"
        "from tests.support import servers\n"
        "servers.stop_servers_on_sigterm()\n"
        "with servers.running_redis() as redis:\n"
        "    print(redis.url, flush=True)\n"
        "    time.sleep(120)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=servers.REPO,
        env={**os.environ, "PYTHONPATH": str(servers.REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    assert servers.port_open(port)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 10
    while servers.port_open(port) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not servers.port_open(port), "Redis outlived the benchmark that started it"
