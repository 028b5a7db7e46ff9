"""A websocket client that never reads, for the transport-attack and drain tests."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator

from messaging.bench.protocol import check_handshake_response, encode_frame, handshake_request


class StalledSocket:
    """A websocket client over a bare TCP socket that writes frames and never reads.

    A real client library reads on its own; this one leaves every byte the server sends in the
    kernel, as a phone that went into a tunnel or an attacker would. Frames are the load
    generator's (``messaging.bench.protocol``).
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        request, self._accept = handshake_request(f"http://127.0.0.1:{port}")
        self.sock.sendall(request)
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

    def connect(self, token: str) -> None:
        """Past the websocket handshake (checked) and Socket.IO's CONNECT with ``token``."""
        check_handshake_response(self.read_until(b"\r\n\r\n"), self._accept)
        self.send_text("40" + json.dumps({"token": token}))
        self.read_until(b'40{"sid"')

    def send_text(self, text: str) -> None:
        self.sock.sendall(encode_frame(text.encode()))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


@contextlib.contextmanager
def stalled_socket(port: int, token: str) -> Iterator[StalledSocket]:
    """A ``StalledSocket`` connected as the holder of ``token``, closed afterwards."""
    client = StalledSocket(port)
    try:
        client.connect(token)
        yield client
    finally:
        client.close()
