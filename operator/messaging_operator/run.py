"""`messaging operator`: run the MessagingCluster operator embedded, with explicit kopf objects.

Everything kopf needs (registry, settings, memo) is built here, at start-up, from arguments and
environment variables; nothing is registered at import time. Options:

  --namespace NS (repeatable; or MESSAGING_OPERATOR_NAMESPACES / WATCH_NAMESPACE, comma-separated)
  --all-namespaces (the default when no namespace is given)
  --metrics-port (MESSAGING_OPERATOR_METRICS_PORT, default 8080; 0 turns it off)
  --liveness URL (MESSAGING_OPERATOR_LIVENESS, e.g. http://0.0.0.0:8081/healthz)
  --resync-seconds, --autoscale-seconds, --pod-metrics-port, --peering NAME, --log-format, -v
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from typing import Any

import aiohttp
import kopf

from messaging_operator import autoscale, reconcile
from messaging_operator.kube import KubeClient, login
from messaging_operator.reconcile import OperatorConfig, Runtime
from messaging_operator.spec import GROUP, MANAGED_BY

ENV_PREFIX = "MESSAGING_OPERATOR_"


def _env(name: str, default: str = "") -> str:
    return os.environ.get(ENV_PREFIX + name, default)


def _namespaces_from_env() -> list[str]:
    raw = _env("NAMESPACES") or os.environ.get("WATCH_NAMESPACE", "")
    return [ns.strip() for ns in raw.split(",") if ns.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="messaging operator", description="Reconcile MessagingCluster resources."
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        dest="namespaces",
        default=None,
        help="watch this namespace (repeatable); default: MESSAGING_OPERATOR_NAMESPACES",
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(_env("METRICS_PORT", "8080")),
        help="port of the operator's /metrics (0: off)",
    )
    parser.add_argument(
        "--liveness",
        default=_env("LIVENESS") or None,
        help="kopf liveness endpoint, e.g. http://0.0.0.0:8081/healthz",
    )
    parser.add_argument(
        "--resync-seconds",
        type=float,
        default=float(_env("RESYNC_SECONDS", "30")),
        help="how often every cluster is reconciled even without events",
    )
    parser.add_argument(
        "--autoscale-seconds",
        type=float,
        default=float(_env("AUTOSCALE_SECONDS", "15")),
        help="how often the autoscaler reads the pods' metrics (the HPA's sync period)",
    )
    parser.add_argument(
        "--pod-metrics-port",
        type=int,
        default=int(_env("POD_METRICS_PORT", "8000")),
        help="the messaging pods' HTTP port serving /metrics",
    )
    parser.add_argument(
        "--standalone",
        action="store_true",
        default=True,
        help="run without peering (the default: the operator runs as one replica)",
    )
    parser.add_argument(
        "--peering",
        default=_env("PEERING") or None,
        help="use kopf peering with this name instead of running standalone",
    )
    parser.add_argument(
        "--log-format",
        choices=("json", "plain", "full"),
        default=_env("LOG_FORMAT", "full"),
    )
    parser.add_argument("-v", "--verbose", action="store_true", default=bool(_env("VERBOSE")))
    argv = list(argv) if argv is not None else None
    if argv and argv[0] == "--":
        argv = argv[1:]  # `messaging operator -- --all-namespaces` passes the separator on
    args = parser.parse_args(argv)
    if not args.all_namespaces and not args.namespaces:
        args.namespaces = _namespaces_from_env()
    args.clusterwide = args.all_namespaces or not args.namespaces
    return args


def build_settings(args: argparse.Namespace) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # kopf's bookkeeping goes into annotations under our own domain, so the CRD's status schema
    # stays fully structural and `kubectl get -o yaml` shows nothing but the operator's status.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/operator"
    # No cluster-wide listing of namespaces or CRDs: the RBAC stays minimal, and the CRD is
    # installed before the operator starts (Helm's crds/ directory guarantees that).
    settings.scanning.disabled = True
    settings.posting.reporting_component = MANAGED_BY
    settings.posting.level = logging.WARNING  # our own Events tell the story; no log echo
    settings.posting.default_backoffs = (0.5, 1, 2)  # Events are auxiliary: never queue up
    # Timers finish their pass and exit on their own: look again soon, so deleting a cluster
    # is not held for kopf's default minute.
    settings.background.cancellation_polling = 2.0
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    if args.peering:
        settings.peering.name = args.peering
    return settings


async def on_startup(
    memo: Runtime, logger: kopf.Logger, settings: kopf.OperatorSettings, **_: Any
) -> None:
    """Open the shared clients once; every handler finds them in its memo."""
    memo.clients["api"] = await KubeClient.connect(lambda: login(logger, settings))
    memo.clients["http"] = aiohttp.ClientSession()


async def on_cleanup(memo: Runtime, **_: Any) -> None:
    for key in ("api", "http"):
        client = memo.clients.pop(key, None)
        if client is not None:
            await client.close()


def build_registry(config: OperatorConfig) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    kopf.on.login(registry=registry)(kopf.login_via_client)
    kopf.on.startup(registry=registry)(on_startup)
    kopf.on.cleanup(registry=registry)(on_cleanup)
    reconcile.register(registry, config)
    autoscale.register(registry, config)
    return registry


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    log_format = {
        "json": kopf.LogFormat.JSON,
        "plain": kopf.LogFormat.PLAIN,
        "full": kopf.LogFormat.FULL,
    }[args.log_format]
    kopf.configure(verbose=args.verbose, log_format=log_format)
    config = OperatorConfig(
        resync_seconds=args.resync_seconds,
        autoscale_seconds=args.autoscale_seconds,
        pod_metrics_port=args.pod_metrics_port,
    )
    memo = Runtime(config=config)
    server = memo.metrics.serve(args.metrics_port) if args.metrics_port else None
    try:
        kopf.run(
            registry=build_registry(config),
            settings=build_settings(args),
            memo=memo,
            standalone=not args.peering,
            clusterwide=args.clusterwide,
            namespaces=[] if args.clusterwide else args.namespaces,
            liveness_endpoint=args.liveness,
        )
    finally:
        if server is not None:
            server[0].shutdown()
            server[0].server_close()
    return 0
