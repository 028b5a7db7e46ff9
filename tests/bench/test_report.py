"""BENCHMARKS.md and the plot are built from the driver's summary of bench results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import report
from messaging.bench.accounting import Ledger, load_result, server_cpu_entry
from messaging.bench.cli import render_summary

MS = 1_000_000


def fake_result(acked: int, rate: float | None = None) -> dict[str, Any]:
    ledger = Ledger()
    for i in range(acked):
        seq = ledger.sent(i * MS, frozenset({1}))
        ledger.answered(seq, i * MS + 2 * MS)
        ledger.delivered(seq, 1, i * MS + 3 * MS)
    tally = ledger.close()
    return load_result(
        tally=tally,
        config={"procs": 1},
        measured_seconds=1.0,
        offered_per_s=rate,
        loadgen_cpu_seconds=0.001 * acked,
        servers=[
            server_cpu_entry(name=n, pid=1, cpu_seconds=0.1, acked=tally.acked) for n in ("a", "b")
        ],
        started_at="2026-01-01T00:00:00Z",
    )


def summary() -> dict[str, Any]:
    loads = [
        {"key": "w1", "name": "window 1", "kind": "window", "rate": None},
        {"key": "rate-100", "name": "offered 100/s", "kind": "rate", "rate": 100.0},
    ]
    idle = {"sockets": 1000, "alive_at_end": 1000, "memory_per_socket_bytes": 10240}
    return {
        "command": "python -m bench.run --quick",
        "finished_at": "2026-01-01 00:00 UTC",
        "machine": {"cpu": "cpu", "cores": 2, "memory": "24 GiB", "versions": "v"},
        "settings": {
            "users": 50,
            "devices": 1,
            "duration": 5.0,
            "warmup": 1.0,
            "procs": 1,
            "sweep_window": 16,
        },
        "loads": loads,
        "systems": [
            {
                "key": "reference",
                "name": "reference (Node.js)",
                "loads": {"w1": fake_result(200), "rate-100": fake_result(100, 100.0)},
                "idle": idle,
            },
            {
                "key": "project",
                "name": "project (Python)",
                "loads": {"w1": fake_result(300)},
                "failures": {"rate-100": "messaging bench exited with 1: refused", "idle": "x"},
                "idle": None,
            },
        ],
        "notes": ["a note"],
    }


def test_markdown_has_a_row_per_system_and_load_and_the_throughput_ratio() -> None:
    text = report.render_markdown(summary(), "results/plot.png")
    assert (
        "| reference (Node.js) | window 1 | 200 | 200 | 3.0 / 3.0 / 3.0 / 3.0 | 0 | 0 | 0 " in text
    )
    assert "| project (Python) | window 1 | 300 |" in text
    assert "| project (Python) | offered 100/s | failed: messaging bench exited with 1" in text
    assert "| project (Python) | failed: x |" in text
    assert "window 1: 1.50x" in text
    assert "| reference (Node.js) | 1,000 | 1,000 | 10.0 KiB |" in text
    assert "![throughput and p99 against offered load](results/plot.png)" in text
    assert "- a note" in text


def test_plot_is_written_when_there_is_a_sweep(tmp_path: Path) -> None:
    path = tmp_path / "plot.png"
    assert report.plot(summary(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_lines_name_the_figures_a_reader_looks_for() -> None:
    text = render_summary(fake_result(10))
    assert "acked/s 10" in text
    assert "p99 3.0" in text
    assert "lost 0  duplicated 0" in text
    assert "ms CPU per message" in text


def test_rewriting_the_report_keeps_what_was_written_by_hand_below_the_marker() -> None:
    previous = f"# old figures\n\n{report.HAND_WRITTEN_MARKER}\n\n## Group fan-out\n\nby hand\n"
    text = report.with_hand_written("# new figures\n", previous)
    assert text.startswith("# new figures\n")
    assert "old figures" not in text
    assert text.endswith(f"{report.HAND_WRITTEN_MARKER}\n\n## Group fan-out\n\nby hand\n")
    assert report.with_hand_written("# new\n", "# no marker\n") == "# new\n"
