"""`messaging bench --client js`: the official socket.io-client drives the load (issue 21).

Two real `messaging serve` replicas on the shared PostgreSQL and Redis, every delivery crossing
replicas; the bench's Node.js worker runs a tiny load through them and its result, kept by the
script's own ledger, must account for every message the way the Python client's does.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from messaging.bench import main
from messaging.bench.js_client import check_installed, default_node_modules
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
    code = main([*argv, "--jwt-secret", JWT_SECRET, "--out", str(out), "--quiet"])
    return code, json.loads(out.read_text()) if out.exists() else {}


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
    totals = result["totals"]
    assert totals["acked"] > 20
    assert totals["sent"] == totals["acked"]
    assert totals["errors"] == {}
    # Each message goes to the recipient's 2 devices and the sender's other device.
    assert totals["expected_deliveries"] == 3 * totals["acked"]
    assert totals["delivered"] == totals["expected_deliveries"]
    assert (totals["lost"], totals["duplicated"], totals["misrouted"]) == (0, 0, 0)
    assert result["clean"] is True
    latency = result["latency_ms"]["send_to_receive"]
    assert latency["count"] > 0
    assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
    assert result["rates"]["acked_per_s"] > 0
    assert result["loadgen"]["cpu_ms_per_message"] > 0  # Node.js's own CPU, reported by it
    assert all(s["cpu_ms_per_message"] > 0 for s in result["servers"])


def test_the_js_client_is_refused_for_idle_runs(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["http://127.0.0.1:9", "--client", "js", "--mode", "idle", "--jwt-secret", "x"])
    assert exit_.value.code == 2
