"""A real `messaging serve` process under attack, and the instruments to watch it.

Shared by the transport attack tests and the Engine.IO fuzzing: one replica per transport (the
lean websocket path and python-engineio's stock one, ``MESSAGING_SOCKETIO_FAST_PATH``), with
short transport limits so the attacks finish in seconds, a bystander pair of official clients
whose sends must keep succeeding, and the replica's resident memory read from /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import websockets
from websockets.asyncio.client import ClientConnection

from messaging.dev_connections import ConnectionGraph, start_connections_server
from tests.support.replicas import Cluster, Replica
from tests.support.service import Device, unique

MAX_PAYLOAD = 65_536
OUTBOUND_LIMIT = 2 * 1_048_576
MAX_PROTOCOL_ERRORS = 20
CONNECT_TIMEOUT = 1.5
PING_INTERVAL = 1.5
PING_TIMEOUT = 1.5
MIB = 1024 * 1024

LIMITS = {
    "max_payload_bytes": str(MAX_PAYLOAD),
    "socketio_max_outbound_buffer_bytes": str(OUTBOUND_LIMIT),
    "socketio_max_protocol_errors": str(MAX_PROTOCOL_ERRORS),
    "socketio_connect_timeout_seconds": str(CONNECT_TIMEOUT),
    "socketio_ping_interval_seconds": str(PING_INTERVAL),
    "socketio_ping_timeout_seconds": str(PING_TIMEOUT),
    # What is attacked here is the transport: per-user budgets (tested in their own files)
    # would stop some of these attacks earlier and hide whether the transport holds alone.
    "rate_limits_enabled": "false",
    "max_sends_in_flight_per_user": "1000",
}


@dataclass
class Target:
    """The replica under attack, and two users on it who only want to chat."""

    cluster: Cluster
    replica: Replica
    fast_path: bool
    alice: Device
    bob: Device
    conversation: str

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.replica.http_port}/socket.io/?EIO=4&transport=websocket"

    def token(self, user: str) -> str:
        return self.cluster.token(user)

    def rss(self) -> int:
        """The replica's resident memory in bytes."""
        assert self.replica.process is not None
        status = Path(f"/proc/{self.replica.process.pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def log_size(self) -> int:
        return self.replica.log_path.stat().st_size

    def log_since(self, offset: int) -> str:
        with self.replica.log_path.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    async def protocol_errors(self, kind: str) -> float:
        return await self.replica.metric(f'messaging_protocol_errors_total{{kind="{kind}"}}')

    async def bystander_sends(self, content: str = "still here") -> None:
        """The bystander's send succeeds and is delivered (generous timeouts: a loaded machine)."""
        reply = await self.alice.call(
            "sendMessage", {"conversationId": self.conversation, "content": content}, timeout=15
        )
        assert reply["ok"] is True, reply
        received = await self.bob.next("newMessage", timeout=15)
        assert received["id"] == reply["data"]["id"]

    async def healthy(self) -> None:
        async with httpx.AsyncClient(timeout=15) as http:
            assert (await http.get(f"{self.replica.url}/healthz")).status_code == 200


@contextlib.asynccontextmanager
async def target(database_url: str, fast_path: bool, **settings: str) -> AsyncIterator[Target]:
    """One replica on PostgreSQL (production mode) with the test limits, and its bystanders."""
    graph = ConnectionGraph(all_connected=True)
    server, port = await start_connections_server(graph)
    cluster = Cluster(
        database_url=database_url,
        redis=None,
        connections_address=f"127.0.0.1:{port}",
        graph=graph,
        workdir=Path(tempfile.mkdtemp(prefix="messaging-transport-")),
    )
    try:
        (replica,) = await cluster.start(
            1, socketio_fast_path="true" if fast_path else "false", **{**LIMITS, **settings}
        )
        alice_id, bob_id = unique("alice"), unique("bob")
        alice = Device(replica.url, cluster.token(alice_id))
        bob = Device(replica.url, cluster.token(bob_id))
        await alice.connect()
        await bob.connect()
        try:
            conversation = (await alice.ok("createConversation", {"participantId": bob_id}))["id"]
            yield Target(cluster, replica, fast_path, alice, bob, conversation)
        finally:
            await alice.disconnect()
            await bob.disconnect()
    finally:
        cluster.stop()
        await server.stop(0)


class PeakRss:
    """Samples the replica's RSS while the block runs: ``growth`` is peak minus start."""

    def __init__(self, target: Target) -> None:
        self._target = target
        self.start = target.rss()
        self.peak = self.start
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> PeakRss:
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.peak = max(self.peak, self._target.rss())

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, self._target.rss())
            await asyncio.sleep(0.02)

    @property
    def growth(self) -> int:
        return self.peak - self.start


async def recv(ws: ClientConnection, timeout: float = 10.0) -> str | bytes:
    return await asyncio.wait_for(ws.recv(), timeout)


@contextlib.asynccontextmanager
async def raw_socket(target: Target, user: str | None = None) -> AsyncIterator[ClientConnection]:
    """A websocket straight to Engine.IO; Socket.IO-connected as ``user`` when one is given."""
    async with websockets.connect(target.ws_url, max_size=None, ping_interval=None) as ws:
        opening = await recv(ws)
        assert isinstance(opening, str) and opening.startswith("0"), opening
        if user is not None:
            await ws.send("40" + json.dumps({"token": target.token(user)}))
            while True:
                reply = await recv(ws)
                if reply != "2":
                    break
            assert isinstance(reply, str) and reply.startswith("40{"), reply
        yield ws


async def ack(ws: ClientConnection, ack_id: int, timeout: float = 10.0) -> Any:
    """The ack with ``ack_id``, answering pings and skipping events on the way."""
    prefix = f"43{ack_id}["
    deadline = time.monotonic() + timeout
    while True:
        message = await recv(ws, max(0.1, deadline - time.monotonic()))
        if message == "2":
            await ws.send("3")
        elif isinstance(message, str) and message.startswith(prefix):
            return json.loads(message[len(prefix) - 1 :])[0]


async def closed_by_server(ws: ClientConnection, timeout: float) -> bool:
    """Reads (answering nothing) until the server closes the connection, or ``timeout``."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            await asyncio.wait_for(ws.recv(), max(0.05, deadline - time.monotonic()))
    except websockets.ConnectionClosed:
        return True
    except TimeoutError:
        return False
    return False


def unique_token() -> str:
    return uuid.uuid4().hex
