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

On a Redis Cluster the ids in those names are hash tags (``user-sockets:{<userId>}``, the braces
literal), so a user's keys share the slot of their id; the writes are pipelined per node by
redis-py's cluster client, and nothing here needs two keys in one command except reading the
owners of many sockets, which goes through ``MGET`` split by slot (``mget_nonatomic``). A failover
loses at most the writes the dead master had not replicated: the heartbeat's resync and the sweep
rewrite them (a replica whose entry vanished rewrites its whole share).
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

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from messaging import metrics
from messaging.errors import Unavailable
from messaging.local_sockets import LocalSockets
from messaging.redis_wire import RedisClient

log = logging.getLogger(__name__)

LAST_SEEN_TTL_SECONDS = 90 * 24 * 3600
WRITE_QUEUE_LIMIT = 100_000
WRITE_BATCH = 1000
COUNT_TIMEOUT_SECONDS = 0.5


def _tag(value: str, cluster: bool) -> str:
    """On a Redis Cluster ids go in braces: the hash tag puts every key of one user (and their
    backplane channel) on the slot of their id, so what is read together is on one node."""
    return f"{{{value}}}" if cluster else value


def user_sockets_key(user_id: str, *, cluster: bool = False) -> str:
    return f"user-sockets:{_tag(user_id, cluster)}"


def socket_user_key(sid: str, *, cluster: bool = False) -> str:
    return f"socket-to-user:{_tag(sid, cluster)}"


def replica_sockets_key(replica_id: str, *, cluster: bool = False) -> str:
    return f"replica-sockets:{_tag(replica_id, cluster)}"


def last_seen_key(user_id: str, *, cluster: bool = False) -> str:
    return f"last-seen:{_tag(user_id, cluster)}"


REPLICAS_KEY = "replicas"


@dataclass(frozen=True, slots=True)
class RegistryKeys:
    """The registry's key names, hash-tagged on a Redis Cluster."""

    cluster: bool = False

    def user_sockets(self, user_id: str) -> str:
        return user_sockets_key(user_id, cluster=self.cluster)

    def socket_user(self, sid: str) -> str:
        return socket_user_key(sid, cluster=self.cluster)

    def replica_sockets(self, replica_id: str) -> str:
        return replica_sockets_key(replica_id, cluster=self.cluster)

    def last_seen(self, user_id: str) -> str:
        return last_seen_key(user_id, cluster=self.cluster)


def _text(values: Iterable[Any]) -> list[str]:
    """Redis replies as text (the client decodes responses; this keeps mypy and bytes honest)."""
    return [v.decode() if isinstance(v, bytes) else v for v in values]


@dataclass(frozen=True, slots=True)
class PresenceInfo:
    online: bool
    last_seen_at: datetime | None


class Presence:
    """This process's share of the cluster-wide registry (with Redis), and presence lookups.

    ``local`` (``LocalSockets``) is the in-memory store of this process's sockets it keeps in
    step; the transports read sessions from there.
    """

    def __init__(
        self,
        *,
        replica_id: str,
        redis: RedisClient | None,
        heartbeat_seconds: float = 5.0,
        replica_ttl_seconds: float = 15.0,
        clock: Callable[[], float] = time.time,
        local: LocalSockets | None = None,
    ) -> None:
        self.replica_id = replica_id
        self._redis = redis
        self._keys = RegistryKeys(cluster=isinstance(redis, RedisCluster))
        self._heartbeat = heartbeat_seconds
        self._ttl = replica_ttl_seconds
        self._clock = clock
        self.local = local if local is not None else LocalSockets()
        self._last_seen: dict[str, datetime] = {}  # without Redis only
        self._dirty = redis is not None
        self._writes: asyncio.Queue[tuple[str, str, str, str]] = asyncio.Queue(WRITE_QUEUE_LIMIT)
        # count_sockets reads waiting for the next pipelined round trip, and its task.
        self._member_reads: dict[str, asyncio.Future[list[Any] | None]] = {}
        self._member_reader: asyncio.Task[None] | None = None

    # --- sockets coming and going ------------------------------------------------------------

    def register(self, user_id: str, sid: str) -> bool:
        """Record a new socket; True when it is the user's first socket on this process.

        Local state changes at once; the Redis registry is written by a background task, so a
        slow or absent Redis never delays a handshake.
        """
        first = self.local.add(user_id, sid)
        self._enqueue(("add", user_id, sid, ""))
        return first

    def unregister(self, sid: str) -> tuple[str | None, bool]:
        """Forget a socket; returns its user and whether it was their last one on this process."""
        user_id, last = self.local.remove(sid)
        if user_id is None:
            return None, False
        now = datetime.fromtimestamp(self._clock(), tz=UTC)
        if self._redis is None:
            if last:
                self._last_seen[user_id] = now
        else:
            self._enqueue(("remove", user_id, sid, now.isoformat()))
        return user_id, last

    def rewrite_soon(self) -> None:
        """Rewrite this replica's share at the next heartbeat: on a Redis Cluster, after the
        backplane resubscribed (a master may have failed over and lost the writes it had not
        replicated yet)."""
        self._dirty = self._redis is not None

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
                            pipe.sadd(self._keys.user_sockets(user_id), sid)
                            pipe.set(self._keys.socket_user(sid), user_id)
                            pipe.sadd(self._keys.replica_sockets(self.replica_id), sid)
                        else:
                            pipe.srem(self._keys.user_sockets(user_id), sid)
                            pipe.delete(self._keys.socket_user(sid))
                            pipe.srem(self._keys.replica_sockets(self.replica_id), sid)
                            pipe.set(self._keys.last_seen(user_id), seen, ex=LAST_SEEN_TTL_SECONDS)
                    await pipe.execute()
            except (RedisError, OSError) as exc:
                self._registry_failed("write", exc)

    async def lookup(self, user_ids: Iterable[str]) -> dict[str, PresenceInfo]:
        users = list(dict.fromkeys(user_ids))
        if self._redis is None:
            return {
                u: PresenceInfo(online=True, last_seen_at=None)
                if self.local.has_user(u)
                else PresenceInfo(online=False, last_seen_at=self._last_seen.get(u))
                for u in users
            }
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for user_id in users:
                    pipe.scard(self._keys.user_sockets(user_id))
                    pipe.get(self._keys.last_seen(user_id))
                replies = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise Unavailable("presence is unavailable while Redis is unreachable") from exc
        result = {}
        for index, user_id in enumerate(users):
            count, seen = replies[2 * index], replies[2 * index + 1]
            online = bool(count) or self.local.has_user(user_id)
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
        local = self.local.sids_of(user_id)
        if self._redis is None:
            return len(local)
        try:
            async with asyncio.timeout(COUNT_TIMEOUT_SECONDS):
                members = await asyncio.shield(self._members_of(user_id))
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
                        pipe.smembers(self._keys.user_sockets(user_id))
                    replies = await pipe.execute()
            except (RedisError, OSError):
                replies = None
            for index, future in enumerate(batch.values()):
                if not future.done():
                    future.set_result(None if replies is None else list(replies[index]))

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
        key = self._keys.replica_sockets(self.replica_id)
        known = set(_text(await self._redis.smembers(key)))
        here = dict(self.local.owners())
        stale = sorted(known - set(here))
        owners = await self._owners(stale)
        async with self._redis.pipeline(transaction=False) as pipe:
            for sid, owner in zip(stale, owners, strict=True):
                if owner is not None:
                    pipe.srem(self._keys.user_sockets(owner), sid)
                pipe.delete(self._keys.socket_user(sid))
                pipe.srem(key, sid)
            for sid, user_id in here.items():
                pipe.sadd(self._keys.user_sockets(user_id), sid)
                pipe.set(self._keys.socket_user(sid), user_id)
                pipe.sadd(key, sid)
            await pipe.execute()
        self._dirty = False
        log.info("presence registry resynced", extra={"sockets": len(here)})

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
        key = self._keys.replica_sockets(replica)
        sids = sorted(_text(await self._redis.smembers(key)))
        seen = datetime.fromtimestamp(now, tz=UTC).isoformat()
        owners = await self._owners(sids)
        async with self._redis.pipeline(transaction=False) as pipe:
            for sid, owner in zip(sids, owners, strict=True):
                if owner is not None:
                    pipe.srem(self._keys.user_sockets(owner), sid)
                    pipe.set(self._keys.last_seen(owner), seen, ex=LAST_SEEN_TTL_SECONDS)
                pipe.delete(self._keys.socket_user(sid))
            pipe.delete(key)
            await pipe.execute()
        log.info("swept a dead replica", extra={"replica": replica, "sockets": len(sids)})

    async def _owners(self, sids: list[str]) -> list[str | None]:
        """The user of each socket id, from the reverse map (None where it is gone)."""
        if not sids:
            return []
        assert self._redis is not None
        keys = [self._keys.socket_user(sid) for sid in sids]
        if isinstance(self._redis, RedisCluster):
            replies = await self._redis.mget_nonatomic(keys)  # the sockets' keys are anywhere
        else:
            replies = await self._redis.mget(keys)
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
