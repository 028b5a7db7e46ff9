"""The `messaging` command: every subcommand starts, and bad configuration fails fast."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jwt

from messaging.db import head_revision


def messaging(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MESSAGING_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "messaging.cli", *args],
        capture_output=True, text=True, env=full_env, timeout=120, check=False,
    )  # fmt: skip


def test_token_mints_an_hs256_jwt_for_the_user() -> None:
    secret = "x" * 40
    done = messaging("token", "alice", "--ttl", "60", env={"MESSAGING_JWT_SECRET": secret})
    assert done.returncode == 0, done.stderr
    claims = jwt.decode(done.stdout.strip(), secret, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert claims["exp"] - claims["iat"] == 60


def test_migrate_reports_the_schema_version_and_writes_the_termination_message(
    tmp_path: Path,
) -> None:
    env = {
        "MESSAGING_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'm.db'}",
        "MESSAGING_TERMINATION_MESSAGE_PATH": str(tmp_path / "termination-log"),
    }
    first = messaging("migrate", env=env)
    again = messaging("migrate", env=env)
    assert first.returncode == 0, first.stderr
    assert again.returncode == 0, again.stderr
    head = head_revision()
    assert first.stdout.strip().splitlines()[-1] == f"schema_version={head}"
    assert (tmp_path / "termination-log").read_text() == head


def test_nonsense_configuration_stops_the_service_with_a_clear_message() -> None:
    done = messaging(
        "serve",
        env={"MESSAGING_MODE": "production", "MESSAGING_JWT_SECRET": "short",
             "MESSAGING_DATABASE_URL": "postgresql://db/m"},
    )  # fmt: skip
    assert done.returncode != 0
    assert "invalid configuration" in done.stderr
    assert "at least 32 bytes" in done.stderr
    assert "Traceback" not in done.stderr


def test_operator_and_bench_take_their_own_options() -> None:
    for command in ("operator", "bench"):
        done = messaging(command, "--help")
        assert done.returncode == 0, done.stderr
        assert f"messaging {command}" in done.stdout


def test_version_prints_the_release_and_exits_zero() -> None:
    from importlib.metadata import version  # noqa: PLC0415

    done = messaging("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"messaging {version('messaging-platform')} (python-socketio ")
