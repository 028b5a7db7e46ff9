"""Running the service as a process: uvicorn, and what SIGTERM means.

uvicorn's own SIGTERM handling closes the listening socket at once, so a pod would vanish from
under its clients and its readiness probe at the same moment. Here SIGTERM starts the service's
drain first (readiness false, new sockets refused, open ones closed gradually, in-flight requests
answered) and only then lets uvicorn stop. A watchdog ends the process at the shutdown deadline
whatever happens, so it always exits before Kubernetes' terminationGracePeriodSeconds.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from types import FrameType

import uvicorn

from messaging.app import Service, build_service, create_app
from messaging.settings import Settings

log = logging.getLogger(__name__)


class _DrainingServer(uvicorn.Server):
    """uvicorn, except that the first SIGTERM/SIGINT drains before stopping."""

    def __init__(self, config: uvicorn.Config, service: Service) -> None:
        super().__init__(config)
        self._service = service
        self._drain: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)  # type: ignore[arg-type]

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
        deadline = self._service.settings.shutdown_deadline_seconds
        started = time.monotonic()
        assert self._loop is not None
        # Past the deadline, stop waiting for connections; a moment later, leave regardless.
        self._loop.call_later(max(0.0, deadline - 1.0), self._force)
        self._loop.call_later(deadline, _hard_exit)
        self._drain = asyncio.ensure_future(self._drain_then_exit(started))

    async def _drain_then_exit(self, started: float) -> None:
        try:
            await self._service.drain()
        except Exception:
            log.exception("drain failed; stopping anyway")
        log.info("stopping", extra={"after_seconds": round(time.monotonic() - started, 3)})
        self.should_exit = True

    def _force(self) -> None:
        log.warning("shutdown deadline near; forcing exit")
        self.should_exit = True
        self.force_exit = True


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
    _DrainingServer(config, service).run()
