"""The app factory: builds every part of the service once and wires them together.

``build_service`` constructs objects (no I/O); ``Service.start``/``Service.stop`` open and close
connections and background tasks, from the ASGI lifespan. The public ASGI app is python-socketio's
``ASGIApp`` with FastAPI (health, readiness) mounted behind it, so one port serves ``/socket.io``
and HTTP. ``/metrics`` is a second, small app for the metrics port, which the public Service does
not expose (it also answers ``/healthz`` and ``/readyz``, for probes that stay off the public
port).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import socketio
from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry  # the asyncio one: the sync Retry never retries a coroutine
from redis.backoff import ExponentialBackoff
from redis.driver_info import DriverInfo
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.types import ASGIApp

from messaging import admin_ui, db, metrics, tracing
from messaging.attachments import AttachmentRules, Attachments, limits_from
from messaging.auth import TokenVerifier
from messaging.backplane import Backplane
from messaging.blocking import Blocks
from messaging.chat import Chat
from messaging.connections import ClientTls, ConnectionsChecker
from messaging.conversation_cache import ConversationCache
from messaging.conversations import Conversations
from messaging.delivery import Delivery, Logged
from messaging.demo import add_demo_client
from messaging.errors import MessagingError
from messaging.groups import Groups
from messaging.grpc_api import GRPC_METHODS, GrpcServer, ServerTls
from messaging.message_changes import MessageChanges
from messaging.messages import Messages
from messaging.objectstore import (
    LOCAL_ROUTE,
    LocalObjectStore,
    ObjectStore,
    S3ObjectStore,
    content_disposition,
)
from messaging.outbox import Outbox
from messaging.presence import Presence
from messaging.publishing import Publisher
from messaging.ratelimit import RateLimiter
from messaging.read_replica import ReplicaReads
from messaging.receipts import Receipts
from messaging.records import MessageRecord
from messaging.redis_wire import RedisClient
from messaging.reports import Reports, reported_event
from messaging.settings import Settings
from messaging.sockets import SocketEvents, build_socket_server
from messaging.storage.reports import ReportRecord
from messaging.transactions import Database
from messaging.views import MessageViews
from messaging.webhooks import Dispatcher, Policy
from messaging.websocket_transport import packet_sender

log = logging.getLogger(__name__)

READINESS_INTERVAL_SECONDS = 1.0
CHECK_TIMEOUT_SECONDS = 1.0
# gRPC calls are short (a page of history); one still running after this is cancelled.
GRPC_STOP_GRACE_SECONDS = 2.0


# The background loops end at their next step once cancelled; one still running after this is
# left behind, so the clients and the database pool below still get closed before the deadline.
TASKS_STOP_SECONDS = 1.0


async def cancel_and_wait(
    tasks: Sequence[asyncio.Task[Any]], *, within: float
) -> list[asyncio.Task[Any]]:
    """Cancel ``tasks`` and wait for them to end, at most ``within`` seconds; those still running.

    A task that swallows its cancellation (see ``tests/unit/test_cancelled_loops_stop.py``) would
    otherwise hold the whole stop until the watchdog, skipping every close after it. How the
    others ended (cancelled, or an error of their own) does not matter at this point.
    """
    for task in tasks:
        task.cancel()
    if not tasks:
        return []
    done, pending = await asyncio.wait(tasks, timeout=within)
    for task in done:
        if not task.cancelled():
            task.exception()  # retrieved: asyncio would log it as never retrieved
    return [task for task in tasks if task in pending]


@dataclass
class Readiness:
    started: bool = False
    draining: bool = False
    database: bool = False
    redis: bool = True
    problems: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return self.started and not self.draining and self.database and self.redis


class Service:
    """Everything one process runs; built by ``build_service``, started by the lifespan."""

    def __init__(
        self,
        *,
        settings: Settings,
        verifier: TokenVerifier,
        chat: Chat,
        sockets: SocketEvents,
        presence: Presence,
        delivery: Delivery,
        connections: ConnectionsChecker,
        grpc: GrpcServer | None,
        redis: RedisClient | None,
        webhooks: Dispatcher | None = None,
        attachments: Attachments | None = None,
        replica: ReplicaReads | None = None,
        backplane: Backplane | None = None,
    ) -> None:
        self.settings = settings
        self.replica = replica
        self.webhooks = webhooks
        self.verifier = verifier
        self.chat = chat
        self.sockets = sockets
        self.presence = presence
        self.delivery = delivery
        self.connections = connections
        self.grpc = grpc
        self.redis = redis
        self.backplane = backplane
        self.attachments = attachments
        self.readiness = Readiness(redis=redis is None)
        self._engine = chat.engine
        self._tasks: list[asyncio.Task[None]] = []
        self.stopped = False  # stop() ran (or is running): it runs once

    async def start(self) -> None:
        metrics.prime(
            socket_events=self.sockets.events,
            grpc_methods=GRPC_METHODS if self.grpc is not None else [],
            rate_limits=(*self.settings.rate_limit_budgets, "in_flight"),
        )
        if self.settings.migrates_at_startup:
            await asyncio.to_thread(db.migrate, self.settings)
        db.observe_pool(self._engine, kept=lambda: self.chat.database.kept_connections)
        await db.open_pool(self._engine)
        if self.replica is not None:
            await db.open_pool(self.replica.engine)
        tracing.start(self.settings)
        await self.verifier.start()
        await self.connections.start()
        if self.attachments is not None:
            await self.attachments.store.start()
            self._spawn(self.attachments.run_sweeper(), "attachment-sweeper")
        self._spawn(
            self.sockets.expire_sessions(self.settings.session_sweep_seconds), "session-expiry"
        )
        self._spawn(self.delivery.run_healer(), "delivery-healer")
        if self.redis is not None:
            self._spawn(self.presence.run(), "presence")
        if self.backplane is not None:
            self._spawn(self.backplane.run_publisher(), "backplane-publisher")
            self._spawn(self.backplane.run_listener(), "backplane-listener")
        if self.webhooks is not None:
            self._spawn(self.webhooks.run(), "webhook-dispatcher")
        if self.grpc is not None:
            await self.grpc.start()
            log.info("gRPC listening", extra={"port": self.grpc.port})
        self.readiness.started = True
        await self.check_readiness()
        self._spawn(self._watch_readiness(), "readiness")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=name))

    async def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.readiness.draining = True
        if self.grpc is not None:
            await self.grpc.stop(
                grace_seconds=min(GRPC_STOP_GRACE_SECONDS, self.settings.shutdown_deadline_seconds)
            )
        for task in await cancel_and_wait(self._tasks, within=TASKS_STOP_SECONDS):
            log.warning("background task did not stop; leaving it", extra={"task": task.get_name()})
        await self.sockets.limiter.close()
        await self.presence.leave()
        await self.connections.close()
        if self.attachments is not None:
            await self.attachments.store.close()
        await self.verifier.close()
        if self.webhooks is not None:
            await self.webhooks.close()
        if self.redis is not None:
            with contextlib.suppress(RedisError, OSError):
                await self.redis.aclose()
        await self.chat.database.close()
        await self._engine.dispose()
        await asyncio.to_thread(tracing.stop)  # exports the spans still buffered
        if self.replica is not None:
            await self.replica.dispose()

    # --- readiness -----------------------------------------------------------------------------

    async def check_readiness(self) -> Readiness:
        problems = []
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
                await self.chat.database.ping_database()
            self.readiness.database = True
        except Exception as exc:  # whatever it is, the database did not answer: not ready
            self.readiness.database = False
            self.chat.database.database_ok = False
            problems.append(f"database: {exc if isinstance(exc, MessagingError) else repr(exc)}")
        if self.redis is not None:
            try:
                async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
                    await self.redis.ping()
                healthy = self.delivery.listener_healthy
                self.readiness.redis = healthy
                if not healthy:
                    problems.append("redis: backplane listener is resubscribing")
            except (RedisError, OSError, TimeoutError) as exc:
                self.readiness.redis = False
                problems.append(f"redis: {exc!r}")
        if self.readiness.draining:
            problems.append("draining")
        self.readiness.problems = problems
        await self._publish_readiness()
        return self.readiness

    async def _publish_readiness(self) -> None:
        ready = self.readiness.ready
        metrics.READY.set(1 if ready else 0)
        if self.grpc is not None:
            await self.grpc.set_serving(ready)

    async def _watch_readiness(self) -> None:
        while True:
            await asyncio.sleep(READINESS_INTERVAL_SECONDS)
            try:
                await self.check_readiness()
            except Exception:
                log.exception("readiness check failed")

    # --- draining ------------------------------------------------------------------------------

    async def drain(self) -> None:
        """Leave gracefully: unready at once, refuse new sockets, close the open ones gradually.

        Sockets are closed at the transport level, so the official clients' own reconnection
        takes them to another replica; spreading the closes over the drain window keeps a
        scale-down from stampeding the remaining replicas. Requests in flight finish and are
        acknowledged before this returns.
        """
        started = time.monotonic()
        self.readiness.draining = True
        self.sockets.accepting = False
        metrics.DRAINING.set(1)
        await self._publish_readiness()
        sids = self.sockets.connected_sids()
        random.shuffle(sids)
        window = self.settings.drain_window_seconds
        log.info("draining", extra={"sockets": len(sids), "window_seconds": window})
        # The first tenth of the window lets load balancers see the pod unready before its
        # clients start reconnecting; the rest spreads the reconnections evenly.
        quiet = window / 10
        for index, sid in enumerate(sids):
            due = started + quiet + (window - quiet) * index / max(1, len(sids))
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.sockets.close_transport(sid)
        await self.chat.wait_idle()
        log.info("drained", extra={"seconds": round(time.monotonic() - started, 3)})


def build_redis(settings: Settings) -> RedisClient | None:
    """The command client: one Redis, or a Redis Cluster reached through the URL's node."""
    if not settings.uses_redis:
        return None
    if settings.redis_cluster:
        return RedisCluster.from_url(settings.redis_url, **_redis_options(settings))
    return build_redis_node(settings)


def _redis_options(settings: Settings) -> dict[str, Any]:
    """What the cluster client and a node's client share: timeouts, retries, the client name."""
    return {
        "socket_timeout": 2.0,
        "socket_connect_timeout": 2.0,
        "socket_keepalive": True,
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=2),
        "client_name": f"messaging:{settings.replica_id}",
        "decode_responses": True,
        # Built once: left to redis-py, every new pooled connection reads the package's
        # metadata from disk (importlib.metadata) for CLIENT SETINFO, and a burst of handshakes
        # opens dozens of them. The same name and version are sent.
        "driver_info": DriverInfo(),
    }


def build_redis_node(settings: Settings) -> Redis:
    """A client of the URL's Redis (with a cluster: of its node; the backplane's wires borrow
    its settings, it is never connected then)."""
    return Redis.from_url(
        settings.redis_url,
        health_check_interval=10,
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        **_redis_options(settings),
    )


def build_backplane(settings: Settings, presence: Presence) -> Backplane | None:
    """The fan-out between replicas (None without Redis), on wires of its own."""
    if not settings.uses_redis:
        return None
    backplane = Backplane(
        build_redis_node(settings), replica_id=settings.replica_id, cluster=settings.redis_cluster
    )
    if settings.redis_cluster:
        backplane.on_subscribed(presence.rewrite_soon)
    return backplane


def build_connections(settings: Settings) -> ConnectionsChecker:
    """The client of the Connections service (TLS when a CA file is set)."""
    tls = None
    if settings.connections_tls_ca_file is not None:
        tls = ClientTls(
            ca_file=settings.connections_tls_ca_file,
            cert_file=settings.connections_tls_cert_file,
            key_file=settings.connections_tls_key_file,
        )
    return ConnectionsChecker(
        address=settings.connections_address,
        timeout_seconds=settings.connections_timeout_seconds,
        cache_ttl_seconds=settings.connections_cache_ttl_seconds,
        cache_size=settings.connections_cache_size,
        tls=tls,
    )


def build_database(settings: Settings) -> Database:
    """The rules' database: the primary, and the read replica when one is configured."""
    engine = db.create_engine(settings)
    read_engine = db.create_read_engine(settings)
    replica = None
    if read_engine is not None:
        replica = ReplicaReads(
            replica=read_engine, max_wait_seconds=settings.database_read_max_wait_ms / 1000
        )
    return Database(engine, replica=replica, keep_connections=settings.database_pool_size)


def build_object_store(settings: Settings) -> ObjectStore | None:
    """The attachment store the settings name (no I/O: opened in ``Service.start``)."""
    backend = settings.effective_attachments_backend
    if backend == "s3":
        return S3ObjectStore(
            bucket=settings.s3_bucket,
            region=settings.s3_region,
            endpoint_url=settings.s3_endpoint_url,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=settings.s3_secret_access_key.get_secret_value(),
            path_style=settings.s3_path_style,
            public_url=settings.s3_public_url,
        )
    if backend == "local":
        base_url = settings.attachments_public_url or (
            f"http://{settings.http_host}:{settings.http_port}"
        )
        return LocalObjectStore(
            root=settings.attachments_dir, base_url=base_url, secret=settings.attachments_key
        )
    return None


def build_attachments(settings: Settings, database: Database) -> Attachments | None:
    """Attachments over the configured store (None: attachments are off); the sweeper and the
    purge after a deletion read and commit on the database's own connections."""
    store = build_object_store(settings)
    if store is None:
        return None
    return Attachments(store=store, limits=limits_from(settings), connection=database.connection)


def build_reports(database: Database, events: Outbox) -> Reports:
    """``reportMessage``: the report and its ``message.reported`` event commit together."""

    async def report_event(
        conn: AsyncConnection, report: ReportRecord, message: MessageRecord
    ) -> None:
        await events.record(
            conn, "message.reported", reported_event(report, message), at=report.created_at
        )

    return Reports(transaction=database.transaction, on_reported=report_event)


def build_grpc(
    settings: Settings, *, chat: Chat, changes: MessageChanges, verifier: TokenVerifier
) -> GrpcServer | None:
    """The gRPC server when it is enabled (TLS when a certificate and key are set)."""
    if not settings.grpc_enabled:
        return None
    tls = None
    if settings.grpc_tls_cert_file is not None and settings.grpc_tls_key_file is not None:
        tls = ServerTls(
            cert_file=settings.grpc_tls_cert_file,
            key_file=settings.grpc_tls_key_file,
            client_ca_file=settings.grpc_tls_client_ca_file,
        )
    return GrpcServer(
        chat=chat,
        changes=changes,
        verifier=verifier,
        host=settings.grpc_host,
        port=settings.grpc_port,
        tls=tls,
    )


def build_service(settings: Settings) -> Service:
    """Construct the whole service (no I/O happens here)."""
    database = build_database(settings)
    redis = build_redis(settings)
    server = build_socket_server(settings)
    verifier = TokenVerifier(settings)
    presence = Presence(
        replica_id=settings.replica_id,
        redis=redis,
        heartbeat_seconds=settings.redis_heartbeat_seconds,
        replica_ttl_seconds=settings.redis_replica_ttl_seconds,
    )
    backplane = build_backplane(settings, presence)
    delivery = Delivery(
        server,
        replica_id=settings.replica_id,
        backplane=backplane,
        send=packet_sender(server.eio),
        check_seconds=settings.delivery_check_seconds,
    )
    connections = build_connections(settings)
    events = Outbox.from_settings(settings)
    blocks = Blocks(
        database=database,
        delivery=delivery,
        replica_id=settings.replica_id,
        cache_ttl_seconds=settings.blocks_cache_ttl_seconds,
        cache_size=settings.blocks_cache_size,
        max_blocked=settings.max_blocked_per_user,
        invalidation_timeout_seconds=settings.blocks_invalidation_timeout_seconds,
    )
    # The rules' domain events, encoded for Socket.IO and fanned out (publishing.py).
    publisher = Publisher(delivery=delivery, cursor_key=settings.cursor_key)
    attachments = build_attachments(settings, database)
    # A block either way keeps a user out of a group; group rules run in the same transactions.
    groups = Groups(
        database=database,
        connections=connections,
        publisher=publisher,
        blocked=blocks.either_blocks,
        max_members=settings.group_max_members,
        events=events,
    )
    views = MessageViews(attachments=attachments)
    conversations = Conversations(
        database=database,
        connections=connections,
        blocks=blocks,
        groups=groups,
        presence=presence,
        publisher=publisher,
        views=views,
        cache=ConversationCache(),
        cursor_key=settings.cursor_key,
        events=events,
    )
    attachment_rules = AttachmentRules(
        attachments=attachments, database=database, participant=conversations.conversation_for
    )
    messages = Messages(
        database=database,
        conversations=conversations,
        groups=groups,
        connections=connections,
        blocks=blocks,
        publisher=publisher,
        views=views,
        cursor_key=settings.cursor_key,
        attachments=attachment_rules,
        events=events,
    )
    chat = Chat(
        database=database,
        conversations=conversations,
        messages=messages,
        attachments=attachment_rules,
        views=views,
        groups=groups,
        receipts=Receipts(database=database),
        blocks=blocks,
        outbox=events,
    )

    reports = build_reports(database, events)
    webhooks = None
    if events.enabled:
        webhooks = Dispatcher(
            engine=database.engine, outbox=events, policy=Policy.from_settings(settings)
        )

    async def log_events(user_id: str, after: int) -> list[Logged]:
        return publisher.encode(await messages.log_events(user_id, after))

    delivery.use_log(heads=messages.log_heads, events=log_events)
    changes = MessageChanges(chat=chat, edit_window_seconds=settings.edit_window_seconds)
    limiter = RateLimiter(
        settings.rate_limit_budgets,
        redis=redis,
        enabled=settings.rate_limits_enabled,
        max_in_flight=settings.max_sends_in_flight_per_user,
    )
    sockets = SocketEvents(
        verifier=verifier,
        chat=chat,
        changes=changes,
        presence=presence,
        delivery=delivery,
        server=server,
        limiter=limiter,
        max_sockets_per_user=settings.max_sockets_per_user,
        blocks=blocks,
        reports=reports,
    )
    admin_ui.instrument(server, settings)
    grpc = build_grpc(settings, chat=chat, changes=changes, verifier=verifier)
    return Service(
        settings=settings,
        verifier=verifier,
        chat=chat,
        sockets=sockets,
        presence=presence,
        delivery=delivery,
        connections=connections,
        grpc=grpc,
        redis=redis,
        webhooks=webhooks,
        attachments=attachments,
        replica=database.replica,
        backplane=backplane,
    )


def create_app(
    settings: Settings | None = None,
    service: Service | None = None,
    *,
    before_start: Callable[[], Awaitable[None]] | None = None,
) -> ASGIApp:
    """The public ASGI app: Socket.IO at /socket.io, and /healthz, /readyz."""
    settings = settings or Settings()
    service = service or build_service(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if before_start is not None:
            await before_start()
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    api = FastAPI(title="messaging", lifespan=lifespan, docs_url=None, redoc_url=None)
    api.state.service = service
    _add_probes(api, service)
    if service.attachments is not None and isinstance(service.attachments.store, LocalObjectStore):
        _add_local_attachment_routes(api, service.attachments.store)
    add_demo_client(api, settings)
    if settings.cors_any_origin:
        # Any origin, but never with credentials: a browser would otherwise send cookies
        # from every site it visits.
        api.add_middleware(
            CORSMiddleware,
            allow_origins=["*"],
            allow_credentials=False,
            allow_methods=["GET", "PUT"],
            allow_headers=["Content-Type"],
        )
    elif settings.cors_allowed_origins:
        api.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_allowed_origins, allow_credentials=True
        )

    app: ASGIApp = socketio.ASGIApp(service.sockets.server, other_asgi_app=api)
    return app


def create_metrics_app(service: Service) -> ASGIApp:
    """The metrics port's app: /metrics, and the probes again. No lifespan: the public app's
    lifespan runs the service; this one only reads it."""
    api = FastAPI(title="messaging-metrics", docs_url=None, redoc_url=None, openapi_url=None)
    _add_probes(api, service)

    @api.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return api


def _add_probes(api: FastAPI, service: Service) -> None:
    @api.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Alive: the event loop answers. Never checks dependencies (that is /readyz)."""
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(response: Response) -> dict[str, Any]:
        """Ready for traffic: database and Redis reachable, and not draining."""
        state = service.readiness
        ready = state.ready and service.chat.database.database_ok
        if not ready:
            response.status_code = 503
        problems = state.problems
        if state.ready and not ready:
            problems = ["database: a request just found it unavailable"]
        return {"ready": ready, "problems": problems}


def _add_local_attachment_routes(api: FastAPI, store: LocalObjectStore) -> None:
    """The local store's upload (PUT) and download (GET) links: what an S3 bucket would serve.

    Only a link signed by this service works (``LocalObjectStore.verify``); errors are S3-like
    plain statuses (403 for a bad or expired link, 404 for a missing object).
    """

    @api.put(f"{LOCAL_ROUTE}/{{key:path}}")
    async def upload(key: str, request: Request) -> Response:
        try:
            await store.receive(
                key,
                dict(request.query_params),
                content_type=request.headers.get("content-type"),
                body=request.stream(),
            )
        except MessagingError as exc:
            return JSONResponse(exc.to_ack()["error"], status_code=exc.http_status)
        return Response(status_code=200)

    @api.get(f"{LOCAL_ROUTE}/{{key:path}}")
    async def download(key: str, request: Request) -> Response:
        try:
            found = store.download(key, dict(request.query_params))
        except MessagingError as exc:
            return JSONResponse(exc.to_ack()["error"], status_code=exc.http_status)
        if not await asyncio.to_thread(found.path.is_file):
            return JSONResponse({"code": "NOT_FOUND", "message": "no such object"}, 404)
        return FileResponse(
            found.path,
            media_type=found.content_type,
            headers={"Content-Disposition": content_disposition(found.file_name)},
        )
