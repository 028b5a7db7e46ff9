"""`messaging operator`: run the MessagingCluster operator embedded, with explicit kopf objects.

Everything kopf needs (registry, settings, memo) is built here, at start-up, from arguments and
environment variables; nothing is registered at import time. Options:

  --namespace NS (repeatable; or MESSAGING_OPERATOR_NAMESPACES / WATCH_NAMESPACE, comma-separated)
  --all-namespaces (the default when no namespace is given)
  --metrics-port (MESSAGING_OPERATOR_METRICS_PORT, default 8080; 0 turns it off)
  --liveness URL (MESSAGING_OPERATOR_LIVENESS, e.g. http://0.0.0.0:8081/healthz)
  --resync-seconds, --recheck-seconds, --autoscale-seconds, --pod-metrics-port, --log-format, -v
  --leader-election / --no-leader-election, --lease-name, --lease-namespace, --lease-seconds,
  --renew-deadline-seconds, --retry-seconds (a coordination.k8s.io Lease: one replica acts,
  the others wait as standbys)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import aiohttp.web
import kopf

from messaging_operator import autoscale, handlers
from messaging_operator.kube import KubeClient, login
from messaging_operator.leadership import LeaderElection, LostLeadershipError
from messaging_operator.memo import OperatorConfig, Runtime
from messaging_operator.spec import GROUP, MANAGED_BY

log = logging.getLogger(__name__)
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

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
        default=float(_env("RESYNC_SECONDS", "300")),
        help="how often every cluster gets a full pass even without events",
    )
    parser.add_argument(
        "--recheck-seconds",
        type=float,
        default=float(_env("RECHECK_SECONDS", "5")),
        help="how often a cluster waiting on a Secret (which is not watched) looks again",
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
        default=int(_env("POD_METRICS_PORT", "0")),
        help="the port of the messaging pods' /metrics; 0: each cluster's spec.service.metricsPort",
    )
    parser.add_argument(
        "--leader-election",
        action=argparse.BooleanOptionalAction,
        default=_env("LEADER_ELECTION", "true").lower() not in ("0", "false", "no"),
        help="act only while holding a coordination.k8s.io Lease (default: on)",
    )
    parser.add_argument("--lease-name", default=_env("LEASE_NAME", "messaging-operator"))
    parser.add_argument(
        "--lease-namespace",
        default=_env("LEASE_NAMESPACE") or os.environ.get("POD_NAMESPACE") or None,
        help="namespace of the Lease (default: the pod's own namespace)",
    )
    parser.add_argument("--lease-seconds", type=float, default=float(_env("LEASE_SECONDS", "30")))
    parser.add_argument(
        "--renew-deadline-seconds",
        type=float,
        default=float(_env("RENEW_DEADLINE_SECONDS", "20")),
    )
    parser.add_argument("--retry-seconds", type=float, default=float(_env("RETRY_SECONDS", "5")))
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
    handlers.label_selectors(settings)
    # One operator acts at a time through the Lease (run.py), so kopf's peering stays off.
    settings.peering.standalone = True
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
    handlers.register(registry, config)
    autoscale.register(registry, config)
    return registry


def _lease_namespace(args: argparse.Namespace) -> str:
    if args.lease_namespace:
        return str(args.lease_namespace)
    if SERVICE_ACCOUNT_NAMESPACE.exists():
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    raise SystemExit("leader election needs --lease-namespace (or POD_NAMESPACE)")


@contextlib.asynccontextmanager
async def standby_liveness(url: str | None) -> AsyncIterator[None]:
    """While waiting for the Lease, answer the liveness probe (kopf serves it once leading)."""
    if not url:
        yield
        return
    parts = urlsplit(url)

    async def alive(_: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response({"standby": True})

    app = aiohttp.web.Application()
    app.router.add_get(parts.path or "/", alive)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, parts.hostname, parts.port, reuse_address=True)
    await site.start()
    try:
        yield
    finally:
        await runner.cleanup()


async def run_elected(
    args: argparse.Namespace, settings: kopf.OperatorSettings, memo: Runtime, config: OperatorConfig
) -> int:
    """Wait for the Lease, then run kopf while renewing it; losing it stops everything."""
    # Its own client: the handlers' one is closed by kopf's cleanup before the Lease is released.
    api = await KubeClient.connect(lambda: login(kopf_logger, settings))
    identity = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    election = LeaderElection(
        api,
        namespace=_lease_namespace(args),
        name=args.lease_name,
        identity=identity,
        lease_seconds=args.lease_seconds,
        renew_deadline_seconds=args.renew_deadline_seconds,
        retry_seconds=args.retry_seconds,
    )
    async with standby_liveness(args.liveness):
        await election.acquire()
    operator = asyncio.create_task(
        kopf.operator(
            registry=build_registry(config),
            settings=settings,
            memo=memo,
            standalone=True,
            clusterwide=args.clusterwide,
            namespaces=[] if args.clusterwide else args.namespaces,
            liveness_endpoint=args.liveness,
        )
    )
    keeper = asyncio.create_task(election.keep())
    done, _ = await asyncio.wait({operator, keeper}, return_when=asyncio.FIRST_COMPLETED)
    if keeper in done:
        operator.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await operator
        try:
            keeper.result()
        except LostLeadershipError as e:
            log.error("%s: exiting so that only the new leader acts", e)
        return 1
    keeper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await keeper
    await election.release()
    await api.close()
    operator.result()
    return 0


kopf_logger = logging.getLogger("messaging_operator.login")


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
        recheck_seconds=args.recheck_seconds,
        autoscale_seconds=args.autoscale_seconds,
        pod_metrics_port=args.pod_metrics_port,
    )
    memo = Runtime(config=config)
    server = memo.metrics.serve(args.metrics_port) if args.metrics_port else None
    settings = build_settings(args)
    try:
        if args.leader_election:
            return asyncio.run(run_elected(args, settings, memo, config))
        kopf.run(
            registry=build_registry(config),
            settings=settings,
            memo=memo,
            standalone=True,
            clusterwide=args.clusterwide,
            namespaces=[] if args.clusterwide else args.namespaces,
            liveness_endpoint=args.liveness,
        )
    finally:
        if server is not None:
            server[0].shutdown()
            server[0].server_close()
        sys.stdout.flush()
    return 0
