"""Engine.IO's websocket transport for clients that open a websocket straight away.

A client that connects with ``EIO=4&transport=websocket`` and no session id (mobile and server
clients, the official clients configured with ``transports: ["websocket"]``, every replica
behind a load balancer without sticky sessions) is served here; long-polling, and the upgrade
from polling to websocket, stay with python-engineio, unchanged.

Why: python-engineio runs a websocket with a reader loop that starts a task (and a timeout) for
every frame received, a writer task woken through a queue for every frame sent, and a sleeping
task per socket for the heartbeat; each frame sent also goes through an ASGI message and
uvicorn's websocket state machine. On the send path that was the largest cost after the system
calls themselves (BENCHMARKS.md). Here a frame received is handled in the connection's own task,
a frame sent is written to the transport at once by whoever sends it (no task switch, no queue),
and the heartbeat is one timer per socket.

Nothing changes for python-socketio: the socket sits in ``eio.sockets`` and offers what
python-engineio's socket offers (``send``, ``close``, ``closed``, ``check_ping_timeout``,
``session`` ...), Engine.IO messages go to python-socketio's handler (whose event dispatch
``sockets.SocketServer`` makes lean), connects and disconnects go through its own handlers.

Hostile clients are held to ``TransportLimits`` here (docs/security.md, "Transport limits"):
the connection's task yields to the event loop every few frames, so a flood cannot starve other
connections; malformed frames are counted (``ProtocolErrors``: a metric per kind, one log line
per kind per interval, never a traceback) and a socket that keeps sending them is closed; a
client that stops reading is dropped once its unsent bytes pass the outbound limit, instead of
being buffered for.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import orjson
from engineio import packet as eio_packet
from engineio.async_server import AsyncServer as EngineServer
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

from messaging import metrics

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_PING = eio_packet.Packet(eio_packet.PING).encode()
_NOOP = eio_packet.Packet(eio_packet.NOOP).encode()
_CLOSE = eio_packet.Packet(eio_packet.CLOSE).encode()

# Frames handled in a row before the connection's task lets the event loop run others: uvicorn
# queues every frame of a read, so without this a burst is handled to the end in one go.
FRAMES_PER_YIELD = 16

ProtocolErrorKind = Literal[
    "engineio_packet",  # not an Engine.IO packet (unknown type, empty frame)
    "base64",  # a "b" packet whose base64 does not decode
    "socketio_packet",  # not a Socket.IO packet (bad JSON, unknown type or namespace)
    "reserved_event",  # an event named like a lifecycle event (connect, disconnect, ...)
    "binary_attachments",  # too many binary attachments announced, or too many bytes
    "frame_too_large",  # a websocket frame over max_payload_bytes
    "post_too_large",  # a long-polling POST over max_payload_bytes
    "connect_timeout",  # no Socket.IO CONNECT within the connect timeout
    "slow_consumer",  # unsent bytes over the outbound buffer limit
    "too_many_errors",  # a socket closed for sending malformed packets again and again
]
PROTOCOL_ERROR_KINDS: tuple[ProtocolErrorKind, ...] = ProtocolErrorKind.__args__  # type: ignore[attr-defined]
# Kinds a socket may repeat up to its budget; every other kind closes the socket at once.
_BUDGETED = frozenset({"engineio_packet", "base64", "socketio_packet", "reserved_event"})


@dataclass(frozen=True, slots=True)
class TransportLimits:
    """What one connection may cost (each from a setting; docs/security.md)."""

    max_payload_bytes: int
    max_outbound_buffer_bytes: int
    max_protocol_errors: int
    max_binary_attachments: int
    connect_timeout_seconds: float


class ProtocolErrors:
    """Counts refused frames: a metric per kind, a budget per socket, throttled log lines.

    A flood of bad frames must cost the replica next to nothing: no traceback, no log line per
    frame (one per kind per ``log_interval``, saying how many were not logged), nothing of the
    frame's content (it may carry a token).
    """

    def __init__(self, max_per_socket: int, log_interval: float = 10.0) -> None:
        self._max = max_per_socket
        self._interval = log_interval
        self._series = {
            kind: metrics.PROTOCOL_ERRORS.labels(kind=kind) for kind in PROTOCOL_ERROR_KINDS
        }
        self._per_socket: dict[str, int] = {}
        self._logged_at: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def record(self, kind: ProtocolErrorKind, sid: str | None, error: str = "") -> bool:
        """Count one refused frame; True when the socket is to be closed for it."""
        self._series[kind].inc()
        now = time.monotonic()
        if now - self._logged_at.get(kind, -self._interval) >= self._interval:
            self._logged_at[kind] = now
            log.warning(
                "protocol error: %s",
                kind,
                extra={
                    "kind": kind,
                    "sid": sid,
                    "error": error,
                    "unlogged": self._unlogged.pop(kind, 0),
                },
            )
        else:
            self._unlogged[kind] = self._unlogged.get(kind, 0) + 1
        if kind not in _BUDGETED:
            return True
        if sid is None:
            return False
        count = self._per_socket.get(sid, 0) + 1
        self._per_socket[sid] = count
        if count > self._max:
            self._series["too_many_errors"].inc()
            return True
        return False

    def forget(self, sid: str) -> None:
        self._per_socket.pop(sid, None)


def is_direct_websocket(scope: Scope) -> bool:
    """An Engine.IO v4 connection opened as a websocket, not an upgrade of a polling session."""
    if scope.get("type") != "websocket":
        return False
    query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return (
        query.get("EIO") == ["4"]
        and query.get("transport") == ["websocket"]
        and "sid" not in query
        and "j" not in query
    )


def handshake_environ(scope: Scope) -> dict[str, Any]:
    """The WSGI-style environ python-socketio keeps for the life of the connection.

    python-engineio keeps every header and a dozen WSGI keys per socket; the connect handler
    reads only the ``Authorization`` header, and the ASGI scope (which uvicorn keeps anyway)
    still holds the raw headers for anyone who needs more.
    """
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": scope.get("path", ""),
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "asgi.scope": scope,
    }
    for name, value in scope.get("headers", ()):
        if name.lower() == b"authorization":
            environ["HTTP_AUTHORIZATION"] = value.decode("latin-1")
    return environ


def origin_allowed(eio: EngineServer, scope: Scope) -> bool:
    """python-engineio's CORS check of the ``Origin`` header, on the handshake's headers."""
    if eio.cors_allowed_origins == []:
        return True
    headers: dict[str, str] = {}
    for name, value in scope.get("headers", ()):
        key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]},{text}" if key in headers else text
    origin = headers.get("HTTP_ORIGIN")
    if not origin:
        return True
    environ = {**headers, "wsgi.url_scheme": headers.get("HTTP_X_FORWARDED_PROTO", "http")}
    allowed = eio._cors_allowed_origins(environ)
    return allowed is None or origin in allowed


def _frame(payload: bytes, opcode: int) -> bytes:
    """An unmasked, unfragmented websocket frame (what a server sends)."""
    size = len(payload)
    if size < 126:
        return bytes((0x80 | opcode, size)) + payload
    if size < 65536:
        return bytes((0x80 | opcode, 126)) + size.to_bytes(2, "big") + payload
    return bytes((0x80 | opcode, 127)) + size.to_bytes(8, "big") + payload


class DirectSocket:
    """One Engine.IO session on a websocket, as python-engineio and python-socketio see it."""

    upgrade_protocols: ClassVar[list[str]] = []
    connected = True
    upgraded = True
    upgrading = False

    __slots__ = (
        "_errors",
        "_loop",
        "_max_outbound",
        "_protocol",
        "_send",
        "_session",
        "_timer",
        "closed",
        "closing",
        "dropped",
        "last_ping",
        "server",
        "sid",
    )

    def __init__(
        self,
        server: EngineServer,
        sid: str,
        send: Send,
        limits: TransportLimits,
        errors: ProtocolErrors,
    ) -> None:
        self.server = server
        self.sid = sid
        self.closing = False
        self.closed = False
        self.dropped = False  # the connection was aborted under it (a slow consumer)
        self.last_ping: float | None = None
        self._session: dict[str, Any] | None = None
        self._send = send
        # With uvicorn's websockets-sansio protocol (what ``messaging serve`` runs), frames are
        # written to its transport directly; with any other server, through ASGI.
        owner = getattr(send, "__self__", None)
        self._protocol = owner if isinstance(owner, WebSocketsSansIOProtocol) else None
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._max_outbound = limits.max_outbound_buffer_bytes
        self._errors = errors

    @property
    def session(self) -> dict[str, Any]:
        if self._session is None:
            self._session = {}
        return self._session

    @session.setter
    def session(self, value: dict[str, Any]) -> None:
        self._session = value

    # --- sending -------------------------------------------------------------------------------

    def send_now(self, pkt: eio_packet.Packet) -> bool:
        """``send`` without a coroutine, when the frame can be written at once (else False)."""
        if self.closing or self.closed:
            return True
        return self.write_now(pkt.encode())

    async def send(self, pkt: eio_packet.Packet) -> None:
        """Send a packet now (python-engineio would queue it for the socket's writer task).

        Nothing is sent once closing started: the disconnect handlers have run, so an answer
        computed for the socket in the meantime belongs to nobody.
        """
        if self.closing or self.closed:
            return
        await self.write(pkt.encode())

    async def write(self, encoded: str | bytes) -> None:
        if self.write_now(encoded):
            return
        message: dict[str, Any] = {"type": "websocket.send", "bytes": None, "text": None}
        message["text" if isinstance(encoded, str) else "bytes"] = encoded
        try:
            await self._send(message)
        except Exception:  # the connection is gone; its reader will notice
            log.debug("websocket send failed", extra={"sid": self.sid})

    def write_now(self, encoded: str | bytes) -> bool:
        """Write a frame to uvicorn's transport; False when only ASGI can send it."""
        protocol = self._protocol
        if protocol is None:
            return False
        transport = protocol.transport
        if not (
            protocol.close_sent or protocol.conn.state is not State.OPEN or transport.is_closing()
        ):
            if isinstance(encoded, str):
                transport.write(_frame(encoded.encode(), 0x1))
            else:
                transport.write(_frame(encoded, 0x2))
            if transport.get_write_buffer_size() > self._max_outbound:
                self._drop_slow_consumer(transport)
        return True

    def _drop_slow_consumer(self, transport: asyncio.WriteTransport) -> None:
        """The client stopped reading: drop the connection rather than buffer for it.

        No goodbye can reach a client that does not read; aborting the transport makes uvicorn
        report the disconnect, and the connection's task closes the session as for any other
        lost connection.
        """
        self.dropped = True
        self._errors.record("slow_consumer", self.sid)
        transport.abort()

    # --- heartbeat (Engine.IO v4: the server pings, the client answers) ----------------------

    def schedule_ping(self) -> None:
        self.last_ping = None
        self._replace_timer(self.server.ping_interval, self._ping)

    def _ping(self) -> None:
        if self.closing or self.closed:
            return
        self.last_ping = time.time()
        if not self.write_now(_PING):
            self._loop.create_task(self.write(_PING))
        self._replace_timer(self.server.ping_timeout, self._expire)

    def _expire(self) -> None:
        # Only a PONG cancels this timer (``schedule_ping``), so firing means none came: close
        # without comparing clocks (loops may fire a timer a hair early; python-engineio's
        # ``time.time()`` test then said "not yet" and nothing ever asked again).
        self._timer = None
        if not self.closing and not self.closed and self.last_ping is not None:
            _background(self.close(wait=False, abort=False, reason=self.server.reason.PING_TIMEOUT))

    def _replace_timer(self, delay: float, callback: Callable[[], None]) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(delay, callback)

    async def check_ping_timeout(self) -> bool:
        """What python-engineio's service task and socket ask: is the client still answering?"""
        if self.closed:
            from engineio.exceptions import SocketIsClosedError  # noqa: PLC0415 - rare

            raise SocketIsClosedError()
        last_ping = self.last_ping
        if last_ping and time.time() - last_ping > self.server.ping_timeout:
            await self.close(wait=False, abort=False, reason=self.server.reason.PING_TIMEOUT)
            return False
        return True

    # --- receiving -----------------------------------------------------------------------------

    async def receive(self, data: str | bytes) -> bool:
        """Handle one websocket message; False when the client closed the session."""
        if isinstance(data, bytes):
            await self._message(data)
            return True
        kind = data[:1]
        if kind == "4":
            await self._message(data[1:])
        elif kind == "3":
            if self.last_ping is not None:
                self.schedule_ping()
        elif kind == "1":
            await self.close(wait=False, abort=True, reason=self.server.reason.CLIENT_DISCONNECT)
            return False
        elif kind == "5":
            await self.write(_NOOP)
        elif kind == "b":
            try:
                decoded = base64.b64decode(data[1:], validate=True)
            except ValueError:
                return await self.refuse("base64", "invalid base64")
            await self._message(decoded)
        elif kind not in ("2", "6"):
            return await self.refuse("engineio_packet", "unknown packet type")
        # A PING or NOOP from the client is ignored (as python-engineio does).
        return True

    async def refuse(self, kind: ProtocolErrorKind, error: str) -> bool:
        """Count a bad frame; close the session (and return False) once it is one too many."""
        if not self._errors.record(kind, self.sid, error):
            return True
        await self.close(wait=False, abort=False, reason=self.server.reason.TRANSPORT_ERROR)
        return False

    async def _message(self, data: str | bytes) -> None:
        handler = self.server.handlers.get("message")
        if handler is None:
            return
        try:
            await handler(self.sid, data)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # python-socketio's own checks; sockets.SocketServer has ours
            await self.refuse("socketio_packet", type(exc).__name__)

    # --- closing -------------------------------------------------------------------------------

    async def close(self, wait: bool = True, abort: bool = False, reason: Any = None) -> None:
        """End the session: disconnect handlers first, then (unless aborting) a CLOSE packet."""
        if self.closed or self.closing:
            return
        self.closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self.server._trigger_event(
            "disconnect", self.sid, reason or self.server.reason.SERVER_DISCONNECT, run_async=False
        )
        if not abort:
            await self.write(_CLOSE)
        self.closed = True
        await self._close_websocket()

    async def drop(self) -> None:
        """Close the connection the way a dying server would: no Engine.IO or Socket.IO goodbye."""
        await self.close(wait=False, abort=True, reason=self.server.reason.SERVER_DISCONNECT)

    async def _close_websocket(self) -> None:
        protocol = self._protocol
        if protocol is not None and not protocol.writable.is_set():
            # Writing is paused: the client stopped reading, so no close frame would reach it,
            # and waiting to send one would hold up whoever closes (a drain closes one by one).
            protocol.transport.abort()
            return
        try:
            await self._send({"type": "websocket.close", "code": 1000})
        except Exception:  # already closed by the client
            return


_tasks: set[asyncio.Task[None]] = set()


def _background(coro: Awaitable[None]) -> None:
    task = asyncio.ensure_future(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


async def serve(
    eio: EngineServer,
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    limits: TransportLimits,
    errors: ProtocolErrors,
) -> None:
    """Run one direct websocket session from the handshake to the close."""
    event = await receive()
    if event["type"] != "websocket.connect":
        return
    if eio.start_service_task:
        # python-engineio's sweeper of silent sockets, started by the first connection.
        eio.start_service_task = False
        eio.service_task_handle = eio.start_background_task(eio._service_task)
    sid = eio.generate_id()
    socket = DirectSocket(eio, sid, send, limits, errors)
    eio.sockets[sid] = socket
    accepted = await eio._trigger_event("connect", sid, handshake_environ(scope), run_async=False)
    if accepted is not None and accepted is not True:
        del eio.sockets[sid]
        await send({"type": "websocket.close"})
        return
    await send({"type": "websocket.accept"})
    opening = {
        "sid": sid,
        "upgrades": [],
        "pingTimeout": int(eio.ping_timeout * 1000),
        "pingInterval": int(eio.ping_interval + eio.ping_interval_grace_period) * 1000,
        "maxPayload": eio.max_http_buffer_size,
    }
    await socket.write("0" + orjson.dumps(opening).decode())
    socket.schedule_ping()
    try:
        await _read_frames(socket, receive, limits.max_payload_bytes, errors)
    finally:
        await socket.close(wait=False, abort=True, reason=eio.reason.TRANSPORT_CLOSE)
        errors.forget(sid)
        if eio.sockets.get(sid) is socket:
            del eio.sockets[sid]


async def _read_frames(
    socket: DirectSocket, receive: Receive, limit: int, errors: ProtocolErrors
) -> None:
    """Hand each frame to the socket until the connection or the session ends."""
    handled = 0
    while True:
        event = await receive()
        if event["type"] != "websocket.receive":
            if event.get("code") == 1009:  # uvicorn refused a frame over ws_max_size
                errors.record("frame_too_large", socket.sid)
            return
        data = event.get("text")
        if data is None:
            data = event.get("bytes")
            if data is None:
                return
        if len(data) > limit:
            errors.record("frame_too_large", socket.sid)
            return
        if not data:
            if not await socket.refuse("engineio_packet", "empty frame"):
                return
        elif not await socket.receive(data) or socket.closed or socket.dropped:
            return  # frames still queued behind a drop are not worth answering
        handled += 1
        if handled % FRAMES_PER_YIELD == 0:
            await asyncio.sleep(0)


def engineio_frame_error(text: str) -> tuple[ProtocolErrorKind, str] | None:
    """What python-engineio's decoder would raise on (outside any try) for a text frame."""
    if not text:
        return "engineio_packet", "empty frame"
    kind = text[0]
    if kind == "b":
        try:
            base64.b64decode(text[1:], validate=True)
        except ValueError:
            return "base64", "invalid base64"
        return None
    if kind not in "0123456":
        return "engineio_packet", "unknown packet type"
    return None


def checked_receive(receive: Receive, errors: ProtocolErrors) -> Receive:
    """``receive`` for python-engineio's stock websocket transport, refusing what it chokes on.

    Its reader decodes each frame outside any ``try``: one frame of invalid base64 or of an
    unknown packet type ends the connection with a traceback. Here such frames are counted and
    dropped like on the direct path, and past the socket's budget the connection is ended.
    """
    key = f"stock-{id(receive)}"

    async def checked() -> MutableMapping[str, Any]:
        while True:
            event = await receive()
            if event["type"] != "websocket.receive":
                errors.forget(key)
                if event.get("code") == 1009:
                    errors.record("frame_too_large", None)
                return event
            text = event.get("text")
            problem = None if text is None else engineio_frame_error(text)
            if problem is None:
                return event
            if errors.record(problem[0], key, problem[1]):
                errors.forget(key)
                return {"type": "websocket.disconnect", "code": 1008}

    return checked


def packet_sender(eio: EngineServer) -> Callable[[str, eio_packet.Packet], Awaitable[None] | None]:
    """Fan-out's send function: a direct websocket queues the packet at once (None), any other
    socket (polling, python-engineio's websocket) through Engine.IO (an awaitable)."""
    sockets = eio.sockets

    def send(eio_sid: str, packet: eio_packet.Packet) -> Awaitable[None] | None:
        socket = sockets.get(eio_sid)
        if type(socket) is DirectSocket and socket.send_now(packet):
            return None
        return eio.send_packet(eio_sid, packet)  # type: ignore[no-any-return]

    return send
