"""Reading what a server process costs: CPU time from /proc, memory from /proc or /metrics.

CPU is read for a process and all its descendants (a server may fork workers), so a replica's
cost is counted whole whatever its process model.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from pathlib import Path

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_RSS_METRIC = re.compile(
    rb"^process_resident_memory_bytes(?:\{[^}]*\})?\s+([0-9.eE+-]+)\s*$", re.MULTILINE
)


def parse_stat_cpu_seconds(stat_line: str) -> float:
    """CPU of one /proc/<pid>/stat line, in seconds: its own, and that of its children that
    have exited and been waited for (PostgreSQL's backends come and go; without them, a server's
    cost would shrink whenever one exits)."""
    # The command name (field 2) may contain spaces and parentheses: split after the last ")".
    fields = stat_line[stat_line.rindex(")") + 2 :].split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return (utime + stime + cutime + cstime) / _CLOCK_TICKS


def descendants(pid: int, proc: Path = Path("/proc")) -> list[int]:
    """``pid`` and every process below it, found through /proc/<pid>/task/*/children."""
    found = [pid]
    queue = [pid]
    while queue:
        current = queue.pop()
        for task in (proc / str(current) / "task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in found:
                    found.append(child)
                    queue.append(child)
    return found


def cpu_seconds(pid: int, proc: Path = Path("/proc")) -> float | None:
    """CPU used so far by ``pid`` and its descendants, living or reaped; None if the process is
    gone."""
    total = 0.0
    pids = descendants(pid, proc)
    for member in pids:
        try:
            total += parse_stat_cpu_seconds((proc / str(member) / "stat").read_text())
        except (OSError, ValueError):
            if member == pid:
                return None
    return total


def parse_status_rss_bytes(status: str) -> int | None:
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            value, unit = line.split()[1:3]
            if unit.lower() != "kb":
                raise ValueError(f"unexpected VmRSS unit {unit!r}")
            return int(value) * 1024
    return None


def rss_bytes(pid: int, proc: Path = Path("/proc")) -> int | None:
    """Resident memory of ``pid`` and its descendants; None if the process is gone."""
    total = 0
    for member in descendants(pid, proc):
        try:
            rss = parse_status_rss_bytes((proc / str(member) / "status").read_text())
        except OSError:
            if member == pid:
                return None
            continue
        total += rss or 0
    return total


def parse_metrics_rss_bytes(text: bytes) -> int | None:
    match = _RSS_METRIC.search(text)
    return None if match is None else int(float(match.group(1)))


def metrics_rss_bytes(base_url: str, timeout: float = 5.0) -> int | None:
    """``process_resident_memory_bytes`` from the replica's /metrics; None when it has none."""
    if not base_url.startswith(("http://", "https://")):
        return None
    url = base_url.rstrip("/") + "/metrics"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http(s) only
            return parse_metrics_rss_bytes(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
