"""The ``messaging`` command: one entry point for the service, migrations, tools, operator."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from messaging.settings import Settings

TERMINATION_LOG = Path("/dev/termination-log")


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        lines = [
            f"  {'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}"
            for e in exc.errors()
        ]
        raise SystemExit(
            "invalid configuration (MESSAGING_* environment):\n" + "\n".join(lines)
        ) from None


def _logging(settings: Settings) -> None:
    from messaging.logs import configure_logging  # noqa: PLC0415 - keep `token` etc. fast

    configure_logging(
        settings.log_level,
        settings.effective_log_format,
        user_hash_key=settings.log_user_hash_secret.get_secret_value().encode(),
    )


def cmd_serve(_: argparse.Namespace) -> int:
    from messaging.serve import run  # noqa: PLC0415

    settings = _settings()
    _logging(settings)
    run(settings)
    return 0


def cmd_migrate(_: argparse.Namespace) -> int:
    from messaging.db import migrate  # noqa: PLC0415

    settings = _settings()
    _logging(settings)
    revision = migrate(settings)
    print(f"schema_version={revision}")
    # Kubernetes shows this file as the Job pod's termination message: the operator reads the
    # schema version from it.
    target = Path(os.environ.get("MESSAGING_TERMINATION_MESSAGE_PATH", TERMINATION_LOG))
    if target.parent.is_dir() and os.access(
        target.parent if not target.exists() else target, os.W_OK
    ):
        target.write_text(revision)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from messaging.auth import mint_token  # noqa: PLC0415

    print(mint_token(_settings(), args.user, ttl_seconds=args.ttl))
    return 0


def cmd_dev_connections(args: argparse.Namespace) -> int:
    from messaging.dev_connections import ConnectionGraph, start_connections_server  # noqa: PLC0415

    if args.all_connected:
        graph = ConnectionGraph(all_connected=True)
    elif args.file:
        graph = ConnectionGraph.from_file(Path(args.file))
    else:
        graph = ConnectionGraph.demo()

    async def serve() -> None:
        server, port = await start_connections_server(graph, host=args.host, port=args.port)
        print(f"dev Connections service on {args.host}:{port}", flush=True)
        await server.wait_for_termination()

    asyncio.run(serve())
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from messaging.dev import run_dev  # noqa: PLC0415

    return run_dev(port=args.port)


def run_operator(argv: list[str]) -> int:
    from messaging_operator.run import main  # noqa: PLC0415

    return int(main(argv))


def run_bench(argv: list[str]) -> int:
    from messaging.bench import main  # noqa: PLC0415

    return int(main(argv))


# Commands with their own argument parsers: everything after the name is theirs.
PASSTHROUGH = {"operator": run_operator, "bench": run_bench}


def version_text() -> str:
    """The release and the libraries that decide its protocols (what a bug report needs)."""
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    def of(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "unknown"

    libraries = ", ".join(f"{name} {of(name)}" for name in ("python-socketio", "grpcio"))
    python = ".".join(str(part) for part in sys.version_info[:3])
    return f"messaging {of('messaging-platform')} ({libraries}, Python {python})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="messaging",
        description="Direct messaging over Socket.IO and gRPC. Settings: MESSAGING_* variables.",
    )
    parser.add_argument("--version", action="version", version=version_text())
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("serve", help="run the service (HTTP + Socket.IO, and gRPC)").set_defaults(
        func=cmd_serve
    )
    sub.add_parser("migrate", help="bring the database schema up to date").set_defaults(
        func=cmd_migrate
    )

    token = sub.add_parser("token", help="mint an HS256 token for a user (development)")
    token.add_argument("user")
    token.add_argument("--ttl", type=int, default=24 * 3600, help="lifetime in seconds")
    token.set_defaults(func=cmd_token)

    conn = sub.add_parser("dev-connections", help="run a stand-in Connections gRPC service")
    conn.add_argument("--file", help="YAML with connections: [[a, b], ...] (default: demo users)")
    conn.add_argument("--all-connected", action="store_true", help="everyone is connected")
    conn.add_argument("--host", default="127.0.0.1")
    conn.add_argument("--port", type=int, default=50052)
    conn.set_defaults(func=cmd_dev_connections)

    dev = sub.add_parser("dev", help="everything on one machine: SQLite, no Redis, demo users")
    dev.add_argument("--port", type=int, default=8000)
    dev.set_defaults(func=cmd_dev)

    # Listed for --help only: main() hands their arguments over before parsing.
    sub.add_parser("operator", help="run the Kubernetes operator (`messaging operator --help`)")
    sub.add_parser("bench", help="load-test a deployment (`messaging bench --help`)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in PASSTHROUGH:
        return PASSTHROUGH[argv[0]](argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
