"""`messaging bench --client js`: the official socket.io-client drives the load (issue 21).

Two real `messaging serve` replicas on the shared PostgreSQL and Redis, every delivery crossing
replicas; the bench's Node.js worker runs a tiny load through them and its result, kept by the
script's own ledger, must account for every message the way the Python client's does.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from messaging.bench import main
from messaging.bench.js_client import check_installed, default_node_modules
from tests.support.bench_run import assert_clean_run, run_bench
from tests.support.replicas import Cluster, logs_on_failure
from tests.support.service import JWT_SECRET

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

UNLIMITED = {
    "rate_limit_send_per_second": "1000000",
    "rate_limit_send_burst": "1000000",
    "max_sends_in_flight_per_user": "10000",
    # As deployed (the test cluster's default of 0 asks the stand-in on every send).
    "connections_cache_ttl_seconds": "60",
}


def run(argv: list[str], out: Path) -> tuple[int, dict[str, Any]]:
    return run_bench(argv, out, JWT_SECRET)


def test_the_node_modules_of_this_checkout_have_the_official_client() -> None:
    assert check_installed(default_node_modules()) is None


async def test_the_official_js_client_drives_a_load_and_every_message_is_accounted_for(
    cluster: Cluster, tmp_path: Path
) -> None:
    replicas = await cluster.start(2, **UNLIMITED)
    argv = [
        *(r.url for r in replicas),
        *(a for r in replicas for a in ("--pid", str(r.process.pid if r.process else 0))),
        "--client", "js", "--users", "8", "--devices", "2", "--window", "2", "--procs", "2",
        "--duration", "1.5", "--warmup", "0.3",
    ]  # fmt: skip
    with logs_on_failure(cluster):
        code, result = await asyncio.to_thread(run, argv, tmp_path / "js.json")
    assert code == 0, result
    assert result["config"]["client"] == "js"
    assert_clean_run(result, min_acked=20)  # loadgen CPU: Node.js's own, reported by it


def test_the_js_client_is_refused_for_idle_runs(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["http://127.0.0.1:9", "--client", "js", "--mode", "idle", "--jwt-secret", "x"])
    assert exit_.value.code == 2
