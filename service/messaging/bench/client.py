"""A lean Socket.IO v5 client over a raw WebSocket, built to cost the load generator little.

One asyncio ``Protocol`` per socket: writes are plain ``transport.write`` calls (no task or
future per message), acks and events are dispatched to callbacks straight from
``data_received``, and Engine.IO pings are answered inline. Only what a bench needs is here:
the websocket transport, the default namespace, JSON (no binary) packets.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import urlsplit

import orjson

from messaging.bench import protocol as p

AckCallback = Callable[[Any], None]
EventCallback = Callable[[str, Any, int], None]
"""Called with (event name, first argument, arrival time in monotonic nanoseconds)."""

_PONG = p.encode_frame(b"3", mask=b"\0\0\0\0")


class ConnectRefusedError(Exception):
    """The server refused the Socket.IO handshake (``connect_error``), e.g. a bad token."""

    def __init__(self, data: Any) -> None:
        super().__init__(f"connect refused: {data!r}")
        self.data = data


class SocketClient(asyncio.Protocol):
    def __init__(self, on_event: EventCallback | None = None) -> None:
        self.on_event = on_event
        self.on_close: Callable[[SocketClient], None] | None = None
        self.connected = False
        self.closed = False
        self._transport: asyncio.Transport | None = None
        self._decoder = p.FrameDecoder()
        self._handshake_buffer: bytearray | None = bytearray()
        self._accept = b""
        self._acks: dict[int, AckCallback] = {}
        self._next_ack = 0
        self._opened: asyncio.Future[None] | None = None
        self._random = int.from_bytes(os.urandom(4)) or 1

    # --- connection -----------------------------------------------------------------------

    async def connect(
        self, url: str, token: str | None, *, limit_s: float = 10.0, header_auth: bool = False
    ) -> None:
        """Open the websocket and join the default namespace with ``auth: {token}``.

        Raises ``ConnectRefusedError`` when the server answers with ``connect_error``.
        """
        loop = asyncio.get_running_loop()
        parts = urlsplit(url)
        secure = parts.scheme in ("https", "wss")
        port = parts.port or (443 if secure else 80)
        headers = {"Authorization": f"Bearer {token}"} if header_auth and token else {}
        request, self._accept = p.handshake_request(url, headers)
        self._opened = loop.create_future()
        async with asyncio.timeout(limit_s):
            await loop.create_connection(
                lambda: self,
                parts.hostname or "127.0.0.1",
                port,
                ssl=ssl.create_default_context() if secure else None,
            )
            self._send_raw(request)
            await self._opened  # Engine.IO open packet received
            self._opened = loop.create_future()
            auth = None if header_auth or token is None else {"token": token}
            self._send(p.connect_packet(auth))
            await self._opened  # Socket.IO CONNECT (or CONNECT_ERROR) received
        self.connected = True

    def close(self) -> None:
        if self._transport is not None and not self.closed:
            self._send(b"41")
            self._transport.write(p.encode_frame(b"\x03\xe8", p.OP_CLOSE))
            self._transport.close()

    # --- emitting -------------------------------------------------------------------------

    def emit(self, event: str, data: Any, ack: AckCallback | None = None) -> None:
        """Send an event; ``ack`` is called with the server's first ack argument."""
        if ack is None:
            self._send(p.event_packet(event, data))
            return
        ack_id = self._next_ack
        self._next_ack += 1
        self._acks[ack_id] = ack
        self._send(p.event_packet(event, data, ack_id))

    async def call(self, event: str, data: Any, limit_s: float = 10.0) -> Any:
        """Emit and wait for the ack (for setup steps, not the hot path)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def done(answer: Any) -> None:
            if not future.done():
                future.set_result(answer)

        self.emit(event, data, done)
        async with asyncio.timeout(limit_s):
            return await future

    def _send_raw(self, data: bytes) -> None:
        if self._transport is None:
            raise ConnectionError("socket is not connected")
        self._transport.write(data)

    def _send(self, packet: bytes) -> None:
        if self._transport is None or self.closed:
            raise ConnectionError("socket is closed")
        # A cheap xorshift mask: RFC 6455 wants a fresh key per frame, not a secret one.
        x = self._random
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self._random = x
        self._transport.write(p.encode_frame(packet, p.OP_TEXT, x.to_bytes(4)))

    # --- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same methods.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.connected = False
        if self._opened is not None and not self._opened.done():
            self._opened.set_exception(ConnectionError(f"connection lost: {exc}"))
        if self.on_close is not None:
            self.on_close(self)

    def data_received(self, data: bytes) -> None:
        if self._handshake_buffer is not None:
            self._handshake_buffer += data
            end = self._handshake_buffer.find(b"\r\n\r\n")
            if end == -1:
                return
            head = bytes(self._handshake_buffer[:end])
            data = bytes(self._handshake_buffer[end + 4 :])
            self._handshake_buffer = None
            try:
                p.check_handshake_response(head, self._accept)
            except p.ProtocolError as e:
                self._fail(e)
                return
        now = time.monotonic_ns()
        for opcode, payload in self._decoder.feed(data):
            if opcode == p.OP_TEXT:
                self._engine_message(payload, now)
            elif opcode == p.OP_PING:
                self._transport.write(p.encode_frame(payload, p.OP_PONG))  # type: ignore[union-attr]
            elif opcode == p.OP_CLOSE and self._transport is not None:
                self._transport.close()

    # --- Engine.IO / Socket.IO dispatch ---------------------------------------------------

    def _engine_message(self, payload: bytes, now: int) -> None:
        kind = payload[0] if payload else -1
        if kind == p.EIO_MESSAGE:
            self._socket_packet(payload, now)
        elif kind == p.EIO_PING:
            self._transport.write(_PONG)  # type: ignore[union-attr]
        elif kind == p.EIO_OPEN:
            self._resolve_open()
        elif kind == p.EIO_CLOSE and self._transport is not None:
            self._transport.close()

    def _socket_packet(self, payload: bytes, now: int) -> None:
        sio = payload[1] if len(payload) > 1 else -1
        if sio == p.SIO_ACK and payload[2:3] != b"/":
            # Hot path: "43<id>[answer]" without building a SocketPacket.
            bracket = payload.find(b"[", 2)
            callback = self._acks.pop(int(payload[2:bracket]), None)
            if callback is not None:
                args = orjson.loads(payload[bracket:])
                callback(args[0] if args else None)
            return
        if sio == p.SIO_EVENT and payload[2:3] == b"[":
            if self.on_event is not None:
                args = orjson.loads(payload[2:])
                self.on_event(args[0], args[1] if len(args) > 1 else None, now)
            return
        packet = p.parse_socket_packet(payload[1:])
        if packet.type == p.SIO_CONNECT:
            self._resolve_open()
        elif packet.type == p.SIO_CONNECT_ERROR:
            self._fail(ConnectRefusedError(packet.data))
        elif packet.type == p.SIO_ACK and packet.ack_id is not None:
            callback = self._acks.pop(packet.ack_id, None)
            if callback is not None:
                callback(packet.data[0] if packet.data else None)
        elif packet.type == p.SIO_EVENT and self.on_event is not None:
            args = packet.data
            self.on_event(args[0], args[1] if len(args) > 1 else None, now)
        elif packet.type == p.SIO_DISCONNECT and self._transport is not None:
            self._transport.close()

    def _resolve_open(self) -> None:
        if self._opened is not None and not self._opened.done():
            self._opened.set_result(None)

    def _fail(self, error: Exception) -> None:
        if self._opened is not None and not self._opened.done():
            self._opened.set_exception(error)
        if self._transport is not None:
            self._transport.close()

    @property
    def write_buffer_size(self) -> int:
        return 0 if self._transport is None else self._transport.get_write_buffer_size()
