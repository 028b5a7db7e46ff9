"""SIGTERM drains a replica: unready first, clients moved gradually, nothing acknowledged lost."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import socketio
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from messaging.tables import messages
from tests.support.balancer import balancing
from tests.support.replicas import Cluster, devices_on, logs_on_failure
from tests.support.service import unique
from tests.support.stalled import stalled_socket

NODE_CLIENTS = Path(__file__).resolve().parents[1] / "node"
CLIENTS = 200
RETRY_LATER = {"UNAVAILABLE", "RATE_LIMITED"}
WINDOW = 3.0
DEADLINE = 10.0


@dataclass
class Client:
    user: str
    token: str
    sio: socketio.AsyncClient = field(
        default_factory=lambda: socketio.AsyncClient(
            reconnection=True,
            reconnection_delay=0.2,
            reconnection_delay_max=1.0,
            randomization_factor=0.5,
        )
    )
    conversation: str = ""
    acked: list[str] = field(default_factory=list)
    disconnects: list[float] = field(default_factory=list)
    connects: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sio.on("connect", lambda: self.connects.append(time.monotonic()))
        self.sio.on("disconnect", lambda *_: self.disconnects.append(time.monotonic()))

    async def keep_sending(self, stop: asyncio.Event) -> None:
        """Send until stopped; a send interrupted by the drain is retried with the same key."""
        n = 0
        while not stop.is_set():
            key = f"{self.user}-{n}"
            while not stop.is_set():
                try:
                    reply = await self.sio.call(
                        "sendMessage",
                        {
                            "conversationId": self.conversation,
                            "content": key,
                            "clientMessageId": key,
                        },
                        timeout=3,
                    )
                except (TimeoutError, socketio.exceptions.SocketIOError):
                    await asyncio.sleep(0.1)
                    continue
                if not reply["ok"] and reply["error"]["code"] in RETRY_LATER:
                    await asyncio.sleep(0.1)  # what the docs tell clients to do
                    continue
                assert reply["ok"], reply
                self.acked.append(reply["data"]["id"])
                break
            n += 1
            await asyncio.sleep(random.uniform(0.05, 0.15))


async def test_sigterm_with_200_clients_sending_drains_without_losing_an_acked_message(
    cluster: Cluster,
) -> None:
    a, b = await cluster.start(
        2,
        drain_window_seconds=str(WINDOW),
        shutdown_deadline_seconds=str(DEADLINE),
        log_level="INFO",
        # Cached as in production: 200 clients share the test's event loop with the stand-in
        # Connections service, which would otherwise be asked on every send.
        connections_cache_ttl_seconds="60",
    )
    clients = [Client(user, cluster.token(user)) for user in (unique("u") for _ in range(CLIENTS))]
    with logs_on_failure(cluster):
        async with balancing([a]) as balancer:
            await asyncio.gather(
                *(
                    # 200 handshakes at once on a loaded 2-core machine can take longer than the
                    # client's default one-second wait: the test is about the drain, not that.
                    c.sio.connect(
                        balancer.url,
                        auth={"token": c.token},
                        transports=["websocket"],
                        wait_timeout=30,
                    )
                    for c in clients
                )
            )
            for left, right in zip(clients[::2], clients[1::2], strict=True):
                reply = await left.sio.call("createConversation", {"participantId": right.user})
                left.conversation = right.conversation = reply["data"]["id"]
            assert await a.metric("messaging_connected_sockets") == CLIENTS
            balancer.backends.append(b)  # the other replica joins the Service

            stop = asyncio.Event()
            senders = [asyncio.create_task(c.keep_sending(stop)) for c in clients]
            await asyncio.sleep(1.0)

            terminated = time.monotonic()
            a.signal(signal.SIGTERM)
            unready_at = None
            while unready_at is None:
                status, _ = await a.readyz()
                if status == 503:
                    unready_at = time.monotonic()
                await asyncio.sleep(0.01)
            exit_code = await a.wait_exit(timeout=DEADLINE + 2)
            exited = time.monotonic()
            # Checked here, where a failure prints the replica's last lines: what the drain did.
            assert exit_code == 0
            assert exited - terminated < DEADLINE, "the process outlived its shutdown deadline"

            reconnect_deadline = time.monotonic() + 15
            while not all(c.sio.connected for c in clients):
                assert time.monotonic() < reconnect_deadline, "some clients never came back"
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)  # a few sends on the new replica
            stop.set()
            await asyncio.gather(*senders)
            assert await b.metric("messaging_connected_sockets") == CLIENTS
            await asyncio.gather(*(c.sio.disconnect() for c in clients))

    first_disconnect = min(c.disconnects[0] for c in clients)
    last_disconnect = max(c.disconnects[0] for c in clients)
    assert unready_at < first_disconnect, "readiness must turn false before clients are moved"
    assert last_disconnect - terminated < DEADLINE
    assert last_disconnect - first_disconnect > WINDOW / 2, "disconnects must be spread out"
    assert all(len(c.connects) >= 2 for c in clients), "every client reconnected"
    assert balancer.routed[b.name] >= CLIENTS, "the reconnections went to the other replica"

    acked = {uuid.UUID(i) for c in clients for i in c.acked}
    engine = create_async_engine(
        cluster.database_url.replace("postgresql://", "postgresql+asyncpg://")
    )
    async with engine.connect() as conn:
        stored = set(
            (await conn.execute(select(messages.c.id).where(messages.c.id.in_(acked)))).scalars()
        )
    await engine.dispose()
    missing = acked - stored
    assert not missing, f"{len(missing)} acknowledged messages are not in the database"
    print(
        f"drain: {len(acked)} acked, unready after {unready_at - terminated:.3f}s, disconnects "
        f"over {last_disconnect - first_disconnect:.2f}s, exit after {exited - terminated:.2f}s"
    )


async def test_the_official_js_client_reconnects_to_another_replica_after_a_drain(
    cluster: Cluster,
) -> None:
    """socket.io-client treats the drain's transport close as a lost connection and comes back."""
    a, b = await cluster.start(2, drain_window_seconds="2", shutdown_deadline_seconds="6")
    tokens = [cluster.token(unique("js")) for _ in range(20)]
    script = NODE_CLIENTS / "socketio_client.mjs"
    with logs_on_failure(cluster):
        async with balancing([a]) as balancer:
            node = await asyncio.create_subprocess_exec(
                "node", str(script), "hold", balancer.url, "20", *tokens,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert node.stdout is not None and node.stdin is not None
            ready = json.loads(await asyncio.wait_for(node.stdout.readline(), 30))
            assert ready == {"ready": True}
            assert await a.metric("messaging_connected_sockets") == 20
            balancer.backends.append(b)
            a.signal(signal.SIGTERM)
            await a.wait_exit(timeout=8)
            deadline = time.monotonic() + 15
            while await b.metric("messaging_connected_sockets") < 20:
                assert time.monotonic() < deadline, "the JS clients did not all come back"
                await asyncio.sleep(0.2)
            node.stdin.close()
            report = json.loads((await asyncio.wait_for(node.stdout.read(), 30)).decode())
    assert report["connected"] == 20
    assert all(s["connects"] >= 2 for s in report["stats"])
    assert {reason for s in report["stats"] for reason in s["disconnects"]} == {"transport close"}


@pytest.mark.parametrize("fast_path", ["true", "false"], ids=["fast-path", "stock"])
async def test_a_client_that_stops_reading_does_not_hold_up_the_drain(
    cluster: Cluster, fast_path: str
) -> None:
    """A socket whose answers pile up unread (a phone in a tunnel) is dropped, not waited for:
    the drain closes the sockets one by one, and one close waiting for the client to read would
    hold up every close after it until the shutdown deadline ended the process."""
    (a,) = await cluster.start(
        1,
        drain_window_seconds="1",
        shutdown_deadline_seconds=str(DEADLINE),
        socketio_fast_path=fast_path,
        # Never dropped as a slow consumer before the drain: the test is about the drain.
        socketio_max_outbound_buffer_bytes=str(256 * 1024 * 1024),
    )
    reader, writer = unique("stalled"), unique("writer")
    with logs_on_failure(cluster):
        async with devices_on(cluster, (writer, a)) as (device, *_):
            conversation = (await device.ok("createConversation", {"participantId": reader}))["id"]
            for _ in range(4):
                await asyncio.gather(
                    *(
                        device.ok(
                            "sendMessage", {"conversationId": conversation, "content": "x" * 2000}
                        )
                        for _ in range(25)
                    )
                )
            with stalled_socket(a.http_port, cluster.token(reader)) as stalled:
                for i in range(20):  # about 4 MB of answers, far more than the kernel holds
                    stalled.send_text(f'42{i}["syncMessages",{{"limit":100}}]')
                await asyncio.sleep(2.0)  # the answers are computed and queued unread

                terminated = time.monotonic()
                a.signal(signal.SIGTERM)
                exit_code = await a.wait_exit(timeout=DEADLINE + 2)
                exited = time.monotonic()
        assert exit_code == 0
        assert exited - terminated < DEADLINE / 2, f"exit took {exited - terminated:.1f}s"
