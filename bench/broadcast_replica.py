"""The real service with python-socketio's AsyncRedisManager as its fan-out (bench only).

    MESSAGING_REDIS_URL=redis://... python -m bench.broadcast_replica

Runs what ``messaging serve`` runs, from the same settings, except the cross-replica fan-out: the
Socket.IO server gets ``socketio.AsyncRedisManager(MESSAGING_REDIS_URL)`` as its client manager,
which publishes every emit of every replica on one channel that every replica subscribes to and
decodes, and ``Delivery`` is replaced by a stand-in that simply emits to the recipients' user
rooms through that manager (no per-user channels, no subscriptions, no publisher queue, no
healing from the change log). This is
how the fan-out looks with the library's stock Redis adapter, for bench/fanout.py to compare.

The product has no switch for this and must not get one; this launcher swaps the two parts by
monkeypatching ``messaging.app.build_socket_server`` and ``messaging.app.Delivery`` (the names
``build_service`` looks up when it runs) before calling ``messaging.serve.run``. The manager is
put on the server right after the real ``build_socket_server`` built it, with the same two lines
``AsyncServer.__init__`` runs for a ``client_manager`` argument (``server.manager = m``,
``m.set_server(server)``); the manager starts its listener on the first connection, as usual.
Presence, the registry, readiness and everything else stay the service's own.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import socketio

from messaging import app
from messaging.backplane import Backplane
from messaging.delivery import LogEvents, Logged, LogHeads, Send, user_room
from messaging.logs import configure_logging
from messaging.serve import run
from messaging.settings import Settings
from messaging.sockets import build_socket_server


class BroadcastDelivery:
    """Stands in for ``messaging.delivery.Delivery``: emits to the recipients' user rooms
    through the server's client manager, which (AsyncRedisManager) does the cross-replica rest.

    Built by ``build_service`` with Delivery's constructor arguments (``server``, ``replica_id``,
    ``backplane``, ``send``, ``check_seconds``); has the members the service uses: ``to_users``
    and ``logged`` (the events ``publishing.Publisher`` encodes), ``watch``/``unwatch``,
    ``unseen``, ``use_log``, ``check_all``, ``run_healer``, ``listen`` and ``listener_healthy``
    (``tests/bench/test_broadcast_replica.py`` fails when Delivery gains one it lacks).
    Deliberately not a subclass, so it relies on none of Delivery's internals. No per-user
    ordering and no healing from the change log: the stock adapter has neither. The service's
    own ``Backplane`` still runs, for what is not fan-out (the blocks' cache invalidation heard
    through ``listen``); it subscribes to no user's channel, since ``watch`` asks it for none.
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
        self.replica_id = replica_id
        self._backplane = backplane

    @property
    def uses_redis(self) -> bool:
        return True

    @property
    def listener_healthy(self) -> bool:
        # AsyncRedisManager's listener gives no signal of its health; the backplane's does.
        return self._backplane is None or self._backplane.healthy

    def use_log(self, *, heads: LogHeads, events: LogEvents) -> None:
        return None  # nothing is healed from the log

    def listen(
        self,
        channel: str,
        handler: Callable[[bytes], None],
        *,
        subscribed: Callable[[], None] | None = None,
    ) -> None:
        if self._backplane is not None:
            self._backplane.listen(channel, handler, subscribed=subscribed)

    async def notify(self, channel: str, data: bytes) -> int:
        # The blocks' notices go through the service's own backplane, as ``listen`` does.
        return 0 if self._backplane is None else await self._backplane.notify(channel, data)

    async def to_users(
        self,
        user_ids: Iterable[str],
        event: str,
        data: Any,
        *,
        skip_sid: str | None = None,
        committed_at: float | None = None,
    ) -> None:
        rooms = [user_room(u) for u in dict.fromkeys(user_ids)]
        await self._server.emit(event, data, room=rooms, skip_sid=skip_sid)

    async def logged(
        self,
        events: Sequence[Logged],
        *,
        skip_sid: str | None = None,
        committed_at: float | None = None,
    ) -> None:
        for item in events:
            await self._server.emit(
                item.event, item.data, room=user_room(item.user_id), skip_sid=skip_sid
            )

    async def watch(self, user_id: str) -> None:
        return None  # every replica already receives everything

    async def unwatch(self, user_id: str) -> None:
        return None

    def unseen(self, user_id: str, skip_sid: str) -> bool:
        return False  # the manager cannot tell where a user's sockets are: render every event

    def check_all(self, reason: str) -> None:
        return None

    async def run_healer(self) -> None:
        await asyncio.Event().wait()  # nothing to heal: the manager delivers or loses


def build_broadcast_socket_server(settings: Settings) -> socketio.AsyncServer:
    if not settings.redis_url:
        raise SystemExit("bench.broadcast_replica needs MESSAGING_REDIS_URL")
    server = build_socket_server(settings)
    manager = socketio.AsyncRedisManager(settings.redis_url)
    server.manager = manager
    manager.set_server(server)
    return server


def main(argv: Sequence[str] | None = None) -> None:
    argparse.ArgumentParser(
        prog="python -m bench.broadcast_replica",
        description="The service with python-socketio's AsyncRedisManager as its fan-out "
        "(for bench.fanout); configured by the MESSAGING_* environment, as `messaging serve`.",
    ).parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level, settings.effective_log_format)
    # build_service looks both names up in messaging.app when it runs.
    app.build_socket_server = build_broadcast_socket_server  # type: ignore[attr-defined]
    app.Delivery = BroadcastDelivery  # type: ignore[attr-defined, assignment]
    run(settings)


if __name__ == "__main__":
    main()
