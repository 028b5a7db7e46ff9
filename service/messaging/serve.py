"""Running the service as a process: uvicorn, and what SIGTERM means.

uvicorn's own SIGTERM handling closes the listening socket at once, so a pod would vanish from
under its clients and its readiness probe at the same moment. Here SIGTERM starts the service's
drain first (readiness false, new sockets refused, open ones closed gradually, in-flight requests
answered) and only then lets uvicorn stop. A watchdog ends the process at the shutdown deadline
whatever happens, so it always exits before Kubernetes' terminationGracePeriodSeconds.

A second, small uvicorn server in the same event loop serves ``/metrics`` (and the probes) on the
metrics port. It has no signal handling and no lifespan of its own: its port is bound before
anything starts (a taken port is a start-up error), it serves once the public server is up, keeps
answering while the service drains (the operator and Prometheus still read it), and stops when
the public server has stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from types import FrameType

import uvicorn

from messaging.app import Service, build_service, create_app, create_metrics_app
from messaging.settings import Settings

log = logging.getLogger(__name__)
GC_YOUNG_THRESHOLD = 20_000  # Python's default is 700 (see run())
# What the service's stop needs after the drain: uvicorn closing connections, gRPC's grace
# (app.GRPC_STOP_GRACE_SECONDS), the clients of Redis, PostgreSQL and the rest.
STOP_RESERVE_SECONDS = 4.0


class _DrainingServer(uvicorn.Server):
    """uvicorn, except that the first SIGTERM/SIGINT drains before stopping."""

    def __init__(
        self,
        config: uvicorn.Config,
        service: Service,
        metrics: uvicorn.Config,
        metrics_socket: socket.socket,
    ) -> None:
        super().__init__(config)
        self._service = service
        self._metrics = _SideServer(metrics)
        self._metrics_socket = metrics_socket
        self._metrics_task: asyncio.Task[None] | None = None
        self._drain: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        try:
            await super().serve(sockets)  # type: ignore[arg-type]
        finally:
            if self._metrics_task is not None:
                self._metrics.should_exit = True
                await self._metrics_task
            if self._drain is not None and not self._service.stopped:
                # Forced, uvicorn skips the lifespan's shutdown; left running, the gRPC server
                # crashes the interpreter on its way out (SIGSEGV). The watchdog still bounds it.
                await self._service.stop()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.should_exit:
            return
        # After the public server, so "Uvicorn running on" first names the public port; the
        # metrics socket was bound before anything started, so this cannot fail on the port.
        self._metrics_task = asyncio.create_task(
            self._metrics.serve(sockets=[self._metrics_socket]), name="metrics-server"
        )
        # uvicorn only exposes a flag for "started".
        while not self._metrics.started and not self._metrics_task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain is not None or self._loop is None:
            # A second signal, or one before start-up finished: stop now.
            self.should_exit = True
            if sig == signal.SIGINT and self._drain is not None:
                self.force_exit = True
            return
        # A fresh context: the signal interrupts whatever request was running, and the drain
        # must not inherit (and log under) that request's context.
        self._loop.call_soon_threadsafe(self._start_drain, context=contextvars.Context())

    def _start_drain(self) -> None:
        settings = self._service.settings
        deadline = settings.shutdown_deadline_seconds
        started = time.monotonic()
        assert self._loop is not None
        # Past the deadline, stop waiting for connections; a moment later, leave regardless.
        self._loop.call_later(max(0.0, deadline - 1.0), self._force)
        self._loop.call_later(deadline, _hard_exit)
        limit = drain_time_limit(settings.drain_window_seconds, deadline)
        self._drain = asyncio.ensure_future(self._drain_then_exit(started, limit))

    async def _drain_then_exit(self, started: float, limit: float) -> None:
        try:
            async with asyncio.timeout(limit):
                await self._service.drain()
        except TimeoutError:
            # The service's own stop (gRPC's grace, closing its clients) still gets its time.
            log.warning("drain overran its time; stopping anyway", extra={"limit_seconds": limit})
        except Exception:
            log.exception("drain failed; stopping anyway")
        log.info("stopping", extra={"after_seconds": round(time.monotonic() - started, 3)})
        self.should_exit = True

    def _force(self) -> None:
        log.warning("shutdown deadline near; forcing exit")
        self.should_exit = True
        self.force_exit = True


def drain_time_limit(window: float, deadline: float) -> float:
    """How long the drain may take before the process stops anyway.

    Whatever the drain waits for (a close, a commit), the service's own stop must still run
    before the deadline: stopped by the watchdog instead, the process leaves without closing its
    gRPC server and database pool. The drain gets what is left after that stop's reserve, never
    less than its window (the gradual closes need it), and never past the watchdog's force.
    """
    return max(0.0, min(deadline - 1.0, max(window, deadline - STOP_RESERVE_SECONDS)))


class _SideServer(uvicorn.Server):
    """A uvicorn server that leaves the process's signals to the public server."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _hard_exit() -> None:
    logging.getLogger(__name__).error("shutdown deadline reached; exiting")
    logging.shutdown()
    os._exit(0)


def _loop_kind() -> str:
    try:
        import uvloop  # noqa: F401, PLC0415 - only probing whether it is installed
    except ImportError:
        return "asyncio"
    return "uvloop"


def bind_metrics_socket(settings: Settings) -> socket.socket:
    """The metrics port, bound before anything starts: a taken port stops start-up right away."""
    host, port = settings.effective_metrics_host, settings.metrics_port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT only, not sharing
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(
            f"cannot listen for metrics on {host}:{port}: {exc.strerror or exc} "
            "(address already in use? set MESSAGING_METRICS_PORT)"
        ) from exc
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


class _WithoutQueryStrings(logging.Filter):
    """Cuts query strings out of uvicorn's log lines: a client may put its token in the URL.

    uvicorn logs every websocket handshake with its path and query string (and HTTP requests,
    were the access log on); the path stays, everything from ``?`` on is replaced.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(
            isinstance(arg, str) and "?" in arg for arg in record.args
        ):
            record.args = tuple(
                arg.split("?", 1)[0] + "?..." if isinstance(arg, str) and "?" in arg else arg
                for arg in record.args
            )
        if "?" in str(record.msg) and not record.args:
            record.msg = str(record.msg).split("?", 1)[0] + "?..."
        return True


def redact_uvicorn_logs() -> None:
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _WithoutQueryStrings) for f in logger.filters):
            logger.addFilter(_WithoutQueryStrings())


def run(settings: Settings, *, before_start: Callable[[], Awaitable[None]] | None = None) -> None:
    metrics_socket = bind_metrics_socket(settings)
    service = build_service(settings)
    redact_uvicorn_logs()
    config = uvicorn.Config(
        create_app(settings, service, before_start=before_start),
        host=settings.http_host,
        port=settings.http_port,
        loop=_loop_kind(),
        # Measured on the send path (BENCHMARKS.md): websockets-sansio costs no more CPU per
        # message than "websockets" or "wsproto" and less memory per idle socket; the HTTP
        # implementation only serves handshakes and long-polling.
        ws="websockets-sansio",
        http="httptools",
        lifespan="on",
        log_config=None,
        access_log=False,
        ws_max_size=settings.max_payload_bytes,
        # Compressing every frame costs more CPU than anything else on the send path and a
        # compression context per connection; Socket.IO's own servers ship with it off too.
        ws_per_message_deflate=False,
        ws_ping_interval=None,  # Engine.IO runs its own heartbeat
        timeout_graceful_shutdown=2,
    )
    metrics = uvicorn.Config(
        create_metrics_app(service),
        host=settings.effective_metrics_host,
        port=settings.metrics_port,
        loop=_loop_kind(),
        http="httptools",
        lifespan="off",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=1,
    )
    # The cyclic collector took 6% of a replica's CPU at window 1 (py-spy --native). A message
    # in flight holds a few dozen container objects (its task, coroutines, futures, dicts), so
    # with the default young generation of 700 a collection ran every few messages, walked the
    # messages still in flight and promoted them, and the older generations' collections then
    # walked everything the process ever built. That (modules, the app, SQLAlchemy's tables,
    # pydantic's models) lives as long as the process: frozen, no collection walks it again;
    # and a young generation of 20,000 lets most in-flight objects be freed by their reference
    # count before a collection sees them. Only cyclic garbage waits longer (a few MB at most).
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    _DrainingServer(config, service, metrics, metrics_socket).run()
