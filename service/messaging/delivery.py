"""Real-time fan-out: an event for some users reaches every socket of theirs, on any replica.

Each user has a Socket.IO room on the process that holds their sockets. An event is emitted to the
local rooms at once, and, with Redis, published on one channel per recipient user
(``deliver:{userId}``). A replica subscribes only to the channels of users it holds sockets for,
so it never decodes traffic meant for other replicas' users (python-socketio's
AsyncRedisManager puts every event of the cluster on one channel, which every replica decodes).
An event is encoded once, on the replica where it happens: the Socket.IO packet text travels
through Redis as is and is written to the receiving sockets without being decoded again.

Delivery heals itself. Every event about a message covers a range of positions of the
recipient's change log (``Logged``). For each user with sockets here the replica remembers the
last position it delivered to them and delivers only the next one: a repeat (a retried publish, a
deduplicated send delivered again) is dropped, an event that overtook another waits briefly for
it, and a gap (a lost publish, a lost subscription, this process frozen, Redis restarted) is filled
from the change log in PostgreSQL, in order. The log is read when a gap shows, whenever the
subscription is (re)established, after the event loop stalled, and every few seconds as a
backstop (one query for all the users here), so a connected device gets every change within a
few seconds of a fault healing, without reconnecting. A socket joins its user's room only at the
very end of its handshake, after the replica knows the user's current position: it never gets a
live event before its CONNECT, nor one past a change it was not sent (live or by its own sync).

The Redis side (per-user channels on one Redis or a Redis Cluster, the supervised listener, the
publisher queue) is ``backplane.py``; this module decides what reaches which socket, in what
order, and sends it through a send function the transport gives (``Send``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import socketio
from engineio import packet as eio_packet

from messaging import metrics
from messaging.backplane import STALL_SECONDS, SUBSCRIBE_WAIT_SECONDS, Backplane, jittered

log = logging.getLogger(__name__)

# How long an event that arrived ahead of its predecessor waits for it before the log is read.
REORDER_WAIT_SECONDS = 0.5
# After another replica's goodbye on a user's channel, how long before asking who is left (its
# UNSUBSCRIBE travels on another connection than its goodbye).
RESURVEY_DELAY_SECONDS = 0.5
SURVEY_CHUNK = 500
HEALER_TICK_SECONDS = 0.25
HEADS_CHUNK = 500
PENDING_LIMIT = 1000  # events waiting for a gap to be filled, per user


@dataclass(frozen=True, slots=True)
class Logged:
    """An event about messages for one user, covering positions ``first..last`` of their log.

    ``data`` is None for an event no socket will be sent (``Delivery.unseen``): it only moves the
    user's position here, so it is not rendered at all.
    """

    user_id: str
    first: int
    last: int
    event: str
    data: dict[str, Any] | None


# The change log, read through the rules layer (this module writes no SQL): each user's last
# position, and the events a user's devices missed after a position (a page of them, in order).
LogHeads = Callable[[Sequence[str]], Awaitable[dict[str, int]]]
LogEvents = Callable[[str, int], Awaitable[list[Logged]]]
# Writes a packet to one Engine.IO socket: None when it was written at once, else what to await
# (the transport's fast path costs no coroutine per socket).
Send = Callable[[str, eio_packet.Packet], Awaitable[None] | None]


@dataclass(slots=True)
class _Track:
    """What this replica delivered to one user's sockets here."""

    last: int | None = None  # None: not known yet (the database was away at the handshake)
    pending: dict[int, tuple[int, eio_packet.Packet | None, str | None]] = field(
        default_factory=dict
    )
    gap_since: float | None = None
    stale: bool = False
    # A log head the last periodic check saw beyond ``last``: healed if still not delivered at
    # the next check (anything newer may simply still be on its way).
    behind: int | None = None
    # No other replica holds a socket of this user (see "Greetings" in ``Delivery``): their
    # events need not be published on their channel. False whenever that is not known.
    alone: bool = False
    heard: int = 0  # greetings heard from other replicas holding the user: a survey's witness


@dataclass(slots=True)
class _Answers:
    """The other replicas' answers to one greeting (``Delivery._survey``)."""

    repliers: set[str] = field(default_factory=set)
    expected: int | None = None
    complete: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, replica: str) -> None:
        self.repliers.add(replica)
        self._check()

    def expect(self, count: int) -> None:
        self.expected = count
        self._check()

    def _check(self) -> None:
        if self.expected is not None and len(self.repliers) >= self.expected:
            self.complete.set()


def user_room(user_id: str) -> str:
    return f"user:{user_id}"


def event_packet(event: str, data: Any) -> eio_packet.Packet:
    """The Engine.IO message carrying a Socket.IO EVENT for the default namespace."""
    return eio_packet.Packet(eio_packet.MESSAGE, data="2" + orjson.dumps([event, data]).decode())


class Delivery:
    """Sends server-to-client events to users, locally and through the Redis backplane.

    Greetings. Every event about a message is also logged for its author, whose other devices
    hear of it, and an author's devices are most often all on the replica that sends. Such an
    event is then only delivered locally: published, it would reach no one but this replica
    again. So each replica knows, for each user it holds, whether another replica holds a
    socket of theirs (``_Track.alone``), from greetings on the user's own channel (a header
    with ``"w"``, no packet):

    - ``hello``: a replica's first socket of the user is in its handshake, subscribed, and about
      to read the user's log position; or a replica asks who is still there. Every replica
      subscribed answers, ``here`` if it holds the user, ``gone`` if it no longer does, after
      it stopped counting itself alone. The greeter waits for as many answers as ``PUBLISH``
      said subscribers (less itself, at most ``SUBSCRIBE_WAIT_SECONDS``) before it reads the
      position. So any event a replica kept local because it thought itself alone was
      committed before that read, and the new socket gets it from its position on; every later
      one is published.
    - ``bye``: a replica's last socket of the user left. Those that hold the user ask again
      (``hello``) shortly after; a ``PUBLISH`` that only this replica heard means alone.

    A user is alone only on the word of a greeting whose ``PUBLISH`` reached exactly one
    subscriber, this replica's confirmed subscription, with no other replica's greeting heard
    meanwhile. While the listener is not subscribed, or after it resubscribed (greetings may
    have been missed), every event is published, as it was before greetings, until a survey
    says otherwise.
    """

    def __init__(
        self,
        server: socketio.AsyncServer,
        *,
        replica_id: str,
        backplane: Backplane | None = None,
        send: Send | None = None,
        check_seconds: float = 2.0,
    ) -> None:
        self._server = server
        self._replica_id = replica_id
        self._backplane = backplane
        self._send: Send = send or server.eio.send_packet
        self._check_seconds = check_seconds
        self._tracks: dict[str, _Track] = {}
        self._heads: LogHeads | None = None
        self._events: LogEvents | None = None
        self._wake_healer = asyncio.Event()
        self._check_all: str | None = None  # why every user's log must be checked, if it must
        self._own_header = orjson.dumps({"o": replica_id})[:-1] + b","
        self._hello = orjson.dumps({"o": replica_id, "w": "hello"}) + b"\n"
        self._bye = orjson.dumps({"o": replica_id, "w": "bye"}) + b"\n"
        self._answers: dict[str, _Answers] = {}  # user -> the greeting waiting for answers
        self._survey_due: dict[str, float] = {}  # user -> when to ask who else holds them
        self._head_reads: dict[str, asyncio.Future[int]] = {}  # see _head_of
        self._head_reader: asyncio.Task[None] | None = None
        # Metric series used per message, resolved once.
        self._delivered_local = metrics.COMMIT_TO_DELIVER.labels(path="local")
        self._delivered_remote = metrics.COMMIT_TO_DELIVER.labels(path="backplane")
        if backplane is not None:
            # Whatever was published while the backplane was not subscribed is in the log.
            backplane.receive(self._deliver_remote, subscribed=self._resubscribed)

    @property
    def uses_redis(self) -> bool:
        return self._backplane is not None

    @property
    def listener_healthy(self) -> bool:
        return self._backplane is None or self._backplane.healthy

    def use_log(self, *, heads: LogHeads, events: LogEvents) -> None:
        """Where gaps are filled from (the rules layer, built after this object)."""
        self._heads = heads
        self._events = events

    def listen(
        self,
        channel: str,
        handler: Callable[[bytes], None],
        *,
        subscribed: Callable[[], None] | None = None,
    ) -> None:
        """Hear ``channel`` (not a ``deliver:`` one) on the backplane's own subscription.

        Called before the listener starts. ``handler`` gets each message's data (it must not
        block); ``subscribed`` is called each time the subscription is (re)established, before
        ``listener_healthy`` is set. While ``listener_healthy`` is false messages may be missed.
        """
        if self._backplane is not None:
            self._backplane.listen(channel, handler, subscribed=subscribed)

    async def notify(self, channel: str, data: bytes) -> int:
        """Publish ``data`` on a ``listen`` channel; returns how many replicas' subscriptions
        received it (exactly, on one Redis and on a cluster). 0 without Redis."""
        if self._backplane is None:
            return 0
        return await self._backplane.notify(channel, data)

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
        if self._backplane is None:
            return
        remote = [u for u in users if not self._held_alone(u)]
        if not remote:
            metrics.BACKPLANE_KEPT_LOCAL.inc()
            return
        header = orjson.dumps(
            {"o": self._replica_id, "s": skip_sid, "t": time.time(), "c": committed_at}
        )
        self._backplane.publish(remote, header + b"\n" + packet.data.encode())

    async def logged(
        self,
        events: Sequence[Logged],
        *,
        skip_sid: str | None = None,
        committed_at: float | None = None,
    ) -> None:
        """Deliver events about messages, each to its user's sockets (except ``skip_sid``)."""
        now = time.time()
        for item in events:
            if item.data is None:  # unseen: nothing to send, here or elsewhere
                await self._offer(item.user_id, item.first, item.last, None, skip_sid)
                metrics.BACKPLANE_KEPT_LOCAL.inc()
                continue
            packet = event_packet(item.event, item.data)
            await self._offer(item.user_id, item.first, item.last, packet, skip_sid)
            if self._backplane is None:
                continue
            if self._held_alone(item.user_id):
                metrics.BACKPLANE_KEPT_LOCAL.inc()
                continue
            header = orjson.dumps(
                {
                    "o": self._replica_id,
                    "s": skip_sid,
                    "t": now,
                    "c": committed_at,
                    "f": item.first,
                    "l": item.last,
                }
            )
            self._backplane.publish([item.user_id], header + b"\n" + packet.data.encode())
        if committed_at is not None and events:
            self._delivered_local.observe(time.time() - committed_at)

    def unseen(self, user_id: str, skip_sid: str) -> bool:
        """No socket but ``skip_sid`` would be sent an event of the user's now: every socket of
        theirs is here (greetings) and ``skip_sid`` is the only one. Such an event need not be
        rendered; ``logged`` only moves the user's position past it.

        Decided once the change committed: a replica that greets afterwards reads a position
        that already includes it (see the class), a socket that joins here afterwards gets what
        came before it by its own sync.
        """
        track = self._tracks.get(user_id)
        if track is None or (self._backplane is not None and not self._held_alone(user_id)):
            return False
        participants = self._server.manager.get_participants("/", [user_room(user_id)])
        return all(sid == skip_sid for sid, _ in participants)

    def _held_alone(self, user_id: str) -> bool:
        """Every socket of the user is here, as far as greetings tell (see the class)."""
        track = self._tracks.get(user_id)
        return (
            track is not None
            and track.alone
            and self._backplane is not None
            and self._backplane.healthy
        )

    # --- in order, once: the per-user sequence ----------------------------------------------

    async def _offer(
        self,
        user_id: str,
        first: int,
        last: int,
        packet: eio_packet.Packet | None,
        skip_sid: str | None,
    ) -> None:
        """Deliver positions ``first..last`` of ``user_id``'s log if they are the next ones
        (``packet`` None: an unseen event, which only moves the position)."""
        track = self._tracks.get(user_id)
        if track is None:
            return  # no socket of this user here
        if track.last is not None and last <= track.last:
            metrics.DELIVERY_DUPLICATES.inc()
            return
        if track.last is None or first == track.last + 1:
            track.last = last
            if packet is not None:
                await self._emit_local([user_id], packet, skip_sid)
            if track.pending:
                await self._flush(user_id, track)
            return
        if first <= track.last:
            track.stale = True  # overlaps what was delivered: the log says what is new
        elif len(track.pending) >= PENDING_LIMIT:
            # The log cannot be read (the database is away) and events keep coming: let the
            # log, not memory, hold them until it can.
            track.pending.clear()
            track.stale = True
        else:
            track.pending[first] = (last, packet, skip_sid)
            if track.gap_since is None:
                track.gap_since = time.monotonic()
        self._wake_healer.set()

    async def _flush(self, user_id: str, track: _Track) -> None:
        """Deliver what waited for a gap that has just been filled."""
        while track.pending and track.last is not None:
            first = min(track.pending)
            if first > track.last + 1:
                break
            last, packet, skip_sid = track.pending.pop(first)
            if last <= track.last:
                continue
            if first <= track.last:
                track.stale = True
                continue
            track.last = last
            if packet is not None:
                await self._emit_local([user_id], packet, skip_sid)
        track.gap_since = time.monotonic() if track.pending else None

    async def _heal(self, user_id: str, track: _Track) -> int:
        """Deliver, from the log, everything after what this user's sockets here were sent."""
        assert self._events is not None and self._heads is not None
        healed = 0
        if track.last is None:
            track.last = (await self._heads([user_id]))[user_id]
        while self._tracks.get(user_id) is track:
            after = track.last
            events = await self._events(user_id, after)
            progressed = False
            for item in events:
                if self._tracks.get(user_id) is not track:
                    return healed
                if item.last <= track.last:
                    continue
                if item.first > track.last + 1:
                    break  # delivered live meanwhile up to a later run: read again from there
                waiting = track.pending.pop(item.first, None)
                packet: eio_packet.Packet | None
                if waiting is not None and waiting[0] == item.last and item.first > track.last:
                    # The live event that waited: same content, and it knows whom to skip (or
                    # that nobody here was to be sent it).
                    _, packet, skip_sid = waiting
                else:
                    packet, skip_sid = event_packet(item.event, _rest(item, track.last)), None
                track.last = item.last
                progressed = True
                healed += 1
                if packet is not None:
                    await self._emit_local([user_id], packet, skip_sid)
            if not events or not progressed:
                break
        track.stale = False
        await self._flush(user_id, track)
        if healed:
            metrics.DELIVERY_HEALED.inc(healed)
        return healed

    async def _check(self, user_ids: Sequence[str], reason: str) -> None:
        """Compare users' logs with what their sockets here got; heal those behind."""
        assert self._heads is not None
        for start in range(0, len(user_ids), HEADS_CHUNK):
            chunk = user_ids[start : start + HEADS_CHUNK]
            heads = await self._heads(chunk)
            for user_id in chunk:
                track = self._tracks.get(user_id)
                if track is None:
                    continue
                head = heads[user_id]
                if track.last is None:
                    track.last = head
                elif head <= track.last:
                    track.behind = None
                elif reason != "check" or (track.behind is not None and track.behind > track.last):
                    track.behind = None
                    metrics.DELIVERY_HEALS.labels(reason=reason).inc()
                    await self._heal(user_id, track)
                else:
                    track.behind = head

    def check_all(self, reason: str) -> None:
        """Have every local user's log compared with what was delivered, soon."""
        self._check_all = reason
        self._wake_healer.set()

    async def run_healer(self) -> None:
        """Fill gaps: when one shows, after a resubscription or a stall, and every few seconds."""
        last_tick = time.monotonic()
        next_check = last_tick + self._check_seconds
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HEALER_TICK_SECONDS):
                    await self._wake_healer.wait()
            self._wake_healer.clear()
            now = time.monotonic()
            if now - last_tick > HEALER_TICK_SECONDS + STALL_SECONDS:
                log.warning("event loop stalled", extra={"seconds": round(now - last_tick, 1)})
                self._check_all = self._check_all or "stalled"
            last_tick = now
            if self._heads is None:
                continue
            reason = self._check_all
            if reason is None and now >= next_check:
                reason = "check"
            try:
                if reason is not None:
                    self._check_all = None
                    next_check = now + jittered(self._check_seconds) + self._check_seconds / 2
                    await self._check(list(self._tracks), reason)
                for user_id, track in list(self._tracks.items()):
                    waited = track.gap_since is not None and now - track.gap_since >= (
                        REORDER_WAIT_SECONDS
                    )
                    if track.stale or waited:
                        metrics.DELIVERY_HEALS.labels(reason="gap").inc()
                        await self._heal(user_id, track)
                await self._run_surveys(now)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The database is away: try again shortly (the gaps are still marked).
                self._check_all = reason or self._check_all or "check"
                log.warning("healing delivery failed", extra={"error": repr(exc)})
                await asyncio.sleep(jittered(1.0))

    async def _emit_local(
        self, users: list[str], packet: eio_packet.Packet, skip_sid: str | None
    ) -> None:
        """Queue the packet on every local socket of ``users`` (their sockets' writers send it)."""
        rooms = [user_room(u) for u in users]
        send = self._send
        for sid, eio_sid in self._server.manager.get_participants("/", rooms):
            if sid == skip_sid:
                continue
            pending = send(eio_sid, packet)
            if pending is not None:
                await pending

    # --- subscriptions -------------------------------------------------------------------------

    async def watch(self, user_id: str) -> None:
        """Start delivering ``user_id``'s events here (their first socket on this replica).

        Waits (briefly) for Redis to confirm the subscription, then reads the user's position, so
        the socket (which joins its room right after) gets every change after that position:
        live, or healed from the log. If Redis or the database is slow or away, the socket
        connects anyway; the healer catches up when they are back.
        """
        track = self._tracks.setdefault(user_id, _Track())
        if self._backplane is not None:
            await self._backplane.subscribe(user_id)
            # Before the position is read: see "Greetings" in the class.
            await self._survey(user_id, track, wait=True)
        if self._heads is not None and track.last is None:
            try:
                async with asyncio.timeout(SUBSCRIBE_WAIT_SECONDS):
                    head = await self._head_of(user_id)
            except Exception as exc:
                log.warning("reading a user's log position failed", extra={"error": repr(exc)})
                return
            if track.last is None:
                track.last = head

    async def _head_of(self, user_id: str) -> int:
        """The user's log position, read together with every other handshake's waiting now.

        A burst of handshakes would otherwise be a query (and a pool checkout) each; here the
        positions asked for while one read is in flight are read by the next, in one query.
        Read after the caller's subscription was confirmed, as before, only possibly later.
        """
        future = self._head_reads.get(user_id)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._head_reads[user_id] = future
            if self._head_reader is None or self._head_reader.done():
                self._head_reader = asyncio.create_task(self._read_heads(), name="log-heads")
        return await asyncio.shield(future)

    async def _read_heads(self) -> None:
        assert self._heads is not None
        while self._head_reads:
            batch = dict(list(self._head_reads.items())[:HEADS_CHUNK])
            for user_id in batch:
                del self._head_reads[user_id]
            try:
                heads = await self._heads(list(batch))
            except Exception as exc:
                for future in batch.values():
                    if not future.done():
                        future.set_exception(exc)
                continue
            for user_id, future in batch.items():
                if not future.done():
                    future.set_result(heads[user_id])

    async def unwatch(self, user_id: str) -> None:
        """Stop receiving ``user_id``'s events (their last socket here is gone)."""
        track = self._tracks.pop(user_id, None)
        self._survey_due.pop(user_id, None)
        if self._backplane is not None:
            if track is not None and not track.alone:
                self._backplane.publish([user_id], self._bye)  # others may be alone now
            self._backplane.unsubscribe(user_id)

    # --- greetings: who else holds a user (see the class) -----------------------------------

    async def _survey(self, user_id: str, track: _Track, *, wait: bool) -> None:
        """Greet the user's channel: learn whether another replica holds them, and (``wait``)
        until each one that hears it has answered, so it publishes their events from then on."""
        assert self._backplane is not None
        if not self._backplane.hears(user_id):
            return  # their greetings would not reach us: stay publishing
        heard = track.heard
        answers = _Answers()
        if wait:
            self._answers[user_id] = answers
        try:
            count = await self._backplane.notify(self._backplane.channel(user_id), self._hello)
            if self._tracks.get(user_id) is not track:
                return
            if count == 1:  # our own subscription, nobody else's
                track.alone = track.heard == heard and self._backplane.hears(user_id)
                return
            track.alone = False
            if wait and count > 1:
                answers.expect(count - 1)
                async with asyncio.timeout(SUBSCRIBE_WAIT_SECONDS):
                    await answers.complete.wait()
        except TimeoutError:
            # A replica that died with its subscription still open, or a subscriber that is not
            # a replica: the handshake goes on, and that replica, if it lives, publishes anyway
            # once it has read the greeting.
            log.info(
                "not every subscriber answered a greeting", extra={"answers": len(answers.repliers)}
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Not knowing is safe: the user's events stay published.
            log.info("greeting a user's channel failed", extra={"error": repr(exc)})
        finally:
            if self._answers.get(user_id) is answers:
                del self._answers[user_id]

    def _greeted(self, user_id: str, envelope: dict[str, Any]) -> None:
        """Another replica's greeting on the channel of a user we hold (or held)."""
        assert self._backplane is not None
        kind, replica = envelope["w"], envelope["o"]
        track = self._tracks.get(user_id)
        if kind == "hello":
            if track is not None:
                track.alone = False  # before answering: from now on their events are published
                track.heard += 1
            answer = {"o": self._replica_id, "w": "here" if track else "gone", "to": replica}
            self._backplane.publish([user_id], orjson.dumps(answer) + b"\n")
        elif kind in ("here", "gone"):
            if kind == "here" and track is not None:
                track.alone = False
                track.heard += 1
            answers = self._answers.get(user_id)
            if envelope.get("to") == self._replica_id and answers is not None:
                answers.add(replica)
        elif kind == "bye" and track is not None and not track.alone:
            self._survey_due.setdefault(user_id, time.monotonic() + RESURVEY_DELAY_SECONDS)

    def _resubscribed(self) -> None:
        """Greetings may have been missed while the listener was away: publish everything again
        until each user's next survey, and check every log."""
        now = time.monotonic()
        for user_id, track in self._tracks.items():
            track.alone = False
            self._survey_due[user_id] = now
        self.check_all("resubscribed")

    async def _run_surveys(self, now: float) -> None:
        if not self._survey_due or self._backplane is None or not self._backplane.healthy:
            return
        due = [user for user, at in self._survey_due.items() if at <= now]
        for start in range(0, len(due), SURVEY_CHUNK):
            chunk = due[start : start + SURVEY_CHUNK]
            surveys = []
            for user_id in chunk:
                # Gone already if the user left while an earlier chunk was being asked.
                self._survey_due.pop(user_id, None)
                track = self._tracks.get(user_id)
                if track is not None:
                    surveys.append(self._survey(user_id, track, wait=False))
            await asyncio.gather(*surveys)

    # --- the backplane's side ----------------------------------------------------------------

    async def _deliver_remote(self, user_id: str, data: bytes) -> None:
        """An event another replica published on ``user_id``'s channel."""
        header, _, text = data.partition(b"\n")
        if header.startswith(self._own_header):
            return  # already delivered locally when it was published
        envelope = orjson.loads(header)
        if "w" in envelope:
            self._greeted(user_id, envelope)
            return
        metrics.BACKPLANE_RECEIVED.inc()
        metrics.BACKPLANE_LAG.observe(max(0.0, time.time() - envelope["t"]))
        packet = eio_packet.Packet(eio_packet.MESSAGE, data=text.decode())
        first = envelope.get("f")
        if first is None:
            await self._emit_local([user_id], packet, envelope["s"])
        else:
            await self._offer(user_id, first, envelope["l"], packet, envelope["s"])
        if envelope["c"] is not None:
            self._delivered_remote.observe(max(0.0, time.time() - envelope["c"]))


def _rest(item: Logged, delivered: int) -> dict[str, Any]:
    """An event's data without the positions already delivered (a status run is one message id
    per position, in order); other events cover one position. Events read from the log are
    always rendered."""
    assert item.data is not None
    skip = delivered + 1 - item.first
    if skip <= 0 or item.event != "messageStatus":
        return item.data
    return {**item.data, "messageIds": item.data["messageIds"][skip:]}
