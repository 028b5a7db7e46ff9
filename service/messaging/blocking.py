"""Blocking: what a block between two users forbids, and the cached check every send needs.

While A blocks B: neither can open a conversation with the other nor send into their direct
conversation (``FORBIDDEN``, nothing stored), nor add the other to a group (the groups rules call
``Blocks.either_blocks``); typing is not delivered between them and presence is left out both
ways. B learns nothing it could not learn otherwise: its refusal is word for word the one a user
who is not a first-degree connection gets, typing acks ``{}`` as always, and presence answers as
for a stranger. A, who knows, is told to unblock first.

The answer for a pair is cached, like the Connections check (a TTL, an LRU bound), because every
send asks it. A change must hold at once on every replica, not after a TTL: the replica that
commits a block drops its own entry, announces the pair on the Redis channel ``blocks:changed``
(heard through the delivery backplane's supervised subscription; on a Redis Cluster a sharded
channel, so the count ``PUBLISH`` answers is every replica's) and waits, briefly, until every
subscribed replica has confirmed it dropped the entry too, before it acknowledges the client. A
replica trusts its cache only while that subscription is up; otherwise (Redis away, the listener
resubscribing, the process just started) it reads through to the database, and it empties the
cache whenever the subscription is re-established, since it may have missed announcements. A
generation counter keeps an answer read before an invalidation from being cached after it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections import OrderedDict
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from redis.exceptions import RedisError

from messaging import metrics
from messaging.delivery import Delivery
from messaging.errors import Forbidden, ValidationFailed
from messaging.storage import blocking as storage
from messaging.transactions import Database

log = logging.getLogger(__name__)

CHANGED_CHANNEL = "blocks:changed"
TTL_JITTER = 0.2
# What a blocked user is told: exactly what a user who is not a connection is told
# (conversations.py, messages.py).
NOT_A_CONNECTION = "you can only message your first-degree connections"
YOU_BLOCK = "you have blocked this user; unblock them first"


def acks_channel(replica_id: str) -> str:
    return f"blocks:acks:{replica_id}"


@dataclass(frozen=True, slots=True)
class Relation:
    """The blocks between a user and one other user, seen from the user."""

    blocks_other: bool = False
    blocked_by_other: bool = False

    @property
    def any(self) -> bool:
        return self.blocks_other or self.blocked_by_other


NONE = Relation()


@dataclass(slots=True)
class _Announcement:
    """A block change this replica announced, waiting for the other replicas' confirmations."""

    done: asyncio.Future[None]
    acks: int = 0
    expected: int | None = None  # PUBLISH's count of subscribers, once it answered

    def settle(self) -> None:
        if self.expected is not None and self.acks >= self.expected and not self.done.done():
            self.done.set_result(None)


class Blocks:
    """Blocks between users: the rules, the per-pair cache and its invalidation across replicas.

    One instance per process, built in the app factory over the rules' ``Database`` (whose
    failures surface as ``UNAVAILABLE``).
    """

    def __init__(
        self,
        *,
        database: Database,
        delivery: Delivery,
        replica_id: str,
        cache_ttl_seconds: float,
        cache_size: int,
        max_blocked: int,
        invalidation_timeout_seconds: float,
    ) -> None:
        self._database = database
        self._delivery = delivery
        # Without Redis there is one replica: a change is forgotten here and nowhere else.
        self._shared = delivery.uses_redis
        self._replica_id = replica_id
        self._ttl = cache_ttl_seconds
        self._size = cache_size
        self.max_blocked = max_blocked
        self._timeout = invalidation_timeout_seconds
        # (low, high) -> (low blocks high, high blocks low, expires at)
        self._cache: OrderedDict[tuple[str, str], tuple[bool, bool, float]] = OrderedDict()
        self._generation = 0
        self._announced: dict[str, _Announcement] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._from_cache = metrics.BLOCK_CHECKS.labels(source="cache")
        self._from_database = metrics.BLOCK_CHECKS.labels(source="database")
        if self._shared:
            delivery.listen(CHANGED_CHANNEL, self._heard_change, subscribed=self.forget)
            delivery.listen(acks_channel(replica_id), self._heard_ack)

    # --- the rules ---------------------------------------------------------------------------

    async def check_may_message(self, user_id: str, other_id: str) -> None:
        """Refuse (``FORBIDDEN``) a conversation or a direct message between a blocked pair."""
        relation = await self.relation(user_id, other_id)
        if relation.blocks_other:
            raise Forbidden(YOU_BLOCK)
        if relation.blocked_by_other:
            raise Forbidden(NOT_A_CONNECTION)

    async def either_blocks(self, user_id: str, others: Iterable[str]) -> frozenset[str]:
        """Those of ``others`` that ``user_id`` blocks or is blocked by: at most one query.

        For the groups rules: a creator or adder and every new member, before they are added.
        """
        relations = await self.relations(user_id, others)
        return frozenset(other for other, relation in relations.items() if relation.any)

    async def relation(self, user_id: str, other_id: str) -> Relation:
        """One pair (every send asks this): a cached answer costs a dictionary lookup."""
        if self._trusted():
            key = _pair(user_id, other_id)
            cached = self._cache.get(key)
            if cached is not None and cached[2] > time.monotonic():
                self._cache.move_to_end(key)
                self._from_cache.inc()
                return _seen_from(user_id, key, cached[0], cached[1])
        return (await self.relations(user_id, [other_id]))[other_id]

    async def relations(self, user_id: str, others: Iterable[str]) -> dict[str, Relation]:
        """The relation of ``user_id`` with each of ``others``: cached, misses in one query."""
        found: dict[str, Relation] = {}
        missing: list[str] = []
        trusted = self._trusted()
        now = time.monotonic()
        for other in dict.fromkeys(others):
            if other == user_id:
                found[other] = NONE
                continue
            key = _pair(user_id, other)
            cached = self._cache.get(key) if trusted else None
            if cached is not None and cached[2] > now:
                self._cache.move_to_end(key)
                self._from_cache.inc()
                found[other] = _seen_from(user_id, key, cached[0], cached[1])
            else:
                missing.append(other)
        if not missing:
            return found
        generation = self._generation
        async with self._database.connection() as conn:
            rows = await storage.relations(conn, user_id=user_id, others=missing)
        self._from_database.inc(len(missing))
        keep = trusted and self._ttl > 0 and self._size > 0 and generation == self._generation
        for other in missing:
            relation = Relation(
                blocks_other=(user_id, other) in rows, blocked_by_other=(other, user_id) in rows
            )
            found[other] = relation
            if keep:
                low, high = key = _pair(user_id, other)
                lifetime = self._ttl * (1 - random.random() * TTL_JITTER)  # noqa: S311 - not crypto
                self._cache[key] = ((low, high) in rows, (high, low) in rows, now + lifetime)
                self._cache.move_to_end(key)
        while len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return found

    # --- changes -----------------------------------------------------------------------------

    async def block(self, user_id: str, other_id: str) -> None:
        """Block ``other_id``; blocking again is not an error. At most ``max_blocked`` users."""
        if other_id == user_id:
            raise ValidationFailed("you cannot block yourself")
        async with self._database.transaction() as conn:
            await storage.lock_blocker(conn, user_id)
            if not await storage.is_blocking(conn, blocker_id=user_id, blocked_id=other_id):
                if await storage.count_blocked(conn, user_id) >= self.max_blocked:
                    raise ValidationFailed(
                        f"you have blocked the most users allowed ({self.max_blocked}); "
                        "unblock someone first",
                        details={"maxBlocked": self.max_blocked},
                    )
                await storage.add_block(
                    conn, blocker_id=user_id, blocked_id=other_id, at=datetime.now(UTC)
                )
        # Announced even when nothing changed: a client retrying after a timeout repairs caches.
        await self._announce(user_id, other_id)

    async def unblock(self, user_id: str, other_id: str) -> None:
        """Lift the block; unblocking someone not blocked is not an error."""
        if other_id == user_id:
            raise ValidationFailed("you cannot unblock yourself")
        async with self._database.transaction() as conn:
            await storage.remove_block(conn, blocker_id=user_id, blocked_id=other_id)
        await self._announce(user_id, other_id)

    async def blocked(self, user_id: str) -> list[str]:
        """The users ``user_id`` blocks, most recently blocked first (never who blocks them)."""
        async with self._database.connection() as conn:
            return await storage.blocked_by(conn, user_id)

    # --- the cache across replicas -----------------------------------------------------------

    def forget(self) -> None:
        """Drop every cached answer (the subscription was re-established: some may be stale)."""
        self._generation += 1
        self._cache.clear()

    def _forget_pair(self, a: str, b: str) -> None:
        self._generation += 1
        self._cache.pop(_pair(a, b), None)

    def _trusted(self) -> bool:
        """Cached answers hold only while this replica hears every announcement."""
        return not self._shared or self._delivery.listener_healthy

    async def _announce(self, a: str, b: str) -> None:
        """Drop the pair here, and on every replica before returning (or after the timeout)."""
        self._forget_pair(a, b)
        if not self._shared:
            metrics.BLOCK_INVALIDATIONS.labels(outcome="local").inc()
            return
        nonce = uuid.uuid4().hex
        announcement = _Announcement(asyncio.get_running_loop().create_future())
        self._announced[nonce] = announcement
        data = orjson.dumps({"o": self._replica_id, "n": nonce, "u": list(_pair(a, b))})
        started = time.monotonic()
        try:
            try:
                async with asyncio.timeout(self._timeout):
                    receivers = await self._delivery.notify(CHANGED_CHANNEL, data)
            except (RedisError, OSError, TimeoutError) as exc:
                # The other replicas cannot hear Redis either (or soon notice they cannot): they
                # read through until they resubscribe, and then empty their caches.
                metrics.BLOCK_INVALIDATIONS.labels(outcome="failed").inc()
                log.warning("announcing a block change failed", extra={"error": repr(exc)})
                return
            announcement.expected = int(receivers)
            announcement.settle()
            left = max(0.0, self._timeout - (time.monotonic() - started))
            try:
                async with asyncio.timeout(left):
                    await asyncio.shield(announcement.done)
            except TimeoutError:
                metrics.BLOCK_INVALIDATIONS.labels(outcome="timeout").inc()
                log.warning(
                    "not every replica confirmed a block change in time",
                    extra={"confirmed": announcement.acks, "expected": receivers},
                )
                return
            metrics.BLOCK_INVALIDATIONS.labels(outcome="acked").inc()
        finally:
            del self._announced[nonce]

    def _heard_change(self, data: bytes) -> None:
        change = orjson.loads(data)
        low, high = change["u"]
        self._forget_pair(low, high)
        origin, nonce = str(change["o"]), str(change["n"])
        if origin == self._replica_id:
            self._heard_ack(nonce.encode())
        elif self._shared:
            self._spawn(self._confirm(origin, nonce))

    async def _confirm(self, origin: str, nonce: str) -> None:
        try:
            await self._delivery.notify(acks_channel(origin), nonce.encode())
        except (RedisError, OSError) as exc:
            log.warning("confirming a block change failed", extra={"error": repr(exc)})

    def _heard_ack(self, data: bytes) -> None:
        announcement = self._announced.get(data.decode())
        if announcement is not None:
            announcement.acks += 1
            announcement.settle()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


def _seen_from(user_id: str, key: tuple[str, str], low_blocks: bool, high_blocks: bool) -> Relation:
    if key[0] == user_id:
        return Relation(blocks_other=low_blocks, blocked_by_other=high_blocks)
    return Relation(blocks_other=high_blocks, blocked_by_other=low_blocks)
