"""The real service with python-socketio's AsyncRedisManager as its fan-out (bench only).

    MESSAGING_REDIS_URL=redis://... python -m bench.broadcast_replica

Runs what ``messaging serve`` runs, from the same settings, except the cross-replica fan-out: the
Socket.IO server gets ``socketio.AsyncRedisManager(MESSAGING_REDIS_URL)`` as its client manager,
which publishes every emit of every replica on one channel that every replica subscribes to and
decodes, and ``Delivery`` is replaced by a stand-in that simply emits to the recipients' user
rooms through that manager (no per-user channels, no subscriptions, no publisher queue). This is
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

import asyncio
from collections.abc import Iterable
from typing import Any

import socketio

from messaging import app
from messaging.delivery import user_room
from messaging.logs import configure_logging
from messaging.serve import run
from messaging.settings import Settings
from messaging.sockets import build_socket_server


class BroadcastDelivery:
    """Stands in for ``messaging.delivery.Delivery``: emits to the recipients' user rooms
    through the server's client manager, which (AsyncRedisManager) does the cross-replica rest.

    Built by ``build_service`` with Delivery's constructor arguments; has the members the
    service uses (``to_users``, ``watch``/``unwatch``, the two background tasks, health).
    Deliberately not a subclass, so it relies on none of Delivery's internals.
    """

    def __init__(self, server: socketio.AsyncServer, *, replica_id: str, redis: Any) -> None:
        self._server = server
        self.replica_id = replica_id

    @property
    def uses_redis(self) -> bool:
        return True

    @property
    def listener_healthy(self) -> bool:
        return True  # AsyncRedisManager's listener gives no signal of its health

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

    async def watch(self, user_id: str) -> None:
        return None  # every replica already receives everything

    async def unwatch(self, user_id: str) -> None:
        return None

    async def run_publisher(self) -> None:
        await asyncio.Event().wait()  # the manager publishes inline, from emit

    async def run_listener(self) -> None:
        await asyncio.Event().wait()  # the manager runs its own listener task


def build_broadcast_socket_server(settings: Settings) -> socketio.AsyncServer:
    if not settings.redis_url:
        raise SystemExit("bench.broadcast_replica needs MESSAGING_REDIS_URL")
    server = build_socket_server(settings)
    manager = socketio.AsyncRedisManager(settings.redis_url)
    server.manager = manager
    manager.set_server(server)
    return server


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level, settings.effective_log_format)
    # build_service looks both names up in messaging.app when it runs.
    app.build_socket_server = build_broadcast_socket_server  # type: ignore[attr-defined]
    app.Delivery = BroadcastDelivery  # type: ignore[attr-defined, assignment]
    run(settings)


if __name__ == "__main__":
    main()
