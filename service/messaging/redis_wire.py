"""The backplane's two Redis connections, speaking RESP directly with hiredis' parser.

Every message crosses Redis twice on the send path (PUBLISH on one replica, the pub/sub push on
another). redis-py spends more per message there than the rest of the path's Python together:
a task and a timeout per write, and a ``read_response`` call (with its health check and
timeout) per pushed message. Here the protocol's ``data_received`` feeds hiredis and hands every
complete reply over at once: a burst of pushed messages costs one wake-up of the listener, and a
batch of PUBLISH commands one write and one wake-up for all its replies.

Connections are opened from the settings of the service's redis-py client (host or unix path,
TLS context, user, password, client name), so ``MESSAGING_REDIS_URL`` means the same thing to
both; on a Redis Cluster the same settings reach any node by its address. Only what the backplane
needs is here: commands with their replies in order, and pub/sub pushes (and, on a connection
with nothing waiting, any other reply: a PONG, an error) handed to a callback.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Sequence
from typing import Any, cast

import hiredis
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Push = Callable[[Any], None]
# The service's command client: one Redis, or a Redis Cluster (``MESSAGING_REDIS_CLUSTER``).
RedisClient = Redis | RedisCluster


def command(*parts: bytes | str) -> bytes:
    """One command in RESP (an array of bulk strings)."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _hello(settings: Any) -> list[bytes]:
    """What redis-py sends after connecting, for the settings a URL can carry."""
    hello = []
    if settings.password:
        if settings.username:
            hello.append(command("AUTH", settings.username, settings.password))
        else:
            hello.append(command("AUTH", settings.password))
    if settings.client_name:
        hello.append(command("CLIENT", "SETNAME", settings.client_name))
    return hello


class RedisWire(asyncio.Protocol):
    """One Redis connection: commands answered in order, pub/sub pushes to ``on_push``."""

    def __init__(self, on_push: Push | None = None) -> None:
        self._reader = hiredis.Reader(replyError=ResponseError)
        self._waiting: collections.deque[tuple[asyncio.Future[list[Any]], list[Any], int]] = (
            collections.deque()
        )
        self._on_push = on_push
        self._transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @classmethod
    async def open(
        cls, redis: Redis, *, on_push: Push | None = None, address: tuple[str, int] | None = None
    ) -> RedisWire:
        """Connect and authenticate like ``redis`` would (same address, TLS and credentials).

        ``address`` (host, port) replaces the URL's: a cluster node, with the URL's credentials.
        """
        # Built only to read the client's resolved settings; never connected.
        settings = redis.connection_pool.make_connection()  # type: ignore[no-untyped-call]
        loop = asyncio.get_running_loop()
        timeout = settings.socket_connect_timeout or None
        wire = cls(on_push)
        try:
            if isinstance(settings, UnixDomainSocketConnection) and address is None:
                async with asyncio.timeout(timeout):
                    await loop.create_unix_connection(lambda: wire, settings.path)
            else:
                tls = settings.ssl_context.get() if isinstance(settings, SSLConnection) else None
                host, port = address or (settings.host, settings.port)
                async with asyncio.timeout(timeout):
                    await loop.create_connection(lambda: wire, host, port, ssl=tls)
            hello = _hello(settings)
            if hello:
                async with asyncio.timeout(timeout):
                    replies = await wire.execute(hello)
                for reply in replies:
                    if isinstance(reply, Exception):
                        raise reply
        except TimeoutError as exc:
            wire.close()
            raise RedisTimeoutError("timed out connecting to Redis") from exc
        except OSError as exc:
            wire.close()
            raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
        except BaseException:
            wire.close()
            raise
        return wire

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        while (reply := reader.gets()) is not False:
            self._reply(reply)

    def _reply(self, reply: Any) -> None:
        if self._waiting:
            future, replies, expected = self._waiting[0]
            replies.append(reply)
            if len(replies) == expected:
                self._waiting.popleft()
                if not future.done():
                    future.set_result(replies)
            return
        if self._on_push is not None:
            self._on_push(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        error = RedisConnectionError(f"Redis connection lost: {exc!r}")
        while self._waiting:
            future, _, _ = self._waiting.popleft()
            if not future.done():
                future.set_exception(error)
        if not self.lost.done():
            self.lost.set_result(None)

    # --- commands ------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def execute(self, commands: Sequence[bytes]) -> asyncio.Future[list[Any]]:
        """Send commands in one write; the future gets their replies (errors as exceptions)."""
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        if self._transport is None or self._transport.is_closing():
            future.set_exception(RedisConnectionError("not connected to Redis"))
            return future
        self._waiting.append((future, [], len(commands)))
        self._transport.write(b"".join(commands))
        return future

    def send(self, commands: Sequence[bytes]) -> None:
        """Send commands whose replies arrive as pushes (SUBSCRIBE, UNSUBSCRIBE, PING)."""
        if self._transport is None or self._transport.is_closing():
            raise RedisConnectionError("not connected to Redis")
        self._transport.write(b"".join(commands))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
