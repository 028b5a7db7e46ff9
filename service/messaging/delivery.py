"""Real-time fan-out: an event for some users reaches every socket of theirs, on any replica.

Each user has a Socket.IO room on the process that holds their sockets. An event is emitted to the
local rooms at once, and, with Redis, published on one channel per recipient user
(``deliver:{userId}``). A replica subscribes only to the channels of users it holds sockets for,
so it never decodes traffic meant for other replicas' users (python-socketio's
AsyncRedisManager puts every event of the cluster on one channel, which every replica decodes).

The listener is supervised: it pings Redis, and when its connection breaks or goes quiet it
resubscribes with doubling back-off, while ``messaging_backplane_listener_up`` says whether it is
healthy. An event is encoded once, on the replica where it happens: the Socket.IO packet text
travels through Redis as is and is written to the receiving sockets without being decoded and
encoded again. Publishing never blocks a sender: events go through a bounded queue drained by
one task that pipelines PUBLISH commands; if Redis is away they are dropped and counted,
because PostgreSQL holds every message and clients catch up with ``syncMessages``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any

import orjson
import socketio
from engineio import packet as eio_packet
from redis.asyncio import Redis
from redis.exceptions import RedisError

from messaging import metrics
from messaging.redis_wire import RedisWire, command
from messaging.websocket_transport import DirectSocket

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "deliver:"
PUBLISH_QUEUE_LIMIT = 50_000
PUBLISH_BATCH = 512
PUBLISH_TIMEOUT_SECONDS = 2.0
SUBSCRIBE_WAIT_SECONDS = 1.0
LISTENER_PING_SECONDS = 2.0
BACKOFF_START_SECONDS = 0.1
BACKOFF_CAP_SECONDS = 5.0


def user_room(user_id: str) -> str:
    return f"user:{user_id}"


def user_channel(user_id: str) -> str:
    return f"{CHANNEL_PREFIX}{user_id}"


def event_packet(event: str, data: Any) -> eio_packet.Packet:
    """The Engine.IO message carrying a Socket.IO EVENT for the default namespace."""
    return eio_packet.Packet(eio_packet.MESSAGE, data="2" + orjson.dumps([event, data]).decode())


class Delivery:
    """Sends server-to-client events to users, locally and through the Redis backplane."""

    def __init__(
        self, server: socketio.AsyncServer, *, replica_id: str, redis: Redis | None
    ) -> None:
        self._server = server
        self._replica_id = replica_id
        self._redis = redis
        self._queue: asyncio.Queue[tuple[list[str], bytes]] = asyncio.Queue(PUBLISH_QUEUE_LIMIT)
        self._watched: set[str] = set()
        self._pubsub: RedisWire | None = None
        self._control = f"{CHANNEL_PREFIX}replica:{replica_id}"
        self._own_header = orjson.dumps({"o": replica_id})[:-1] + b","
        self._pending: dict[str, asyncio.Future[None]] = {}
        self._listener_healthy = asyncio.Event()
        self._last_heard = 0.0
        # Metric series used per message, resolved once.
        self._delivered_local = metrics.COMMIT_TO_DELIVER.labels(path="local")
        self._delivered_remote = metrics.COMMIT_TO_DELIVER.labels(path="backplane")
        self._published = metrics.BACKPLANE_PUBLISHED.labels(outcome="published")

    @property
    def uses_redis(self) -> bool:
        return self._redis is not None

    @property
    def listener_healthy(self) -> bool:
        return self._redis is None or self._listener_healthy.is_set()

    async def to_users(
        self,
        user_ids: Iterable[str],
        event: str,
        data: Any,
        *,
        skip_sid: str | None = None,
        committed_at: float | None = None,
    ) -> None:
        """Deliver ``event`` to every socket of ``user_ids`` except ``skip_sid``."""
        users = list(dict.fromkeys(user_ids))
        packet = event_packet(event, data)
        await self._emit_local(users, packet, skip_sid)
        if committed_at is not None:
            self._delivered_local.observe(time.time() - committed_at)
        if self._redis is None:
            return
        header = orjson.dumps(
            {"o": self._replica_id, "s": skip_sid, "t": time.time(), "c": committed_at}
        )
        envelope = header + b"\n" + packet.data.encode()
        try:
            self._queue.put_nowait((users, envelope))
        except asyncio.QueueFull:
            metrics.BACKPLANE_PUBLISHED.labels(outcome="dropped").inc()

    async def _emit_local(
        self, users: list[str], packet: eio_packet.Packet, skip_sid: str | None
    ) -> None:
        """Queue the packet on every local socket of ``users`` (their sockets' writers send it)."""
        rooms = [user_room(u) for u in users]
        eio = self._server.eio
        sockets = eio.sockets
        for sid, eio_sid in self._server.manager.get_participants("/", rooms):
            if sid == skip_sid:
                continue
            socket = sockets.get(eio_sid)
            if type(socket) is DirectSocket and socket.send_now(packet):
                continue
            await eio.send_packet(eio_sid, packet)

    # --- subscriptions -------------------------------------------------------------------------

    async def watch(self, user_id: str) -> None:
        """Start receiving ``user_id``'s events from other replicas (first socket of a user).

        Waits (briefly) for Redis to confirm the subscription, so an event published right after
        the socket's handshake is not missed; if Redis is slow or away, the socket connects
        anyway and catches up with syncMessages.
        """
        self._watched.add(user_id)
        if self._pubsub is None or not self._listener_healthy.is_set():
            return
        channel = user_channel(user_id)
        future = self._pending.get(channel)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._pending[channel] = future
            try:
                self._pubsub.send([command("SUBSCRIBE", channel)])
            except (RedisError, OSError) as exc:
                self._pending.pop(channel, None)
                log.warning("subscribe failed", extra={"error": repr(exc)})
                return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(future), SUBSCRIBE_WAIT_SECONDS)

    async def unwatch(self, user_id: str) -> None:
        """Stop receiving ``user_id``'s events (their last socket here is gone)."""
        self._watched.discard(user_id)
        if self._pubsub is None or not self._listener_healthy.is_set():
            return
        with contextlib.suppress(RedisError, OSError):
            self._pubsub.send([command("UNSUBSCRIBE", user_channel(user_id))])

    # --- background tasks ----------------------------------------------------------------------

    async def run_publisher(self) -> None:
        """Drain the publish queue in pipelined batches, forever (one write per batch)."""
        assert self._redis is not None
        wire: RedisWire | None = None
        while True:
            batch = [await self._queue.get()]
            while len(batch) < PUBLISH_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            commands = [
                command("PUBLISH", user_channel(user_id), envelope)
                for users, envelope in batch
                for user_id in users
            ]
            try:
                if wire is None or not wire.connected:
                    wire = await RedisWire.open(self._redis)
                await asyncio.wait_for(wire.execute(commands), PUBLISH_TIMEOUT_SECONDS)
                self._published.inc(len(batch))
            except (RedisError, OSError, TimeoutError) as exc:
                metrics.BACKPLANE_PUBLISHED.labels(outcome="failed").inc(len(batch))
                log.warning("backplane publish failed", extra={"error": repr(exc)})
                if wire is not None:
                    wire.close()
                    wire = None

    async def run_listener(self) -> None:
        """Receive other replicas' events for our users, resubscribing whenever the link breaks."""
        assert self._redis is not None
        backoff = BACKOFF_START_SECONDS
        while True:
            try:
                await self._listen_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "backplane listener lost its subscription; resubscribing",
                    extra={"error": repr(exc), "retry_in": backoff},
                )
            finally:
                self._listener_healthy.clear()
                metrics.BACKPLANE_LISTENER_UP.set(0)
                await self._close_pubsub()
            metrics.BACKPLANE_LISTENER_RESTARTS.inc()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_CAP_SECONDS)

    async def _listen_once(self) -> None:
        """One subscription's life: read until the link breaks or goes quiet, then return."""
        assert self._redis is not None
        received: list[list[Any]] = []
        arrived = asyncio.Event()

        def on_push(reply: list[Any]) -> None:
            # Called from the connection's data_received: queue, and wake the reader once for
            # every message that arrived in this read.
            received.append(reply)
            arrived.set()

        pubsub = await RedisWire.open(self._redis, on_push=on_push)
        self._pubsub = pubsub
        channels = [self._control, *(user_channel(u) for u in self._watched)]
        pubsub.send([command("SUBSCRIBE", *channels)])
        self._last_heard = time.monotonic()
        reader = asyncio.create_task(self._read(received, arrived), name="backplane-reader")
        try:
            while True:
                done, _ = await asyncio.wait({reader, pubsub.lost}, timeout=LISTENER_PING_SECONDS)
                if reader in done:
                    reader.result()  # raises what broke the subscription
                if done:
                    raise ConnectionError("the subscription ended")
                if time.monotonic() - self._last_heard > 3 * LISTENER_PING_SECONDS:
                    raise TimeoutError("no reply from Redis within three ping intervals")
                pubsub.send([command("PING")])  # the reply (a pong) counts as hearing from Redis
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _read(self, received: list[list[Any]], arrived: asyncio.Event) -> None:
        while True:
            await arrived.wait()
            arrived.clear()
            self._last_heard = time.monotonic()
            batch = received[:]
            received.clear()
            for reply in batch:
                await self._handle(reply)

    async def _handle(self, reply: list[Any]) -> None:
        kind = reply[0]
        if kind == b"message":
            await self._deliver_remote(reply[1], reply[2])
            return
        if kind == b"pong":
            metrics.BACKPLANE_LAST_HEARTBEAT.set(time.time())
            return
        if kind == b"subscribe":
            channel = reply[1].decode()
            if channel == self._control:
                self._listener_healthy.set()
                metrics.BACKPLANE_LISTENER_UP.set(1)
                log.info("backplane listener subscribed", extra={"users": len(self._watched)})
            future = self._pending.pop(channel, None)
            if future is not None and not future.done():
                future.set_result(None)

    async def _deliver_remote(self, channel: bytes, data: bytes) -> None:
        if not channel.startswith(b"deliver:"):
            return
        header, _, text = data.partition(b"\n")
        if header.startswith(self._own_header):
            return  # already delivered locally when it was published
        envelope = orjson.loads(header)
        metrics.BACKPLANE_RECEIVED.inc()
        metrics.BACKPLANE_LAG.observe(max(0.0, time.time() - envelope["t"]))
        user_id = channel[len(CHANNEL_PREFIX) :].decode()
        packet = eio_packet.Packet(eio_packet.MESSAGE, data=text.decode())
        await self._emit_local([user_id], packet, envelope["s"])
        if envelope["c"] is not None:
            self._delivered_remote.observe(max(0.0, time.time() - envelope["c"]))

    async def _close_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        for future in self._pending.values():
            if not future.done():
                future.cancel()
        self._pending.clear()
        if pubsub is not None:
            pubsub.close()
