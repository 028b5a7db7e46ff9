"""Every private interface of python-engineio, python-socketio and uvicorn that we lean on.

The lean websocket path (``websocket_transport``), the lean dispatch and the transport limits
(``sockets.SocketServer``) use attributes these libraries do not promise to keep. pyproject.toml
bounds their versions; when a bound is raised, this file says at once what moved, by name,
instead of a transport test timing out somewhere. Fix the code (or the fallback,
``MESSAGING_SOCKETIO_FAST_PATH=false``, which needs fewer of them) before raising a bound.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

import engineio
import pytest
import socketio
from engineio import async_socket
from engineio.async_drivers import asgi as engineio_asgi
from socketio import packet as sio_packet
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State


def _parameters(function: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(function).parameters)


def _source(obj: Any) -> str:
    return inspect.getsource(obj)


@pytest.fixture
def sio() -> socketio.AsyncServer:
    return socketio.AsyncServer(async_mode="asgi")


def test_python_engineio_server_internals(sio: socketio.AsyncServer) -> None:
    eio = sio.eio
    assert isinstance(eio, engineio.AsyncServer)
    for attribute in (
        "sockets",
        "handlers",
        "start_service_task",
        "service_task_handle",
        "ping_interval_grace_period",
        "max_http_buffer_size",
        "cors_allowed_origins",
        "transports",
    ):
        assert hasattr(eio, attribute), attribute
    assert isinstance(eio.sockets, dict)
    assert _parameters(eio._trigger_event) == ["event", "args", "kwargs"]
    assert "run_async" in _source(engineio.AsyncServer._trigger_event)
    assert inspect.iscoroutinefunction(eio._service_task)
    assert _parameters(eio._cors_allowed_origins) == ["environ"]
    assert callable(eio.generate_id) and callable(eio.create_queue)
    for reason in (
        "PING_TIMEOUT",
        "TRANSPORT_CLOSE",
        "TRANSPORT_ERROR",
        "CLIENT_DISCONNECT",
        "SERVER_DISCONNECT",
    ):
        assert hasattr(eio.reason, reason), reason
    # The stock session triggers "connect" in the request's own task (the connecting
    # transport is found through a context variable), after queueing its OPEN packet.
    connect = _source(engineio.AsyncServer._handle_connect)
    assert connect.index("await s.send(pkt)") < connect.index("self._trigger_event('connect'")
    assert "run_async=False" in connect


def test_python_engineio_socket_internals(sio: socketio.AsyncServer) -> None:
    socket = async_socket.AsyncSocket(sio.eio, "sid")
    # The slow-consumer limit swaps this queue for one that counts bytes through the
    # subclass hooks asyncio.Queue documents for PriorityQueue and LifoQueue.
    assert isinstance(socket.queue, asyncio.Queue)
    assert hasattr(asyncio.Queue, "_put") and hasattr(asyncio.Queue, "_get")
    assert _parameters(socket.close) == ["wait", "abort", "reason"]
    for attribute in ("closing", "closed", "last_ping", "session", "upgraded", "connected"):
        assert hasattr(socket, attribute), attribute
    assert inspect.iscoroutinefunction(socket.check_ping_timeout)
    # The writer task ends on a None in the queue (close_transport and _end_session rely on it).
    assert "if packets == [None]" in _source(async_socket.AsyncSocket.poll)


def test_python_engineio_asgi_environ_keeps_the_scope() -> None:
    source = _source(engineio_asgi.translate_request)
    assert "'asgi.scope': scope" in source and "'wsgi.input'" in source
    assert "'asgi.send': send" in source


def test_python_socketio_server_internals(sio: socketio.AsyncServer) -> None:
    assert _parameters(sio._handle_eio_connect) == ["eio_sid", "environ"]
    assert _parameters(sio._handle_eio_message) == ["eio_sid", "data"]
    assert _parameters(sio._handle_eio_disconnect) == ["eio_sid", "reason"]
    assert _parameters(sio._handle_event) == ["eio_sid", "namespace", "id", "data"]
    assert _parameters(sio._send_packet) == ["eio_sid", "pkt"]
    assert isinstance(sio._binary_packet, dict)
    assert set(sio.reserved_events) <= {"connect", "disconnect", "connect_error"}
    assert sio.packet_class is sio_packet.Packet
    for name in ("sid_from_eio_sid", "eio_sid_from_sid", "is_connected"):
        assert callable(getattr(sio.manager, name)), name
    # Every binary packet and every event goes through these, in this order.
    message = _source(socketio.AsyncServer._handle_eio_message)
    assert "self._binary_packet[eio_sid] = pkt" in message
    assert "await self._handle_event(eio_sid, pkt.namespace, pkt.id" in message
    # The eio "connect"/"message"/"disconnect" handlers are these methods.
    assert sio.eio.handlers["connect"] == sio._handle_eio_connect
    assert sio.eio.handlers["message"] == sio._handle_eio_message


def test_python_socketio_packet_internals() -> None:
    pkt = sio_packet.Packet(encoded_packet='52-["e",{"_placeholder":true,"num":0}]')
    assert pkt.attachment_count == 2
    assert pkt.attachments == []
    with pytest.raises(ValueError, match="attachment"):
        sio_packet.Packet(encoded_packet='512345678901-["e"]')


def test_uvicorn_websockets_sansio_internals() -> None:
    init = _source(WebSocketsSansIOProtocol.__init__)
    for attribute in ("self.transport", "self.conn", "self.close_sent", "self.writable"):
        assert attribute in init, attribute
    # The ASGI send callable is the protocol's bound method (DirectSocket finds the protocol
    # through ``send.__self__``).
    assert "self.app(self.scope, self.receive, self.send)" in _source(
        WebSocketsSansIOProtocol.run_asgi
    )
    assert State.OPEN.name == "OPEN"
    # Reading pauses while frames wait in the queue: inbound is bounded by one read.
    assert "pause_reading" in _source(WebSocketsSansIOProtocol.send_receive_event_to_app)
    # The handshake is logged with the query string as a %-argument (serve.py redacts it).
    assert "get_path_with_query_string(self.scope)," in _source(WebSocketsSansIOProtocol.send)
