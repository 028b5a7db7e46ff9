"""The wire formats the load generator speaks: WebSocket frames, Engine.IO v4, Socket.IO v5.

The official python-socketio client spends far more CPU per message than the servers it would
measure, so the bench speaks the protocol itself. Everything here is pure (bytes in, bytes out),
which keeps the client small and lets the tests check the encoding without a server.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from collections.abc import Callable
from typing import Any, NamedTuple
from urllib.parse import quote, urlsplit

import orjson

_c_apply_mask: Callable[[bytes, bytes], bytes] | None
try:  # C speed-up shipped with the websockets package; the fallback is only slower.
    from websockets.speedups import apply_mask as _c_apply_mask
except ImportError:  # pragma: no cover - websockets is a dependency of uvicorn[standard]
    _c_apply_mask = None

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

# Engine.IO packet types (first character of every text message).
EIO_OPEN = ord("0")
EIO_CLOSE = ord("1")
EIO_PING = ord("2")
EIO_PONG = ord("3")
EIO_MESSAGE = ord("4")

# Socket.IO packet types (the character after Engine.IO's "4").
SIO_CONNECT = ord("0")
SIO_DISCONNECT = ord("1")
SIO_EVENT = ord("2")
SIO_ACK = ord("3")
SIO_CONNECT_ERROR = ord("4")


class ProtocolError(Exception):
    """The peer sent something this client does not understand."""


def apply_mask(payload: bytes, mask: bytes) -> bytes:
    if _c_apply_mask is not None:
        return bytes(_c_apply_mask(payload, mask))
    return bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def encode_frame(
    payload: bytes,
    opcode: int = OP_TEXT,
    mask: bytes | None = None,
    *,
    masked: bool = True,
    fin: bool = True,
) -> bytes:
    """One client frame, masked (RFC 6455 section 5.2: clients always mask); ``masked=False``
    gives a frame as a server sends it, and ``fin=False`` a fragment (the bench's own tests)."""
    length = len(payload)
    head = bytes(((0x80 if fin else 0) | opcode,))
    bit = 0x80 if masked else 0
    if length < 126:
        head += bytes((bit | length,))
    elif length < 1 << 16:
        head += struct.pack("!BH", bit | 126, length)
    else:
        head += struct.pack("!BQ", bit | 127, length)
    if not masked:
        return head + payload
    if mask is None:
        mask = os.urandom(4)
    return head + mask + apply_mask(payload, mask)


class FrameDecoder:
    """Reassembles complete messages from a stream of server frames.

    Servers may split a message into fragments and interleave control frames; ``feed`` returns
    whole messages as ``(opcode, payload)`` in arrival order, control frames included.
    """

    __slots__ = ("_buffer", "_fragment_opcode", "_fragments")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._fragments: list[bytes] = []
        self._fragment_opcode = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buffer
        buf += data
        out: list[tuple[int, bytes]] = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif length == 127:
                if end - pos < 10:
                    break
                (length,) = struct.unpack_from("!Q", buf, pos + 2)
                head = 10
            masked = b1 & 0x80
            if masked:
                head += 4
            if end - pos < head + length:
                break
            payload = bytes(buf[pos + head : pos + head + length])
            if masked:
                payload = apply_mask(payload, bytes(buf[pos + head - 4 : pos + head]))
            pos += head + length
            opcode = b0 & 0x0F
            if b0 & 0x80 and opcode != OP_CONTINUATION:
                out.append((opcode, payload))  # the common case: a whole message in one frame
            else:
                self._fragment(opcode, bool(b0 & 0x80), payload, out)
        if pos:
            del buf[:pos]
        return out

    def _fragment(
        self, opcode: int, fin: bool, payload: bytes, out: list[tuple[int, bytes]]
    ) -> None:
        if opcode == OP_CONTINUATION:
            self._fragments.append(payload)
            if fin:
                out.append((self._fragment_opcode, b"".join(self._fragments)))
                self._fragments = []
        else:
            self._fragment_opcode = opcode
            self._fragments = [payload]


def handshake_request(url: str, extra_headers: dict[str, str] | None = None) -> tuple[bytes, bytes]:
    """The HTTP upgrade request for the Socket.IO websocket endpoint, and its expected accept.

    ``url`` is the replica's base URL (``http://host:port`` or with a path prefix); the
    Socket.IO path ``/socket.io/`` is appended the way the official clients do.
    """
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port
    authority = host if port is None else f"{host}:{port}"
    path = parts.path.rstrip("/") + "/socket.io/?EIO=4&transport=websocket"
    key = base64.b64encode(os.urandom(16))
    lines = [
        f"GET {quote(path, safe='/?=&')} HTTP/1.1",
        f"Host: {authority}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key.decode()}",
        "Sec-WebSocket-Version: 13",
    ]
    lines.extend(f"{name}: {value}" for name, value in (extra_headers or {}).items())
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return request, expected_accept(key)


def expected_accept(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + WS_GUID).digest())  # noqa: S324 - RFC 6455


def check_handshake_response(head: bytes, accept: bytes) -> None:
    """Raise unless ``head`` (status line and headers) is a valid 101 for our key."""
    lines = head.split(b"\r\n")
    status = lines[0].split(b" ", 2)
    if len(status) < 2 or status[1] != b"101":
        raise ProtocolError(f"websocket upgrade refused: {lines[0].decode(errors='replace')}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if headers.get(b"sec-websocket-accept") != accept:
        raise ProtocolError("websocket upgrade answered with a wrong Sec-WebSocket-Accept")


def connect_packet(auth: dict[str, Any] | None) -> bytes:
    """Socket.IO CONNECT to the default namespace, carrying the handshake ``auth`` object."""
    return b"40" if auth is None else b"40" + orjson.dumps(auth)


def event_packet(event: str, data: Any, ack_id: int | None = None) -> bytes:
    """An EVENT packet; with ``ack_id`` the server answers with an ACK of that id."""
    body = orjson.dumps([event, data])
    return b"42" + body if ack_id is None else b"42" + str(ack_id).encode() + body


class SocketPacket(NamedTuple):
    """A decoded Socket.IO packet: ``data`` is the JSON body (a list for events and acks)."""

    type: int
    namespace: str
    ack_id: int | None
    data: Any


def parse_socket_packet(message: bytes) -> SocketPacket:
    """Decode the Socket.IO packet inside an Engine.IO message (``message`` starts after "4")."""
    if not message:
        raise ProtocolError("empty Socket.IO packet")
    kind = message[0]
    pos = 1
    namespace = "/"
    if len(message) > 1 and message[1:2] == b"/":
        comma = message.find(b",", 1)
        end = comma if comma != -1 else len(message)
        namespace = message[1:end].decode()
        pos = end + 1 if comma != -1 else end
    ack_id: int | None = None
    start = pos
    while pos < len(message) and 48 <= message[pos] <= 57:
        pos += 1
    if pos > start:
        ack_id = int(message[start:pos])
    data = orjson.loads(message[pos:]) if pos < len(message) else None
    return SocketPacket(kind, namespace, ack_id, data)
