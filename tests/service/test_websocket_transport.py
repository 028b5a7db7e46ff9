"""Direct websockets (``websocket_transport``) speak Engine.IO v4 exactly; polling still works.

These tests talk raw Engine.IO/Socket.IO frames over a websocket, so they see what any client
would: the OPEN packet, the server's pings, ack ids, and the connection closing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from messaging.dev_connections import ConnectionGraph
from tests.support.service import (
    Device,
    RunningService,
    devices,
    open_conversation,
    running_service,
    service_settings,
    unique,
)


@asynccontextmanager
async def raw_socket(svc: RunningService, user: str) -> AsyncIterator[ClientConnection]:
    """A websocket opened straight away, Socket.IO-connected as ``user``."""
    url = svc.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    async with websockets.connect(url, max_size=None) as ws:
        opening = await _recv(ws)
        assert opening.startswith("0")
        await ws.send("40" + json.dumps({"token": svc.token(user)}))
        connected = await _recv(ws)
        assert connected.startswith("40{"), connected
        yield ws


async def _recv(ws: ClientConnection, timeout: float = 5.0) -> str:
    message = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(message, str)
    return message


async def _ack(ws: ClientConnection, ack_id: int) -> Any:
    """The ack with ``ack_id``, skipping pings and events."""
    prefix = f"43{ack_id}["
    while True:
        message = await _recv(ws)
        if message.startswith(prefix):
            return orjson.loads(message[len(prefix) - 1 :])[0]


async def test_a_direct_websocket_opens_without_upgrades_and_answers_events_by_ack_id(
    svc: RunningService,
) -> None:
    url = svc.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    async with websockets.connect(url) as ws:
        opening = json.loads((await _recv(ws))[1:])
        assert opening["upgrades"] == []
        assert opening["maxPayload"] == svc.settings.max_payload_bytes
        assert opening["pingInterval"] == int(svc.settings.socketio_ping_interval_seconds * 1000)
        assert opening["pingTimeout"] == int(svc.settings.socketio_ping_timeout_seconds * 1000)
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with raw_socket(svc, alice) as ws:
        await ws.send(f'427["createConversation",{json.dumps({"participantId": bob})}]')
        reply = await _ack(ws, 7)
        assert reply["ok"] is True
        assert bob in reply["data"]["participantIds"]
        await ws.send('42123["noSuchEvent",{}]')
        assert (await _ack(ws, 123))["error"]["code"] == "VALIDATION_FAILED"
        await ws.send('428["typing"]')
        assert (await _ack(ws, 8))["error"]["code"] == "VALIDATION_FAILED"


async def test_malformed_packets_are_ignored_and_the_socket_keeps_working(
    svc: RunningService,
) -> None:
    alice = unique("alice")
    async with raw_socket(svc, alice) as ws:
        for junk in ('42["sendMessage"', "42{}", "42[]", "42[1,2]", "4", "6", "2", "9x"):
            await ws.send(junk)
        await ws.send('425["syncMessages",{}]')
        reply = await _ack(ws, 5)
        assert reply["ok"] is True
        assert (reply["data"]["messages"], reply["data"]["hasMore"]) == ([], False)


async def test_a_message_larger_than_the_payload_limit_closes_the_connection(
    svc: RunningService,
) -> None:
    async with raw_socket(svc, unique("alice")) as ws:
        await ws.send("42" + "x" * (svc.settings.max_payload_bytes + 1))
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await _recv(ws)


async def test_the_server_pings_and_closes_a_socket_that_stops_answering(
    database_url: str, backend: str
) -> None:
    settings = service_settings(
        database_url, socketio_ping_interval_seconds=0.3, socketio_ping_timeout_seconds=0.3
    )
    async with running_service(settings, ConnectionGraph(), backend) as svc:
        user = unique("alice")
        async with raw_socket(svc, user) as ws:
            for _ in range(3):  # answered pings keep the socket open
                assert await _recv(ws) == "2"
                await ws.send("3")
            assert svc.service.presence.local.sids_of(user)
            assert await _recv(ws) == "2"
            # No answer: after pingTimeout the session ends (a CLOSE packet, then the socket).
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    assert await _recv(ws, timeout=3.0) in ("1", "2")
        for _ in range(50):
            if not svc.service.presence.local.sids_of(user):
                break
            await asyncio.sleep(0.05)
        assert not svc.service.presence.local.sids_of(user)


async def test_long_polling_and_websocket_devices_talk_to_each_other(
    database_url: str, backend: str
) -> None:
    # A short ping interval: a polling client's disconnect waits for its pending long poll.
    settings = service_settings(
        database_url, socketio_ping_interval_seconds=0.5, socketio_ping_timeout_seconds=2.0
    )
    async with running_service(settings, ConnectionGraph(), backend) as svc:
        alice, bob = unique("alice"), unique("bob")
        svc.connect_users((alice, bob))
        polling = Device(svc.url, svc.token(alice), transports=["polling"])
        await polling.connect()
        try:
            assert polling.client.transport() == "polling"
            async with devices(svc, bob) as (websocket,):
                conversation = await open_conversation(svc, polling, bob)
                sent = await polling.ok(
                    "sendMessage", {"conversationId": conversation, "content": "over polling"}
                )
                assert (await websocket.next("newMessage"))["id"] == sent["id"]
                answer = await websocket.ok(
                    "sendMessage", {"conversationId": conversation, "content": "over websocket"}
                )
                assert (await polling.next("newMessage"))["id"] == answer["id"]
        finally:
            await polling.disconnect()
