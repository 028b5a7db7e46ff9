"""Steady chat traffic over official python-socketio clients, and what each device received.

Pairs of users talk across replicas: each sender sends at a steady rate and retries a failed or
unanswered send with the same clientMessageId (what a client app does), each recipient marks what
it received as read every couple of seconds. Devices record every ``newMessage`` and
``messageStatus`` with its arrival time and keep the last ``syncToken``, so a test can check, after
a fault, that every acknowledged message and every change reached every device exactly once, in
order, and measure how long the healing took.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import socketio

from tests.support.replicas import Cluster, Replica
from tests.support.service import unique

RETRYABLE = {"UNAVAILABLE", "RATE_LIMITED"}
CALL_TIMEOUT_SECONDS = 15.0


@dataclass
class Peer:
    """One user's one device, connected to one replica (until a test moves it)."""

    user: str
    token: str
    replica: Replica
    client: socketio.AsyncClient = field(init=False)
    # (message id, arrival time) of every newMessage from someone else, in arrival order.
    received: list[tuple[str, float]] = field(default_factory=list)
    # Messages a sync returned after a reconnection (by id).
    synced: set[str] = field(default_factory=set)
    # (message id, status) of every messageStatus, in arrival order.
    statuses: list[tuple[str, str]] = field(default_factory=list)
    sync_token: str | None = None
    reconnects: int = 0
    lost: asyncio.Event = field(default_factory=asyncio.Event)

    async def connect(self, replica: Replica | None = None) -> None:
        if replica is not None:
            self.replica = replica
        client = socketio.AsyncClient(reconnection=False)

        async def new_message(data: dict[str, Any]) -> None:
            if data["authorId"] != self.user:
                self.received.append((data["id"], time.monotonic()))
            self.sync_token = data.get("syncToken")  # .get: the suite also measures old releases

        async def message_status(data: dict[str, Any]) -> None:
            self.statuses.extend((i, data["status"]) for i in data["messageIds"])
            self.sync_token = data.get("syncToken")

        async def disconnected(*_: Any) -> None:
            self.lost.set()

        client.on("newMessage", new_message)
        client.on("messageStatus", message_status)
        client.on("disconnect", disconnected)
        await client.connect(
            self.replica.url, auth={"token": self.token}, transports=["websocket"], wait_timeout=10
        )
        self.client = client
        self.lost.clear()

    async def call(self, event: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        """The ack, or None when the socket is gone or no answer came in time."""
        try:
            reply: dict[str, Any] = await self.client.call(
                event, payload, timeout=CALL_TIMEOUT_SECONDS
            )
        except (TimeoutError, socketio.exceptions.SocketIOError):
            return None
        return reply

    async def resume_on(self, replica: Replica) -> None:
        """Reconnect to another replica and catch up from the last token, as an app would."""
        with contextlib.suppress(Exception):
            await self.client.disconnect()
        self.reconnects += 1
        await self.connect(replica)
        payload: dict[str, Any] = {"limit": 500}
        if self.sync_token is not None:
            payload["since"] = self.sync_token
        elif self.received:  # a release without sync tokens: its documented way
            payload["after"] = self.received[-1][0]
        while True:
            reply = await self.call("syncMessages", payload)
            if reply is None or not reply["ok"]:
                await asyncio.sleep(0.5)
                continue
            page = reply["data"]
            self.synced.update(m["id"] for m in page["messages"] if m["authorId"] != self.user)
            if not page["hasMore"]:
                return
            if "syncToken" in page:
                payload = {"limit": 500, "since": page["syncToken"]}
            else:
                payload = {"limit": 500, "after": page["messages"][-1]["id"]}

    def has(self) -> set[str]:
        return {i for i, _ in self.received} | self.synced

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.disconnect()


@dataclass
class Pair:
    sender: Peer
    recipient: Peer
    conversation: str = ""
    acked: list[tuple[str, float]] = field(default_factory=list)  # (id, ack time), send order
    read_up_to: str | None = None


@dataclass
class Traffic:
    """Pairs talking at a steady rate until stopped."""

    cluster: Cluster
    pairs: list[Pair]
    interval: float
    failures: Counter[str] = field(default_factory=Counter)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def start(
        cls, cluster: Cluster, replicas: list[Replica], *, pairs: int, rate: float
    ) -> Traffic:
        """``pairs`` senders and recipients on different replicas, ``rate`` messages/s in all."""
        made = []
        for index in range(pairs):
            alice, bob = unique(f"a{index}"), unique(f"b{index}")
            made.append(
                Pair(
                    Peer(alice, cluster.token(alice), replicas[index % len(replicas)]),
                    Peer(bob, cluster.token(bob), replicas[(index + 1) % len(replicas)]),
                )
            )
        traffic = cls(cluster, made, interval=pairs / rate)
        for pair in made:
            await pair.sender.connect()
            await pair.recipient.connect()
            reply = await pair.sender.call(
                "createConversation", {"participantId": pair.recipient.user}
            )
            assert reply is not None and reply["ok"], reply
            pair.conversation = reply["data"]["id"]
        for pair in made:
            traffic._tasks.append(asyncio.create_task(traffic._send(pair)))
            traffic._tasks.append(asyncio.create_task(traffic._read(pair)))
        return traffic

    def _failed(self, reply: dict[str, Any] | None) -> None:
        code = "NO_ANSWER" if reply is None else str(reply["error"]["code"])
        self.failures[code] += 1

    async def _send(self, pair: Pair) -> None:
        number = 0
        while not self._stop.is_set():
            payload = {
                "conversationId": pair.conversation,
                "content": f"message {number}",
                "clientMessageId": f"{pair.sender.user}-{number}",
            }
            while True:
                reply = await pair.sender.call("sendMessage", payload)
                if reply is not None and reply["ok"]:
                    pair.acked.append((reply["data"]["id"], time.monotonic()))
                    break
                self._failed(reply)
                await asyncio.sleep(0.2)  # the same clientMessageId again: never stored twice
            number += 1
            await asyncio.sleep(self.interval)

    async def _read(self, pair: Pair) -> None:
        while not self._stop.is_set():
            await asyncio.sleep(2.0)
            await self.mark_read(pair)

    async def mark_read(self, pair: Pair) -> None:
        received = pair.recipient.received
        if not received or received[-1][0] == pair.read_up_to:
            return
        newest = received[-1][0]
        reply = await pair.recipient.call(
            "markRead", {"conversationId": pair.conversation, "upToMessageId": newest}
        )
        if reply is not None and reply["ok"]:
            pair.read_up_to = newest
        else:
            self._failed(reply)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for pair in self.pairs:
            await pair.sender.close()
            await pair.recipient.close()

    # --- what arrived -------------------------------------------------------------------------

    def missing(self, acked_before: float | None = None) -> int:
        """Acknowledged messages (up to a time) that their recipient does not have."""
        count = 0
        for pair in self.pairs:
            has = pair.recipient.has()
            count += sum(
                1
                for message_id, at in pair.acked
                if (acked_before is None or at <= acked_before) and message_id not in has
            )
        return count
