"""How a replica of ``messaging serve`` and the Connections stand-in are launched: one way for
the tests (`tests/support/replicas.py`) and the benchmarks (`bench/cluster.py`) alike.

The environment a replica gets (its settings as ``MESSAGING_*``, its name and loopback ports),
how it is spawned with its log, and how its readiness is waited for live here; what each
caller adds (the tests' fast heartbeats, the benchmarks' rate limits) stays with the caller.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from tests.support import servers
from tests.support.servers import REPO, Proc

SERVICE = [sys.executable, "-m", "messaging.cli"]
SERVE = [*SERVICE, "serve"]


def settings_env(settings: Mapping[str, str]) -> dict[str, str]:
    """Settings by field name (``drain_window_seconds``) as the service's environment."""
    return {f"MESSAGING_{key.upper()}": value for key, value in settings.items()}


def replica_env(name: str, http_port: int, grpc_port: int, metrics_port: int) -> dict[str, str]:
    """What tells one replica from its siblings: its id and its ports."""
    return {
        "MESSAGING_REPLICA_ID": name,
        "MESSAGING_HTTP_PORT": str(http_port),
        "MESSAGING_GRPC_PORT": str(grpc_port),
        "MESSAGING_METRICS_PORT": str(metrics_port),
    }


def spawn_replica(
    name: str, log_dir: Path, env: Mapping[str, str], argv: list[str] | None = None
) -> Proc:
    """Start ``messaging serve`` (or ``argv``) in a session of its own, its output appended to
    ``log_dir/name.log``."""
    return servers.spawn(name, argv or SERVE, log_dir, env=env, cwd=REPO)


def wait_ready(url: str, proc: Proc, timeout: float = 60.0) -> None:
    """Until ``url``/readyz answers 200; fails early, with the log, when ``proc`` exits."""
    servers.wait_until(
        functools.partial(servers.http_ok, f"{url}/readyz"),
        f"{proc.name} to be ready",
        proc,
        timeout=timeout,
    )


def start_connections(
    spawn: Callable[[str, list[str], Mapping[str, str]], Proc],
    name: str = "dev-connections",
    env: Mapping[str, str] | None = None,
) -> str:
    """The Connections stand-in (everyone connected) as a process started by ``spawn``, once it
    listens; returns its address."""
    port = servers.free_port()
    proc = spawn(
        name, [*SERVICE, "dev-connections", "--all-connected", "--port", str(port)], env or {}
    )
    servers.wait_until(lambda: servers.port_open(port), f"{name} to listen", proc)
    return f"{servers.LOOPBACK}:{port}"
