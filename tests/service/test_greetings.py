"""Greetings on a user's channel (``Delivery``), two replicas' fan-outs on a real Redis.

Both run in the test's event loop, so the order the guarantee is about can be forced: an event
committed right after a joining replica read the user's log position is decided on by the other
replica while the greeting may still be unread in its socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import pytest
import socketio
from engineio import packet as eio_packet

import messaging.delivery as delivery_module
from messaging.app import build_redis_node
from messaging.backplane import Backplane
from messaging.delivery import Delivery, Logged
from messaging.settings import Settings
from tests.support.servers import RedisControl


@dataclass
class Side:
    """One replica's fan-out: its Delivery, and what it wrote to each of its sockets."""

    name: str
    delivery: Delivery
    backplane: Backplane
    server: socketio.AsyncServer
    written: dict[str, list[str]] = field(default_factory=dict)
    heads: dict[str, int] = field(default_factory=dict)
    on_head_read: list[object] = field(default_factory=list)

    async def socket(self, user_id: str, eio_sid: str) -> str:
        """A socket of ``user_id`` in its user's room (the handshake's last step); its sid."""
        sid: str = await self.server.manager.connect(eio_sid, "/")
        await self.server.manager.enter_room(sid, "/", f"user:{user_id}", eio_sid=eio_sid)
        self.written.setdefault(eio_sid, [])
        return sid


@contextlib.asynccontextmanager
async def side(redis_server: RedisControl, name: str) -> AsyncIterator[Side]:
    server = socketio.AsyncServer(async_mode="asgi")
    backplane = Backplane(
        build_redis_node(Settings(redis_url=redis_server.url, replica_id=name)), replica_id=name
    )
    written: dict[str, list[str]] = {}

    def send(eio_sid: str, packet: eio_packet.Packet) -> None:
        written.setdefault(eio_sid, []).append(str(packet.data))

    delivery = Delivery(server, replica_id=name, backplane=backplane, send=send)
    this = Side(name, delivery, backplane, server, written)

    async def heads(user_ids: Sequence[str]) -> dict[str, int]:
        for hook in this.on_head_read:
            await hook()  # type: ignore[operator]
        return {u: this.heads.get(u, 0) for u in user_ids}

    async def events(user_id: str, after: int) -> list[Logged]:
        return []

    delivery.use_log(heads=heads, events=events)
    tasks = [
        asyncio.create_task(backplane.run_listener()),
        asyncio.create_task(backplane.run_publisher()),
    ]
    try:
        for _ in range(200):
            if backplane.healthy:
                break
            await asyncio.sleep(0.01)
        assert backplane.healthy
        yield this
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def message(user_id: str, position: int) -> Logged:
    return Logged(user_id, position, position, "newMessage", {"n": position})


async def until(condition: object, what: str) -> None:
    for _ in range(300):
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0.01)
    raise AssertionError(what)


async def test_a_user_held_only_here_is_alone_and_their_events_stay_local(
    redis_server: RedisControl,
) -> None:
    async with side(redis_server, "solo-a") as a:
        await a.delivery.watch("alice-solo")
        await a.socket("alice-solo", "a1")
        assert a.delivery._held_alone("alice-solo")
        await a.delivery.logged([message("alice-solo", 1)])
        assert len(a.written["a1"]) == 1  # delivered here, and not published


async def test_an_event_only_the_sending_socket_would_get_is_not_rendered_but_moves_the_position(
    redis_server: RedisControl,
) -> None:
    async with side(redis_server, "unseen-a") as a:
        await a.delivery.watch("alice-unseen")
        sending = await a.socket("alice-unseen", "a1")
        assert a.delivery.unseen("alice-unseen", sending)
        await a.delivery.logged([Logged("alice-unseen", 1, 1, "", None)], skip_sid=sending)
        assert a.delivery._tracks["alice-unseen"].last == 1
        await a.socket("alice-unseen", "a2")  # a second device here: now it is seen
        assert not a.delivery.unseen("alice-unseen", sending)
        await a.delivery.logged([message("alice-unseen", 2)], skip_sid=sending)
        assert a.written == {"a1": [], "a2": ['2["newMessage",{"n":2}]']}  # no gap to heal


async def test_an_event_committed_right_after_a_joining_replica_read_the_position_reaches_it(
    redis_server: RedisControl,
) -> None:
    """The order greetings must survive: b greets, then reads alice's position; an event at the
    next position is decided on by a straight after that read. a has answered the greeting (b
    waited for it), so a no longer counts alice as alone and publishes it; b gets it live."""
    async with side(redis_server, "race-a") as a, side(redis_server, "race-b") as b:
        await a.delivery.watch("alice-race")
        await a.socket("alice-race", "a1")
        assert a.delivery._held_alone("alice-race")
        b.heads["alice-race"] = 0
        # a is busy: it reads what arrives on its channels a tenth of a second late, so without
        # waiting for a's answer b would read the position before a heard the greeting.
        deliver = a.backplane._on_user
        assert deliver is not None

        async def late(user_id: str, data: bytes) -> None:
            await asyncio.sleep(0.1)
            await deliver(user_id, data)

        a.backplane._on_user = late

        async def a_sends_next() -> None:
            await a.delivery.logged([message("alice-race", 1)], skip_sid=None)

        b.on_head_read.append(a_sends_next)
        # In the room already: the test asks whether the event reaches b, not when the socket
        # joins (a real one joins after the read and syncs what came in between).
        await b.socket("alice-race", "b1")
        await b.delivery.watch("alice-race")
        assert not a.delivery._held_alone("alice-race")
        assert not b.delivery._held_alone("alice-race")
        await until(lambda: b.written["b1"], "b never got the event committed after its read")
        assert b.written["b1"] == ['2["newMessage",{"n":1}]']


async def test_after_the_other_replica_says_goodbye_the_user_is_alone_again(
    redis_server: RedisControl,
) -> None:
    async with side(redis_server, "bye-a") as a, side(redis_server, "bye-b") as b:
        await a.delivery.watch("alice-bye")
        await b.delivery.watch("alice-bye")
        assert not a.delivery._held_alone("alice-bye")
        await b.delivery.unwatch("alice-bye")
        healer = asyncio.create_task(a.delivery.run_healer())
        try:
            await until(lambda: a.delivery._held_alone("alice-bye"), "a never alone again")
        finally:
            healer.cancel()
            await asyncio.gather(healer, return_exceptions=True)


async def test_a_resubscribed_listener_publishes_everything_until_it_has_asked_again(
    redis_server: RedisControl,
) -> None:
    async with side(redis_server, "resub-a") as a:
        await a.delivery.watch("alice-resub")
        assert a.delivery._held_alone("alice-resub")
        a.delivery._resubscribed()  # as the listener calls it after a new subscription
        assert not a.delivery._held_alone("alice-resub")
        healer = asyncio.create_task(a.delivery.run_healer())
        try:
            await until(lambda: a.delivery._held_alone("alice-resub"), "a never asked again")
        finally:
            healer.cancel()
            await asyncio.gather(healer, return_exceptions=True)


async def test_a_user_who_leaves_while_earlier_surveys_run_is_simply_not_asked(
    redis_server: RedisControl, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Surveys run in chunks with awaits between them; a user unwatched meanwhile is dropped
    from the due list by ``unwatch``, and the later chunk must not trip over the gap."""
    monkeypatch.setattr(delivery_module, "SURVEY_CHUNK", 1)
    async with side(redis_server, "leave-a") as a:
        for user in ("first-leave", "second-leave"):
            await a.delivery.watch(user)
        a.delivery._resubscribed()  # both due now
        survey = a.delivery._survey

        async def survey_then_leave(user_id: str, track: object, *, wait: bool) -> None:
            await survey(user_id, track, wait=wait)  # type: ignore[arg-type]
            if user_id == "first-leave":
                await a.delivery.unwatch("second-leave")

        a.delivery._survey = survey_then_leave  # type: ignore[method-assign]
        await a.delivery._run_surveys(time.monotonic())
        assert a.delivery._held_alone("first-leave")
        assert a.delivery._survey_due == {}
