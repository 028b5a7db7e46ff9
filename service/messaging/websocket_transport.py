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
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, ClassVar

import orjson
from engineio import packet as eio_packet
from engineio.async_server import AsyncServer as EngineServer
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_PING = eio_packet.Packet(eio_packet.PING).encode()
_NOOP = eio_packet.Packet(eio_packet.NOOP).encode()
_CLOSE = eio_packet.Packet(eio_packet.CLOSE).encode()


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
        "_loop",
        "_protocol",
        "_send",
        "_session",
        "_timer",
        "closed",
        "closing",
        "last_ping",
        "server",
        "sid",
    )

    def __init__(self, server: EngineServer, sid: str, send: Send) -> None:
        self.server = server
        self.sid = sid
        self.closing = False
        self.closed = False
        self.last_ping: float | None = None
        self._session: dict[str, Any] | None = None
        self._send = send
        # With uvicorn's websockets-sansio protocol (what ``messaging serve`` runs), frames are
        # written to its transport directly; with any other server, through ASGI.
        owner = getattr(send, "__self__", None)
        self._protocol = owner if isinstance(owner, WebSocketsSansIOProtocol) else None
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None

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
        if not (
            protocol.close_sent
            or protocol.conn.state is not State.OPEN
            or protocol.transport.is_closing()
        ):
            if isinstance(encoded, str):
                protocol.transport.write(_frame(encoded.encode(), 0x1))
            else:
                protocol.transport.write(_frame(encoded, 0x2))
        return True

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
        self._timer = None
        if not self.closing and not self.closed:
            self._loop.create_task(self.check_ping_timeout())

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
            await self._message(base64.b64decode(data[1:]))
        # A PING or NOOP from the client, or anything else, is ignored (as python-engineio does).
        return True

    async def _message(self, data: str | bytes) -> None:
        handler = self.server.handlers.get("message")
        if handler is None:
            return
        try:
            await handler(self.sid, data)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.server.logger.exception("message async handler error")

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
        try:
            await self._send({"type": "websocket.close", "code": 1000})
        except Exception:  # already closed by the client
            return


async def serve(eio: EngineServer, scope: Scope, receive: Receive, send: Send) -> None:
    """Run one direct websocket session from the handshake to the close."""
    event = await receive()
    if event["type"] != "websocket.connect":
        return
    if eio.start_service_task:
        # python-engineio's sweeper of silent sockets, started by the first connection.
        eio.start_service_task = False
        eio.service_task_handle = eio.start_background_task(eio._service_task)
    sid = eio.generate_id()
    socket = DirectSocket(eio, sid, send)
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
    limit = eio.max_http_buffer_size
    try:
        while True:
            event = await receive()
            if event["type"] != "websocket.receive":
                break
            data = event.get("text")
            if data is None:
                data = event.get("bytes")
                if data is None:
                    break
            if len(data) > limit or not data:
                break
            if not await socket.receive(data):
                break
    finally:
        await socket.close(wait=False, abort=True, reason=eio.reason.TRANSPORT_CLOSE)
        if eio.sockets.get(sid) is socket:
            del eio.sockets[sid]
