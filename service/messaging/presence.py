"""The connection registry: which users have sockets, on which replica, and when last seen.

Every process keeps its own sockets in memory. With Redis it also writes the seed's registry,
``user-sockets:{userId}`` (a set of socket ids) and ``socket-to-user:{socketId}``, so presence is
answered across replicas. A replica that dies without cleaning up must not leave its users
online forever: each replica lists its sockets in ``replica-sockets:{replicaId}`` and keeps a
heartbeat score in the ``replicas`` sorted set; every replica sweeps the replicas whose heartbeat
expired and removes their sockets. A user therefore shows offline at most
``redis_replica_ttl_seconds + redis_heartbeat_seconds`` after their replica was killed.

Registry writes that fail while Redis is away are not retried one by one: the replica marks
itself dirty and rewrites its whole share of the registry on the next heartbeat that works.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from messaging import metrics
from messaging.errors import Unavailable

log = logging.getLogger(__name__)

LAST_SEEN_TTL_SECONDS = 90 * 24 * 3600
WRITE_QUEUE_LIMIT = 100_000
WRITE_BATCH = 1000
COUNT_TIMEOUT_SECONDS = 0.5


def user_sockets_key(user_id: str) -> str:
    return f"user-sockets:{user_id}"


def socket_user_key(sid: str) -> str:
    return f"socket-to-user:{sid}"


def replica_sockets_key(replica_id: str) -> str:
    return f"replica-sockets:{replica_id}"


def last_seen_key(user_id: str) -> str:
    return f"last-seen:{user_id}"


REPLICAS_KEY = "replicas"


def _text(values: Iterable[Any]) -> list[str]:
    """Redis replies as text (the client decodes responses; this keeps mypy and bytes honest)."""
    return [v.decode() if isinstance(v, bytes) else v for v in values]


@dataclass(frozen=True, slots=True)
class PresenceInfo:
    online: bool
    last_seen_at: datetime | None


class Presence:
    """This process's sockets, and (with Redis) its share of the cluster-wide registry."""

    def __init__(
        self,
        *,
        replica_id: str,
        redis: Redis | None,
        heartbeat_seconds: float = 5.0,
        replica_ttl_seconds: float = 15.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.replica_id = replica_id
        self._redis = redis
        self._heartbeat = heartbeat_seconds
        self._ttl = replica_ttl_seconds
        self._clock = clock
        self._sockets: dict[str, set[str]] = {}  # user id -> sids on this process
        self._owner: dict[str, str] = {}  # sid -> user id
        self._last_seen: dict[str, datetime] = {}  # without Redis only
        self._dirty = redis is not None
        self._writes: asyncio.Queue[tuple[str, str, str, str]] = asyncio.Queue(WRITE_QUEUE_LIMIT)
        # count_sockets reads waiting for the next pipelined round trip, and its task.
        self._member_reads: dict[str, asyncio.Future[list[Any] | None]] = {}
        self._member_reader: asyncio.Task[None] | None = None

    # --- local state -------------------------------------------------------------------------

    def user_of(self, sid: str) -> str | None:
        return self._owner.get(sid)

    def local_users(self) -> set[str]:
        return set(self._sockets)

    def socket_count(self) -> int:
        return len(self._owner)

    def sids_of(self, user_id: str) -> set[str]:
        return set(self._sockets.get(user_id, ()))

    def register(self, user_id: str, sid: str) -> bool:
        """Record a new socket; True when it is the user's first socket on this process.

        Local state changes at once; the Redis registry is written by a background task, so a
        slow or absent Redis never delays a handshake.
        """
        sids = self._sockets.setdefault(user_id, set())
        first = not sids
        sids.add(sid)
        self._owner[sid] = user_id
        self._update_gauges()
        self._enqueue(("add", user_id, sid, ""))
        return first

    def unregister(self, sid: str) -> tuple[str | None, bool]:
        """Forget a socket; returns its user and whether it was their last one on this process."""
        user_id = self._owner.pop(sid, None)
        if user_id is None:
            return None, False
        sids = self._sockets.get(user_id, set())
        sids.discard(sid)
        last = not sids
        if last:
            self._sockets.pop(user_id, None)
        self._update_gauges()
        now = datetime.fromtimestamp(self._clock(), tz=UTC)
        if self._redis is None:
            if last:
                self._last_seen[user_id] = now
        else:
            self._enqueue(("remove", user_id, sid, now.isoformat()))
        return user_id, last

    def _enqueue(self, op: tuple[str, str, str, str]) -> None:
        if self._redis is None:
            return
        try:
            self._writes.put_nowait(op)
        except asyncio.QueueFull:
            self._dirty = True  # the next heartbeat rewrites everything from local state

    async def _run_writer(self) -> None:
        """Apply registry changes in order, pipelined; on failure, leave it to the resync."""
        assert self._redis is not None
        while True:
            batch = [await self._writes.get()]
            while not self._writes.empty() and len(batch) < WRITE_BATCH:
                batch.append(self._writes.get_nowait())
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for kind, user_id, sid, seen in batch:
                        if kind == "add":
                            pipe.sadd(user_sockets_key(user_id), sid)
                            pipe.set(socket_user_key(sid), user_id)
                            pipe.sadd(replica_sockets_key(self.replica_id), sid)
                        else:
                            pipe.srem(user_sockets_key(user_id), sid)
                            pipe.delete(socket_user_key(sid))
                            pipe.srem(replica_sockets_key(self.replica_id), sid)
                            pipe.set(last_seen_key(user_id), seen, ex=LAST_SEEN_TTL_SECONDS)
                    await pipe.execute()
            except (RedisError, OSError) as exc:
                self._registry_failed("write", exc)

    async def lookup(self, user_ids: Iterable[str]) -> dict[str, PresenceInfo]:
        users = list(dict.fromkeys(user_ids))
        if self._redis is None:
            return {
                u: PresenceInfo(online=u in self._sockets, last_seen_at=None)
                if u in self._sockets
                else PresenceInfo(online=False, last_seen_at=self._last_seen.get(u))
                for u in users
            }
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for user_id in users:
                    pipe.scard(user_sockets_key(user_id))
                    pipe.get(last_seen_key(user_id))
                replies = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise Unavailable("presence is unavailable while Redis is unreachable") from exc
        result = {}
        for index, user_id in enumerate(users):
            count, seen = replies[2 * index], replies[2 * index + 1]
            online = bool(count) or user_id in self._sockets
            last_seen = None
            if not online and seen:
                last_seen = datetime.fromisoformat(seen)
            result[user_id] = PresenceInfo(online=online, last_seen_at=last_seen)
        return result

    async def count_sockets(self, user_id: str) -> int:
        """The user's open sockets on every replica (this one's alone when Redis is away).

        This replica's own sockets are counted from memory (its registry writes may still be
        queued), the others' from the registry.
        """
        local = self._sockets.get(user_id, set())
        if self._redis is None:
            return len(local)
        try:
            members = await asyncio.wait_for(
                asyncio.shield(self._members_of(user_id)), COUNT_TIMEOUT_SECONDS
            )
        except TimeoutError:
            return len(local)
        if members is None:  # Redis refused or is unreachable
            return len(local)
        return len(local | set(_text(members)))

    def _members_of(self, user_id: str) -> asyncio.Future[list[Any] | None]:
        """The user's sockets in the registry, read with every other handshake's waiting now.

        A burst of handshakes each awaiting its own SMEMBERS makes redis-py's pool open a
        connection per concurrent handshake (each with its own setup round trips); queued
        here, they share one pipelined round trip on one connection, like group commit.
        """
        future = self._member_reads.get(user_id)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._member_reads[user_id] = future
            if self._member_reader is None or self._member_reader.done():
                self._member_reader = asyncio.create_task(
                    self._read_members(), name="presence-count"
                )
        return future

    async def _read_members(self) -> None:
        assert self._redis is not None
        while self._member_reads:
            batch, self._member_reads = self._member_reads, {}
            replies: list[Any] | None = None
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for user_id in batch:
                        pipe.smembers(user_sockets_key(user_id))
                    replies = await pipe.execute()
            except (RedisError, OSError):
                replies = None
            for index, future in enumerate(batch.values()):
                if not future.done():
                    future.set_result(None if replies is None else list(replies[index]))

    def _update_gauges(self) -> None:
        metrics.CONNECTED_SOCKETS.set(len(self._owner))
        metrics.CONNECTED_USERS.set(len(self._sockets))

    def _registry_failed(self, what: str, exc: BaseException) -> None:
        self._dirty = True
        metrics.REGISTRY_ERRORS.inc()
        log.warning("presence registry %s failed; will resync", what, extra={"error": repr(exc)})

    # --- heartbeat and sweep (Redis only) -----------------------------------------------------

    async def run(self) -> None:
        """Write the registry, heartbeat, resync and sweep, forever; a no-op without Redis."""
        if self._redis is None:
            return
        writer = asyncio.create_task(self._run_writer(), name="presence-writer")
        try:
            await self._heartbeat_forever()
        finally:
            writer.cancel()

    async def _heartbeat_forever(self) -> None:
        while True:
            try:
                await self.heartbeat_once()
                await self.sweep_once()
            except (RedisError, OSError) as exc:
                self._registry_failed("heartbeat", exc)
            await asyncio.sleep(self._heartbeat)

    async def heartbeat_once(self) -> None:
        assert self._redis is not None
        added = await self._redis.zadd(REPLICAS_KEY, {self.replica_id: self._clock() + self._ttl})
        if added or self._dirty:
            # Redis lost our entries (restart, or a sweeper thought we were dead), or some of our
            # writes failed while it was away: rewrite this replica's share from local state.
            await self._resync()

    async def _resync(self) -> None:
        assert self._redis is not None
        key = replica_sockets_key(self.replica_id)
        known = set(_text(await self._redis.smembers(key)))
        stale = sorted(known - set(self._owner))
        owners = await self._owners(stale)
        async with self._redis.pipeline(transaction=False) as pipe:
            for sid, owner in zip(stale, owners, strict=True):
                if owner is not None:
                    pipe.srem(user_sockets_key(owner), sid)
                pipe.delete(socket_user_key(sid))
                pipe.srem(key, sid)
            for sid, user_id in self._owner.items():
                pipe.sadd(user_sockets_key(user_id), sid)
                pipe.set(socket_user_key(sid), user_id)
                pipe.sadd(key, sid)
            await pipe.execute()
        self._dirty = False
        log.info("presence registry resynced", extra={"sockets": len(self._owner)})

    async def sweep_once(self) -> list[str]:
        """Remove the sockets of replicas whose heartbeat expired; returns the replicas swept."""
        assert self._redis is not None
        now = self._clock()
        expired = _text(await self._redis.zrangebyscore(REPLICAS_KEY, "-inf", now))
        swept = []
        for replica in expired:
            if replica == self.replica_id:
                continue
            # ZREM succeeds for exactly one sweeper, so each dead replica is cleaned once.
            if not await self._redis.zrem(REPLICAS_KEY, replica):
                continue
            await self._clean_replica(replica, now)
            swept.append(replica)
        return swept

    async def _clean_replica(self, replica: str, now: float) -> None:
        assert self._redis is not None
        key = replica_sockets_key(replica)
        sids = sorted(_text(await self._redis.smembers(key)))
        seen = datetime.fromtimestamp(now, tz=UTC).isoformat()
        owners = await self._owners(sids)
        async with self._redis.pipeline(transaction=False) as pipe:
            for sid, owner in zip(sids, owners, strict=True):
                if owner is not None:
                    pipe.srem(user_sockets_key(owner), sid)
                    pipe.set(last_seen_key(owner), seen, ex=LAST_SEEN_TTL_SECONDS)
                pipe.delete(socket_user_key(sid))
            pipe.delete(key)
            await pipe.execute()
        log.info("swept a dead replica", extra={"replica": replica, "sockets": len(sids)})

    async def _owners(self, sids: list[str]) -> list[str | None]:
        """The user of each socket id, from the reverse map (None where it is gone)."""
        if not sids:
            return []
        assert self._redis is not None
        replies = await self._redis.mget([socket_user_key(sid) for sid in sids])
        return [None if r is None else _text([r])[0] for r in replies]

    async def leave(self) -> None:
        """On a clean shutdown: take this replica out of the registry at once."""
        if self._redis is None:
            return
        with contextlib.suppress(RedisError, OSError):
            await self._redis.zadd(REPLICAS_KEY, {self.replica_id: 0})
            await self.sweep_own()

    async def sweep_own(self) -> None:
        assert self._redis is not None
        if await self._redis.zrem(REPLICAS_KEY, self.replica_id):
            await self._clean_replica(self.replica_id, self._clock())
