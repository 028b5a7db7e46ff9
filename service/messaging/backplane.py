"""The Redis backplane: bytes for a user travel on that user's channel to the replicas that hold
their sockets, on one Redis or on a Redis Cluster.

Each user has a channel (``deliver:{userId}``); a replica subscribes only to the channels of the
users it holds sockets for. What travels is opaque here (``Delivery`` encodes and decodes it).

On one Redis (``MESSAGING_REDIS_URL``) the channels are classic pub/sub: one subscriber
connection, ``SUBSCRIBE``/``PUBLISH``. On a Redis Cluster (``MESSAGING_REDIS_CLUSTER=true``)
classic pub/sub would send every message to every node over the cluster bus, so the channels are
*sharded* (``SSUBSCRIBE``/``SPUBLISH``): a user's channel is ``deliver:{<userId>}``, its braces a
hash tag, so it lives on the slot of the user's id (where their presence and rate-limit keys are
too), and a message crosses only the node that owns that slot. The backplane reads the slot map
(``CLUSTER SLOTS``), keeps one subscriber connection per master node, subscribes each channel on
the node that owns its slot (one ``SSUBSCRIBE`` per slot: a command's channels must share one),
and publishes each batch as one pipelined write per node. The channels of ``listen`` (rare
notices every replica hears, such as block changes) are sharded too, and ``notify`` publishes on
them with ``SPUBLISH`` at their slot's master: every replica's subscription is on that one node,
so the count it answers is every replica's. (With classic pub/sub the count is only that of the
node the command reached, and a block change waited for no one.)

When the cluster changes under it: a ``MOVED`` answer, a ``sunsubscribe`` the backplane did not
ask for (the node gave the slot away, or a master became a replica at a failover), or a node's
connection lost or silent (a master died), the listener starts over: it reads the slot map
again, reconnects, resubscribes every channel, and tells ``Delivery`` through ``subscribed``,
which reads the change log for everything published while it was not listening. The publisher
reads the slot map again and sends the failed part of its batch again.

The listener is supervised: a dropped connection is noticed at once and a silent one within one
ping interval (a ping unanswered by the next), after a freeze of the process it reads what Redis
buffered before judging the link, and it resubscribes with jittered back-off that resets after a
good subscription. Publishing never blocks a sender: events go through a bounded queue drained
by one task that pipelines PUBLISH commands; a failed batch is retried for a while, then dropped
and counted (the receivers heal from the log).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.crc import key_slot
from redis.exceptions import RedisError, ResponseError

from messaging import metrics
from messaging.redis_wire import RedisWire, command

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "deliver:"
PUBLISH_QUEUE_LIMIT = 50_000
PUBLISH_BATCH = 512
PUBLISH_TIMEOUT_SECONDS = 2.0
SUBSCRIBE_WAIT_SECONDS = 1.0
LISTENER_PING_SECONDS = 2.0
# A wake-up this much later than asked means the process was frozen (SIGSTOP, a VM pause).
STALL_SECONDS = 1.0
BACKOFF_START_SECONDS = 0.1
BACKOFF_CAP_SECONDS = 2.0  # a replica is ready again within seconds of Redis returning
PUBLISH_RETRY_SECONDS = 15.0
# The payload of the PING sent after a node's subscriptions: its answer says they are all done.
READY = b"backplane-ready"
# Answers of a cluster that is changing: read the slot map again and retry.
CLUSTER_CHANGING = (b"MOVED", b"ASK", b"CLUSTERDOWN", b"TRYAGAIN")

UserEvent = Callable[[str, bytes], Awaitable[None]]


def jittered(seconds: float) -> float:
    """Between half and all of ``seconds``, so replicas that failed together retry apart."""
    return seconds * random.uniform(0.5, 1.0)  # noqa: S311 - timing jitter, not a secret


def user_channel(user_id: str, *, cluster: bool = False) -> str:
    """The user's channel; on a cluster its braces make the user id the hash tag."""
    return f"{CHANNEL_PREFIX}{{{user_id}}}" if cluster else f"{CHANNEL_PREFIX}{user_id}"


def channel_user(channel: bytes, *, cluster: bool = False) -> str:
    """The user id of a channel named by ``user_channel``."""
    name = channel[len(CHANNEL_PREFIX) :]
    return (name[1:-1] if cluster else name).decode()


# --- the slot map (pure) ---------------------------------------------------------------------

Node = tuple[str, int]  # host, port


@dataclass(frozen=True, slots=True)
class SlotMap:
    """Which master serves each of the cluster's 16384 slots."""

    ranges: tuple[tuple[int, int, Node], ...]  # (first slot, last slot, master), sorted

    @classmethod
    def from_cluster_slots(cls, reply: Sequence[Any]) -> SlotMap:
        """From a ``CLUSTER SLOTS`` reply: ``[[first, last, [host, port, id], replicas...]]``."""
        ranges = []
        for entry in reply:
            first, last, master = int(entry[0]), int(entry[1]), entry[2]
            host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
            ranges.append((first, last, (host, int(master[1]))))
        return cls(tuple(sorted(ranges)))

    @property
    def nodes(self) -> list[Node]:
        """The masters, each once, in slot order."""
        return list(dict.fromkeys(node for _, _, node in self.ranges))

    def node_of_slot(self, slot: int) -> Node | None:
        for first, last, node in self.ranges:
            if first <= slot <= last:
                return node
        return None  # not served (the cluster is missing a master)

    def node_of(self, channel: str) -> Node | None:
        return self.node_of_slot(key_slot(channel.encode()))


def by_node_and_slot(channels: Iterable[str], slots: SlotMap) -> dict[Node, dict[int, list[str]]]:
    """Channels grouped by the master that owns their slot, then by slot (one SSUBSCRIBE each)."""
    grouped: dict[Node, dict[int, list[str]]] = {}
    for channel in channels:
        slot = key_slot(channel.encode())
        node = slots.node_of_slot(slot)
        if node is not None:
            grouped.setdefault(node, {}).setdefault(slot, []).append(channel)
    return grouped


def cluster_changing(reply: Any) -> bool:
    """An error reply saying the cluster moved or lost a slot."""
    return isinstance(reply, ResponseError) and str(reply).encode().startswith(CLUSTER_CHANGING)


class ClusterChanged(ConnectionError):
    """The slot map this process holds is out of date (a failover, a migrated slot)."""


# --- the backplane ---------------------------------------------------------------------------


class Backplane:
    """Per-user channels on Redis: a publisher queue, and a supervised subscriber."""

    def __init__(self, redis: Redis, *, replica_id: str, cluster: bool = False) -> None:
        # ``redis`` only lends its connection settings (address, TLS, credentials) to our wires.
        self._redis = redis
        self._cluster = cluster
        self._queue: asyncio.Queue[tuple[list[str], bytes]] = asyncio.Queue(PUBLISH_QUEUE_LIMIT)
        self._users: set[str] = set()
        self._unsubscribing: dict[str, int] = {}  # channel -> SUNSUBSCRIBEs not yet answered
        self._control = f"{CHANNEL_PREFIX}replica:{replica_id}"
        self._pending: dict[str, asyncio.Future[None]] = {}
        self._confirmed: set[str] = set()  # channels Redis confirmed on the current links
        self._links: dict[Node | None, RedisWire] = {}  # None: the one Redis
        self._slots: SlotMap | None = None  # the latest read
        self._listen_slots: SlotMap | None = None  # the one the listener's links follow
        self._slots_lock = asyncio.Lock()
        self._subscribed = False
        self._awaiting: set[Node | None] = set()  # links (and the control channel) not ready yet
        self._healthy = asyncio.Event()
        self._heard: dict[Node | None, float] = {}
        # Channels other parts of the service hear (``listen``), and what they are told when
        # the subscription is (re)established (they may have missed messages).
        self._channels: dict[bytes, Callable[[bytes], None]] = {}
        self._on_subscribed: list[Callable[[], None]] = []
        self._on_user: UserEvent | None = None
        self._published = metrics.BACKPLANE_PUBLISHED.labels(outcome="published")
        self._notice_wires: dict[Node | None, RedisWire] = {}
        self._notice_lock = asyncio.Lock()

    @property
    def cluster(self) -> bool:
        return self._cluster

    @property
    def healthy(self) -> bool:
        return self._healthy.is_set()

    def channel(self, user_id: str) -> str:
        return user_channel(user_id, cluster=self._cluster)

    def hears(self, user_id: str) -> bool:
        """Redis confirmed the user's channel on the links listening now: what anyone publishes
        on it reaches this replica."""
        return self._healthy.is_set() and self.channel(user_id) in self._confirmed

    def receive(self, on_user: UserEvent, *, subscribed: Callable[[], None]) -> None:
        """Where messages on users' channels go, and who hears of each (re)subscription."""
        self._on_user = on_user
        self._on_subscribed.append(subscribed)

    def on_subscribed(self, callback: Callable[[], None]) -> None:
        """Have ``callback`` called at every (re)subscription (the cluster may have changed)."""
        self._on_subscribed.append(callback)

    def listen(
        self,
        channel: str,
        handler: Callable[[bytes], None],
        *,
        subscribed: Callable[[], None] | None = None,
    ) -> None:
        """Hear ``channel`` (not a user's); see ``Delivery.listen``."""
        self._channels[channel.encode()] = handler
        if subscribed is not None:
            self._on_subscribed.insert(0, subscribed)

    async def notify(self, channel: str, data: bytes) -> int:
        """Publish ``data`` on a ``listen`` channel now; returns how many subscriptions got it.

        Raises ``RedisError``/``OSError`` when Redis cannot take it (the caller decides what an
        unannounced notice means); a moved slot is followed once.
        """
        if not self._cluster:
            return await self._notice(None, command("PUBLISH", channel, data))
        slots = self._slots or await self._refresh_slots(None)
        for _ in range(2):
            node = slots.node_of(channel)
            if node is None:
                raise ClusterChanged(f"no master serves {channel}")
            try:
                return await self._notice(node, command("SPUBLISH", channel, data))
            except ResponseError as exc:
                if not cluster_changing(exc):
                    raise
                slots = await self._refresh_slots(slots)
        raise ClusterChanged(f"{channel} kept moving")

    async def _notice(self, node: Node | None, publish: bytes) -> int:
        async with self._notice_lock:
            wire = self._notice_wires.get(node)
            if wire is None or not wire.connected:
                wire = self._notice_wires[node] = await RedisWire.open(self._redis, address=node)
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
                (reply,) = await wire.execute([publish])
        except (RedisError, OSError, TimeoutError):
            wire.close()
            raise
        if isinstance(reply, Exception):
            raise reply
        return int(reply)

    def publish(self, user_ids: list[str], envelope: bytes) -> None:
        """Queue ``envelope`` for the channels of ``user_ids`` (dropped and counted when full)."""
        try:
            self._queue.put_nowait((user_ids, envelope))
        except asyncio.QueueFull:
            metrics.BACKPLANE_PUBLISHED.labels(outcome="dropped").inc()

    # --- subscriptions -------------------------------------------------------------------------

    async def subscribe(self, user_id: str) -> None:
        """Subscribe to the user's channel; waits (briefly) for Redis to confirm it.

        While the listener is resubscribing this only records the user: the resubscription
        includes them (and the log fills what was missed).
        """
        self._users.add(user_id)
        if not self._healthy.is_set():
            return
        channel = self.channel(user_id)
        future = self._pending.get(channel)
        if future is None:
            link = self._link_of(channel)
            if link is None:
                return
            future = asyncio.get_running_loop().create_future()
            self._pending[channel] = future
            try:
                link.send([command("SSUBSCRIBE" if self._cluster else "SUBSCRIBE", channel)])
            except (RedisError, OSError) as exc:
                self._pending.pop(channel, None)
                log.warning("subscribe failed", extra={"error": repr(exc)})
        try:
            async with asyncio.timeout(SUBSCRIBE_WAIT_SECONDS):
                await asyncio.shield(future)
        except TimeoutError:
            pass  # unconfirmed: the caller goes on, and the healer fills what it misses
        except asyncio.CancelledError:
            # A resubscription dropped the request (and sends its own); the caller goes on. The
            # caller itself being cancelled is not that, and must not be swallowed.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise

    def unsubscribe(self, user_id: str) -> None:
        self._users.discard(user_id)
        self._confirmed.discard(self.channel(user_id))
        if not self._healthy.is_set():
            return
        channel = self.channel(user_id)
        link = self._link_of(channel)
        if link is None:
            return
        with contextlib.suppress(RedisError, OSError):
            if self._cluster:
                link.send([command("SUNSUBSCRIBE", channel)])
                self._unsubscribing[channel] = self._unsubscribing.get(channel, 0) + 1
            else:
                link.send([command("UNSUBSCRIBE", channel)])

    def _link_of(self, channel: str) -> RedisWire | None:
        if not self._cluster:
            return self._links.get(None)
        # The listener's own map: if it is out of date the node answers MOVED, and the listener
        # starts over on a fresh one (with this user among those it resubscribes).
        node = self._listen_slots.node_of(channel) if self._listen_slots is not None else None
        return self._links.get(node) if node is not None else None

    # --- the slot map --------------------------------------------------------------------------

    async def _refresh_slots(self, stale: SlotMap | None) -> SlotMap:
        """Read the slot map from any node that answers (once, for everyone who saw ``stale``)."""
        async with self._slots_lock:
            if self._slots is not None and self._slots is not stale:
                return self._slots  # someone else read it meanwhile
            known = self._slots.nodes if self._slots is not None else []
            candidates: list[Node | None] = [None, *known]
            error: Exception = ConnectionError("no cluster node answered")
            for node in candidates:
                try:
                    wire = await RedisWire.open(self._redis, address=node)
                except (RedisError, OSError) as exc:
                    error = exc
                    continue
                try:
                    async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
                        (reply,) = await wire.execute([command("CLUSTER", "SLOTS")])
                    if isinstance(reply, Exception):
                        raise reply
                    slots = SlotMap.from_cluster_slots(reply)
                except (RedisError, OSError, TimeoutError) as exc:
                    error = exc
                    continue
                finally:
                    wire.close()
                if slots.ranges:
                    self._slots = slots
                    return slots
            raise error

    # --- publishing ------------------------------------------------------------------------------

    async def run_publisher(self) -> None:
        """Drain the publish queue in pipelined batches, forever (one write per batch and node).

        A batch that failed is sent again, first, once Redis answers (receivers drop what they
        already had); one that kept failing for ``PUBLISH_RETRY_SECONDS`` is dropped and counted,
        and the receivers fill the gap from the change log.
        """
        wires: dict[Node | None, RedisWire] = {}
        carried: list[tuple[str, bytes]] = []
        failing_since = 0.0
        backoff = BACKOFF_START_SECONDS
        while True:
            batch = [] if carried else [await self._queue.get()]
            while len(batch) < PUBLISH_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            items = carried + [
                (self.channel(user_id), envelope) for users, envelope in batch for user_id in users
            ]
            failed, error = await self._publish(items, wires)
            sent = len(items) - len(failed)
            if carried and sent:
                metrics.BACKPLANE_PUBLISHED.labels(outcome="retried").inc(min(sent, len(carried)))
                if not failed:
                    log.info("backplane publishing again", extra={"retried": len(carried)})
            self._published.inc(max(0, sent - len(carried)))
            if not failed:
                carried = []
                backoff = BACKOFF_START_SECONDS
                continue
            if not carried:
                failing_since = time.monotonic()
                log.warning("backplane publish failed", extra={"error": repr(error)})
            metrics.BACKPLANE_PUBLISHED.labels(outcome="failed").inc(
                max(0, len(failed) - len(carried))
            )
            carried = failed[-PUBLISH_QUEUE_LIMIT:]
            if time.monotonic() - failing_since > PUBLISH_RETRY_SECONDS:
                metrics.BACKPLANE_PUBLISHED.labels(outcome="dropped").inc(len(carried))
                log.warning("backplane publishes dropped", extra={"events": len(carried)})
                carried = []
            await asyncio.sleep(jittered(backoff))
            backoff = min(backoff * 2, BACKOFF_CAP_SECONDS)

    async def _publish(
        self, items: list[tuple[str, bytes]], wires: dict[Node | None, RedisWire]
    ) -> tuple[list[tuple[str, bytes]], Exception | None]:
        """Publish ``items``; returns those that failed, and why (when a connection broke)."""
        try:
            if self._cluster:
                return await self._publish_cluster(items, wires)
            await self._publish_one(items, wires)
        except (RedisError, OSError, TimeoutError) as exc:
            for wire in wires.values():
                wire.close()
            wires.clear()
            return items, exc
        return [], None

    async def _publish_one(
        self, items: list[tuple[str, bytes]], wires: dict[Node | None, RedisWire]
    ) -> None:
        wire = wires.get(None)
        if wire is None or not wire.connected:
            wire = wires[None] = await RedisWire.open(self._redis)
        commands = [command("PUBLISH", channel, envelope) for channel, envelope in items]
        async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
            await wire.execute(commands)

    async def _publish_cluster(
        self, items: list[tuple[str, bytes]], wires: dict[Node | None, RedisWire]
    ) -> tuple[list[tuple[str, bytes]], Exception | None]:
        """SPUBLISH each item on its slot's master, all nodes at once; returns what failed."""
        slots = self._slots or await self._refresh_slots(None)
        by_node: dict[Node | None, list[tuple[str, bytes]]] = {}
        for item in items:
            by_node.setdefault(slots.node_of(item[0]), []).append(item)

        async def send(node: Node | None, part: list[tuple[str, bytes]]) -> list[Any]:
            if node is None:
                raise ClusterChanged("a slot has no master")
            wire = wires.get(node)
            if wire is None or not wire.connected:
                wire = wires[node] = await RedisWire.open(self._redis, address=node)
            commands = [command("SPUBLISH", channel, envelope) for channel, envelope in part]
            async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
                return await wire.execute(commands)

        parts = list(by_node.items())
        outcomes = await asyncio.gather(
            *(send(node, part) for node, part in parts), return_exceptions=True
        )
        failed: list[tuple[str, bytes]] = []
        error: Exception | None = None
        changed = False
        for (node, part), outcome in zip(parts, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, RedisError | OSError | TimeoutError):
                    raise outcome
                failed.extend(part)
                error = error or outcome
                changed = True
                stale = wires.pop(node, None)
                if stale is not None:
                    stale.close()
                continue
            for item, reply in zip(part, outcome, strict=True):
                if isinstance(reply, Exception):
                    failed.append(item)
                    error = error or reply
                    changed = changed or cluster_changing(reply)
        if changed:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await self._refresh_slots(slots)
        return failed, error

    # --- listening -------------------------------------------------------------------------------

    async def run_listener(self) -> None:
        """Receive our users' channels, resubscribing whenever a link breaks or the map moves."""
        backoff = BACKOFF_START_SECONDS
        while True:
            self._subscribed = False
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
                self._healthy.clear()
                metrics.BACKPLANE_LISTENER_UP.set(0)
                self._close_links()
            if self._subscribed:
                backoff = BACKOFF_START_SECONDS  # it worked for a while: start over
            metrics.BACKPLANE_LISTENER_RESTARTS.inc()
            await asyncio.sleep(jittered(backoff))
            backoff = min(backoff * 2, BACKOFF_CAP_SECONDS)

    async def _listen_once(self) -> None:
        """One subscription's life: read until a link breaks or goes quiet, then return."""
        received: list[tuple[Node | None, Any]] = []
        arrived = asyncio.Event()

        def on_push(node: Node | None) -> Callable[[Any], None]:
            def push(reply: Any) -> None:
                # Called from the connection's data_received: queue, and wake the reader once
                # for every message that arrived in this read. Hearing anything proves the link.
                self._heard[node] = time.monotonic()
                received.append((node, reply))
                arrived.set()

            return push

        slots = await self._refresh_slots(self._slots) if self._cluster else None
        self._listen_slots = slots
        nodes: list[Node | None] = list(slots.nodes) if slots is not None else [None]
        self._unsubscribing.clear()
        for node in nodes:
            self._links[node] = await RedisWire.open(
                self._redis, on_push=on_push(node), address=node
            )
            self._heard[node] = time.monotonic()
        main = self._links[nodes[0]]
        notices = [c.decode() for c in self._channels]
        if slots is None:
            # One command, the control channel last: when its confirmation arrives, every
            # other channel is confirmed too (``hears``).
            self._awaiting = {None}
            users = [self.channel(u) for u in self._users]
            main.send([command("SUBSCRIBE", *notices, *users, self._control)])
        else:
            # Each node's SSUBSCRIBEs (the notices' among them), then a PING whose answer says
            # they are done; the control channel, classic, on the first node. Ready when every
            # node answered and the control channel is confirmed (``None`` stands for it).
            self._awaiting = {None, *nodes}
            grouped = by_node_and_slot([*notices, *(self.channel(u) for u in self._users)], slots)
            for master in slots.nodes:
                by_slot = grouped.get(master, {})
                self._links[master].send(
                    [command("SSUBSCRIBE", *chs) for chs in by_slot.values()]
                    + [command("PING", READY)]
                )
            main.send([command("SUBSCRIBE", self._control)])
        reader = asyncio.create_task(self._read(received, arrived), name="backplane-reader")
        ping_sent: float | None = None
        try:
            while True:
                asked = time.monotonic()
                # Pinging twice per interval: a link that went silent is noticed within one.
                done, _ = await asyncio.wait(
                    {reader, *(link.lost for link in self._links.values())},
                    timeout=LISTENER_PING_SECONDS / 2,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if reader in done:
                    reader.result()  # raises what broke the subscription
                if done:
                    raise ConnectionError("the subscription ended")
                if time.monotonic() - asked > LISTENER_PING_SECONDS / 2 + STALL_SECONDS:
                    # This process was frozen: what Redis sent meanwhile is waiting in the
                    # socket. Let it be read, and judge the link by a fresh ping.
                    await asyncio.sleep(0.05)
                    ping_sent = None
                elif ping_sent is not None and any(
                    self._heard.get(node, 0.0) < ping_sent for node in self._links
                ):
                    raise TimeoutError("no reply from Redis within one ping interval")
                ping_sent = time.monotonic()
                for link in self._links.values():
                    # The reply (a pong) counts as hearing from Redis.
                    link.send([command("PING")])
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _read(self, received: list[tuple[Node | None, Any]], arrived: asyncio.Event) -> None:
        while True:
            await arrived.wait()
            arrived.clear()
            batch = received[:]
            received.clear()
            for node, reply in batch:
                await self._handle(node, reply)

    async def _handle(self, node: Node | None, reply: Any) -> None:
        if isinstance(reply, Exception):
            if cluster_changing(reply):
                raise ClusterChanged(str(reply))
            raise reply
        if type(reply) is not list:
            # A node with no subscription yet answers PING outside pub/sub mode.
            if reply == READY:
                self._ready(node)
            return
        kind = reply[0]
        if kind in (b"message", b"smessage"):
            await self._message(reply[1], reply[2])
        elif kind == b"pong":
            metrics.BACKPLANE_LAST_HEARTBEAT.set(time.time())
            if len(reply) > 1 and reply[1] == READY:
                self._ready(node)
        elif kind in (b"subscribe", b"ssubscribe"):
            channel = reply[1].decode()
            if channel_user(reply[1], cluster=self._cluster) in self._users:
                self._confirmed.add(channel)
            if channel == self._control:
                self._ready(None)
            future = self._pending.pop(channel, None)
            if future is not None and not future.done():
                future.set_result(None)
        elif kind == b"sunsubscribe":
            self._unsubscribed(reply[1])

    async def _message(self, channel: bytes, data: bytes) -> None:
        handler = self._channels.get(channel)
        if handler is not None:
            try:
                handler(data)
            except Exception:
                log.exception("backplane handler failed", extra={"channel": channel.decode()})
        elif channel.startswith(b"deliver:") and self._on_user is not None:
            await self._on_user(channel_user(channel, cluster=self._cluster), data)

    def _unsubscribed(self, channel: bytes) -> None:
        """A ``sunsubscribe``: the answer to ours, or the node took the channel away."""
        name = channel.decode()
        asked = self._unsubscribing.get(name, 0)
        if asked > 1:
            self._unsubscribing[name] = asked - 1
        elif asked == 1:
            del self._unsubscribing[name]
        elif channel in self._channels or channel_user(channel, cluster=True) in self._users:
            # Not asked for: the node gave the slot away (migrated, or it is a replica now).
            raise ClusterChanged(f"the cluster moved {name}")

    def _ready(self, node: Node | None) -> None:
        """A link's subscriptions are confirmed (``None``: the control channel's)."""
        self._awaiting.discard(node)
        if self._awaiting or self._healthy.is_set():
            return
        for subscribed in self._on_subscribed:
            subscribed()
        self._healthy.set()
        self._subscribed = True
        metrics.BACKPLANE_LISTENER_UP.set(1)
        log.info(
            "backplane listener subscribed",
            extra={"users": len(self._users), "nodes": len(self._links)},
        )

    def _close_links(self) -> None:
        links, self._links = self._links, {}
        self._confirmed.clear()
        for future in self._pending.values():
            if not future.done():
                future.cancel()
        self._pending.clear()
        for link in links.values():
            link.close()
