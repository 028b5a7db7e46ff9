"""`messaging bench` end to end, against two replicas of the Node.js reference server.

Real PostgreSQL and Redis (the shared test servers), the reference installed with `npm ci` and
started here; the bench runs briefly and its JSON result is checked for correctness, not speed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench import node_reference
from messaging.bench import main
from tests.support.bench_run import assert_clean_run, run_bench
from tests.support.servers import PostgresServer, Proc, RedisControl, free_port

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

SECRET = "bench-test-secret-0123456789abcdef0123456789"


class Replica:
    def __init__(self, url: str, pid: int) -> None:
        self.url = url
        self.pid = pid


@pytest.fixture(scope="module")
def reference(
    postgres_server: PostgresServer,
    redis_server: RedisControl,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[Replica]]:
    node_reference.npm_ci()
    postgres_server.create_database("bench_reference")
    database_url = postgres_server.url("bench_reference")
    log_dir = tmp_path_factory.mktemp("reference-logs")
    procs: list[Proc] = []
    replicas = []
    try:
        for i in (1, 2):
            port = free_port()
            proc = node_reference.start_reference(
                f"reference-{i}",
                port=port,
                database_url=database_url,
                redis_url=redis_server.url,
                jwt_secret=SECRET,
                log_dir=log_dir,
            )
            procs.append(proc)
            replicas.append(Replica(f"http://127.0.0.1:{port}", proc.pid))
        yield replicas
    finally:
        for proc in procs:
            proc.stop()


def run(argv: list[str], out: Path) -> tuple[int, dict[str, Any]]:
    return run_bench(argv, out, SECRET)


def test_every_acked_message_reaches_each_device_once_across_replicas(
    reference: list[Replica], tmp_path: Path
) -> None:
    code, result = run(
        [
            *(r.url for r in reference),
            *(arg for r in reference for arg in ("--pid", str(r.pid))),
            "--users", "8", "--devices", "2", "--window", "2", "--procs", "2",
            "--duration", "2", "--warmup", "0.5",
        ],
        tmp_path / "load.json",
    )  # fmt: skip
    assert code == 0
    assert_clean_run(result, min_acked=100)
    assert result["loadgen"]["procs"] == 2
    assert [s["pid"] for s in result["servers"]] == [r.pid for r in reference]


def test_fixed_rate_offers_no_more_than_asked(reference: list[Replica], tmp_path: Path) -> None:
    code, result = run(
        [*(r.url for r in reference), "--users", "4", "--rate", "100", "--window", "8",
         "--duration", "2", "--warmup", "0"],
        tmp_path / "rate.json",
    )  # fmt: skip
    assert code == 0
    assert result["rates"]["offered_per_s"] == 100
    # Paced from elapsed time: at most rate x duration (+1 for the tick that lands on the end).
    assert 150 <= result["totals"]["sent"] <= 201
    assert result["totals"]["lost"] == 0


def test_idle_mode_holds_sockets_and_reads_server_memory_from_the_pid(
    reference: list[Replica], tmp_path: Path
) -> None:
    code, result = run(
        [reference[0].url, "--pid", str(reference[0].pid), "--mode", "idle", "--users", "300",
         "--hold", "1", "--settle", "0.5"],
        tmp_path / "idle.json",
    )  # fmt: skip
    assert code == 0
    assert result["mode"] == "idle"
    assert result["sockets"] == result["alive_at_end"] == 300
    assert result["connect_failures"] == {}
    assert result["servers"][0]["rss_before"] > 0
    assert result["memory_per_socket_bytes"] is not None


def test_a_refused_handshake_fails_the_run(reference: list[Replica], tmp_path: Path) -> None:
    out = tmp_path / "refused.json"
    code = main(
        [reference[0].url, "--users", "2", "--duration", "1", "--jwt-secret", "not-the-secret",
         "--out", str(out), "--quiet"]
    )  # fmt: skip
    assert code == 1
    assert not out.exists()
