"""The direct websocket's heartbeat closes a silent socket when its pong deadline fires."""

from __future__ import annotations

import asyncio
import time
from collections.abc import MutableMapping
from typing import Any

import socketio

from messaging.websocket_transport import DirectSocket, ProtocolErrors, TransportLimits

LIMITS = TransportLimits(
    max_payload_bytes=65_536,
    max_outbound_buffer_bytes=1 << 20,
    max_protocol_errors=5,
    max_binary_attachments=10,
    connect_timeout_seconds=45,
)


async def test_a_pong_deadline_that_fires_a_hair_early_still_closes_the_socket() -> None:
    # Event loops may run a timer slightly before time.time() says it is due (uvloop rounds to
    # milliseconds): the deadline firing, with no PONG since the PING, is what decides.
    server = socketio.AsyncServer(async_mode="asgi", ping_interval=5, ping_timeout=5)
    sent: list[MutableMapping[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    socket = DirectSocket(server.eio, "sid", send, LIMITS, ProtocolErrors(5))
    server.eio.sockets["sid"] = socket
    socket.last_ping = time.time()  # pinged just now: by the clock, not yet overdue
    socket._expire()
    for _ in range(100):
        if socket.closed:
            break
        await asyncio.sleep(0.01)
    assert socket.closed
    assert {"type": "websocket.close", "code": 1000} in sent


async def test_a_pong_in_time_keeps_the_socket_open() -> None:
    server = socketio.AsyncServer(async_mode="asgi", ping_interval=5, ping_timeout=5)

    async def send(message: MutableMapping[str, Any]) -> None:
        return None

    socket = DirectSocket(server.eio, "sid", send, LIMITS, ProtocolErrors(5))
    socket.last_ping = time.time()
    assert await socket.receive("3")  # the PONG: the deadline is replaced by the next PING
    socket._expire()
    await asyncio.sleep(0.05)
    assert not socket.closed and not socket.closing
    socket._replace_timer(0, lambda: None)
