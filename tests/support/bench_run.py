"""`messaging bench` run in-process by the tests, and the checks every clean run passes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from messaging.bench import main


def run_bench(argv: list[str], out: Path, jwt_secret: str) -> tuple[int, dict[str, Any]]:
    """``messaging bench argv`` writing its JSON result to ``out``: the exit code and result."""
    code = main([*argv, "--jwt-secret", jwt_secret, "--out", str(out), "--quiet"])
    return code, json.loads(out.read_text()) if out.exists() else {}


def assert_clean_run(result: dict[str, Any], *, min_acked: int) -> None:
    """Every acked message reached each of its devices once, and the run measured something."""
    totals = result["totals"]
    assert totals["acked"] > min_acked
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
    assert result["loadgen"]["cpu_ms_per_message"] > 0
    assert all(s["cpu_ms_per_message"] > 0 for s in result["servers"])
