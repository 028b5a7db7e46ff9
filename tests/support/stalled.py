"""A websocket client that never reads, for the transport-attack and drain tests."""

from __future__ import annotations

import base64
import contextlib
import os
import socket


class StalledSocket:
    """A websocket client over a bare TCP socket that writes frames and never reads.

    A real client library reads on its own; this one leaves every byte the server sends in the
    kernel, as a phone that went into a tunnel or an attacker would.
    """

    def __init__(self, port: int, path: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self._buffer = b""

    def read_until(self, marker: bytes, timeout: float = 10.0) -> bytes:
        """Read just enough to get past the handshake (and the Socket.IO CONNECT answer)."""
        self.sock.settimeout(timeout)
        while marker not in self._buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed")
            self._buffer += chunk
        self.sock.settimeout(None)
        head, _, self._buffer = self._buffer.partition(marker)
        return head

    def send_text(self, text: str) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        size = len(payload)
        if size < 126:
            header = bytes((0x81, 0x80 | size))
        elif size < 65536:
            header = bytes((0x81, 0x80 | 126)) + size.to_bytes(2, "big")
        else:
            header = bytes((0x81, 0x80 | 127)) + size.to_bytes(8, "big")
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
