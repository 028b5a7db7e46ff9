"""Reading a server process's CPU and memory from /proc and from Prometheus text."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from messaging.bench import probes


def test_stat_parsing_survives_a_command_name_with_spaces_and_parentheses() -> None:
    fields = ["S", *["0"] * 10, "250", "150", *["0"] * 30]
    line = "1234 (odd (name) x) " + " ".join(fields)
    ticks = os.sysconf("SC_CLK_TCK")
    assert probes.parse_stat_cpu_seconds(line) == 400 / ticks


def test_cpu_seconds_of_a_live_process_grow_when_it_works() -> None:
    before = probes.cpu_seconds(os.getpid())
    assert before is not None
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    after = probes.cpu_seconds(os.getpid())
    assert after is not None
    assert after - before >= 0.2


def test_stat_parsing_counts_children_already_reaped() -> None:
    fields = ["S", *["0"] * 10, "250", "150", "30", "20", *["0"] * 30]
    line = "1234 (postgres) " + " ".join(fields)
    ticks = os.sysconf("SC_CLK_TCK")
    assert probes.parse_stat_cpu_seconds(line) == 450 / ticks


def test_cpu_of_a_child_that_worked_and_exited_still_counts() -> None:
    """PostgreSQL's backends come and go: a server's cost must not shrink when one exits."""
    work = "import time\nt = time.process_time() + 0.3\nwhile time.process_time() < t: pass"
    shell = subprocess.Popen(["/bin/sh", "-c", f'"{sys.executable}" -c "{work}"; exec sleep 30'])
    try:
        cmdline = Path(f"/proc/{shell.pid}/cmdline")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not cmdline.read_bytes().startswith(b"sleep"):
            time.sleep(0.05)  # the worker ran, was reaped, and the shell became `sleep`
        total = probes.cpu_seconds(shell.pid)
        assert total is not None
        assert total >= 0.2
    finally:
        shell.kill()
        shell.wait()


def test_a_vanished_process_reads_as_none() -> None:
    assert probes.cpu_seconds(2**22 + 12345) is None
    assert probes.rss_bytes(2**22 + 12345) is None


def test_rss_of_this_process_is_plausible() -> None:
    rss = probes.rss_bytes(os.getpid())
    assert rss is not None
    assert 5 * 1024 * 1024 < rss < 8 * 1024**3


def test_status_parsing_reads_vmrss_in_bytes() -> None:
    assert probes.parse_status_rss_bytes("Name:\tx\nVmRSS:\t  2048 kB\n") == 2048 * 1024
    assert probes.parse_status_rss_bytes("Name:\tx\n") is None


def test_metrics_parsing_finds_process_resident_memory() -> None:
    text = (
        b"# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
        b"# TYPE process_resident_memory_bytes gauge\n"
        b"process_resident_memory_bytes 1.234567e+08\n"
        b"process_virtual_memory_bytes 9e9\n"
    )
    assert probes.parse_metrics_rss_bytes(text) == 123456700
    assert probes.parse_metrics_rss_bytes(b"other 1\n") is None


def test_metrics_of_an_unreachable_replica_read_as_none() -> None:
    assert probes.metrics_rss_bytes("http://127.0.0.1:9/") is None
    assert probes.metrics_rss_bytes("ws://127.0.0.1:9/") is None
