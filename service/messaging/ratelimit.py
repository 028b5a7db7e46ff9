"""Per-user rate limits: how much one user may ask of the cluster, per kind of request.

Each limit is a token bucket per user (``per_second`` sustained, ``burst`` at once). Two buckets
hold it:

- a **local** one in this process, always: it is what still holds when Redis is down, and it
  costs no I/O;
- a **shared** one in Redis (``ratelimit:{userId}:{limit}``, a hash updated by one Lua script in
  one round trip, on Redis's clock), so that a user spreading requests over replicas gets one
  budget, not one per replica.

The shared bucket is not asked once per request: a process takes a *lease* of tokens at a time
(a quarter of the burst) and spends it locally, taking the next lease in the background when
half of it is spent; concurrent requests share one fetch. Only a user's first request on a
replica (or one after ``LEASE_SECONDS`` of silence) waits for Redis; after that a sender costs a
background script call per half lease, never a round trip on its requests' path. Leased tokens
come out of the shared bucket, so they are never handed out twice; what a lease changes is that a
user idle long enough for the shared bucket to refill may spend it plus the leases replicas still
hold (at most a quarter of the burst each), and a lease left unspent on a replica the user left
is lost to the user until it expires. With Redis unreachable the shared bucket is skipped for
``REDIS_RETRY_SECONDS`` and the local one alone applies.

The bucket arithmetic (``Bucket``) is pure and shared with the script's logic; everything else is
bookkeeping around it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from messaging import metrics
from messaging.errors import RateLimited
from messaging.redis_wire import RedisClient

log = logging.getLogger(__name__)

LEASE_SECONDS = 60.0
LEASE_FRACTION_OF_BURST = 4
REDIS_TIMEOUT_SECONDS = 0.5
REDIS_RETRY_SECONDS = 1.0
MAX_TRACKED_USERS = 200_000


def bucket_key(user_id: str, limit: str, *, cluster: bool = False) -> str:
    """On a Redis Cluster the user id is the hash tag: a user's buckets share their slot."""
    if cluster:
        return f"ratelimit:{{{user_id}}}:{limit}"
    return f"ratelimit:{user_id}:{limit}"


# Takes up to ARGV[3] tokens from the bucket KEYS[1] (rate ARGV[1]/s, capacity ARGV[2]); returns
# {tokens granted, milliseconds until one token is available when none was}. Redis's own clock,
# so replicas' clocks do not matter; the key expires once it would have refilled anyway.
TAKE_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now
end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
local granted = math.min(want, math.floor(tokens))
local retry = 0
if granted >= 1 then
  tokens = tokens - granted
else
  granted = 0
  retry = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {granted, retry}
"""


@dataclass(frozen=True, slots=True)
class Budget:
    per_second: float
    burst: int

    @property
    def lease(self) -> int:
        """Tokens taken from the shared bucket at a time."""
        return max(1, self.burst // LEASE_FRACTION_OF_BURST)


@dataclass(slots=True)
class Bucket:
    """A token bucket; ``take`` is the same arithmetic as ``TAKE_SCRIPT``."""

    tokens: float
    at: float

    def take(self, budget: Budget, now: float, want: int = 1) -> tuple[int, float]:
        """Take up to ``want`` tokens; returns (granted, seconds until one is available)."""
        self.tokens = min(
            float(budget.burst), self.tokens + max(0.0, now - self.at) * budget.per_second
        )
        self.at = now
        granted = min(want, math.floor(self.tokens))
        if granted >= 1:
            self.tokens -= granted
            return granted, 0.0
        return 0, (1.0 - self.tokens) / budget.per_second


@dataclass(slots=True)
class _UserState:
    """One user's state for one limit on this process."""

    local: Bucket
    leased: int = 0  # tokens of the shared bucket this process holds
    leased_until: float = 0.0
    blocked_until: float = 0.0  # the shared bucket is empty until then
    waiting: int = 0  # requests waiting for ``fetch``
    # The one request to the shared bucket in flight for this user and limit: concurrent
    # requests wait for it instead of each asking Redis (and each holding back a lease).
    fetch: asyncio.Task[tuple[int | None, float]] | None = None


def refused(retry_after_seconds: float) -> RateLimited:
    retry_ms = max(1, math.ceil(retry_after_seconds * 1000))
    return RateLimited(
        f"too many requests; retry in {retry_ms} ms", details={"retryAfterMs": retry_ms}
    )


class _InFlightSlot:
    """One send's in-flight slot (``RateLimiter.in_flight``): taken on entry, given back on exit.

    A class rather than a ``contextlib.contextmanager``: it is entered for every message sent,
    and a generator-based manager costs several times as much per use.
    """

    __slots__ = ("_limiter", "_user_id")

    def __init__(self, limiter: RateLimiter, user_id: str) -> None:
        self._limiter = limiter
        self._user_id = user_id

    def __enter__(self) -> None:
        self._limiter._take_slot(self._user_id)

    def __exit__(self, *exc_info: object) -> None:
        self._limiter._release_slot(self._user_id)


class RateLimiter:
    """The per-user limits of this process (and, with Redis, of the cluster)."""

    def __init__(
        self,
        budgets: Mapping[str, tuple[float, int]],
        *,
        redis: RedisClient | None,
        enabled: bool = True,
        max_in_flight: int = 32,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budgets = {name: Budget(rate, burst) for name, (rate, burst) in budgets.items()}
        self.enabled = enabled
        self._redis = redis
        self._cluster = isinstance(redis, RedisCluster)
        self._clock = clock
        self._script = redis.register_script(TAKE_SCRIPT) if redis is not None else None
        self._redis_down_until = 0.0
        self._state: OrderedDict[tuple[str, str], _UserState] = OrderedDict()
        self._max_in_flight = max_in_flight
        self._in_flight: dict[str, int] = {}
        self._refused = {name: metrics.RATE_LIMITED.labels(limit=name) for name in self.budgets}
        self._in_flight_refused = metrics.RATE_LIMITED.labels(limit="in_flight")

    # --- token buckets -------------------------------------------------------------------------

    async def admit(self, user_id: str, limit: str) -> None:
        """Spend one token of ``user_id``'s ``limit``, or raise ``RATE_LIMITED``."""
        if not self.enabled:
            return
        budget = self.budgets[limit]
        now = self._clock()
        state = self._user_state(user_id, limit, budget, now)
        if now < state.blocked_until:
            # The shared bucket said it is empty until then: no need to ask again before.
            self._refused[limit].inc()
            raise refused(state.blocked_until - now)
        granted, wait = state.local.take(budget, now)
        if not granted:
            self._refused[limit].inc()
            raise refused(wait)
        while self._script is not None and self._clock() >= self._redis_down_until:
            if state.leased > 0 and self._clock() < state.leased_until:
                state.leased -= 1
                if state.leased * 2 <= budget.lease and state.fetch is None:
                    self._start_fetch(user_id, limit, budget, state)  # the next lease, ahead
                return
            fetch = state.fetch or self._start_fetch(user_id, limit, budget, state)
            state.waiting += 1
            try:
                shared, wait = await asyncio.shield(fetch)
            finally:
                state.waiting -= 1
            if shared is None:
                return  # Redis is unreachable: the local bucket has admitted it
            if not shared:
                state.local.tokens = min(float(budget.burst), state.local.tokens + 1)  # unspent
                state.blocked_until = self._clock() + wait
                self._refused[limit].inc()
                raise refused(wait)
            # A lease arrived: spend from it (other waiters may have emptied it: then ask again).

    def _start_fetch(
        self, user_id: str, limit: str, budget: Budget, state: _UserState
    ) -> asyncio.Task[tuple[int | None, float]]:
        state.fetch = asyncio.create_task(self._fetch(user_id, limit, budget, state))
        return state.fetch

    async def _fetch(
        self, user_id: str, limit: str, budget: Budget, state: _UserState
    ) -> tuple[int | None, float]:
        """Take a lease from the shared bucket: enough for everyone waiting, at least ``lease``."""
        try:
            want = min(budget.burst, max(budget.lease, state.waiting))
            granted, wait = await self._take_shared(user_id, limit, want, budget)
            if granted:
                now = self._clock()
                held = state.leased if now < state.leased_until else 0
                state.leased, state.leased_until = held + granted, now + LEASE_SECONDS
            return granted, wait
        finally:
            state.fetch = None

    async def _take_shared(
        self, user_id: str, limit: str, want: int, budget: Budget
    ) -> tuple[int | None, float]:
        """Tokens granted by the shared bucket (None: Redis unreachable) and the wait if none."""
        assert self._script is not None
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_SECONDS):
                granted, retry_ms = await self._script(
                    keys=[bucket_key(user_id, limit, cluster=self._cluster)],
                    args=[repr(budget.per_second), budget.burst, want],
                )
        except (RedisError, OSError, TimeoutError) as exc:
            if self._clock() >= self._redis_down_until:
                log.warning(
                    "rate limits: Redis unreachable, local limits only for a while",
                    extra={"error": type(exc).__name__},
                )
            self._redis_down_until = self._clock() + REDIS_RETRY_SECONDS
            metrics.RATE_LIMIT_REDIS_ERRORS.inc()
            return None, 0.0
        return int(granted), int(retry_ms) / 1000

    def _user_state(self, user_id: str, limit: str, budget: Budget, now: float) -> _UserState:
        key = (user_id, limit)
        state = self._state.get(key)
        if state is None:
            state = self._state[key] = _UserState(Bucket(float(budget.burst), now))
            while len(self._state) > MAX_TRACKED_USERS:
                # The oldest entry's bucket has refilled long ago (or belongs to a flood of new
                # users): forgetting it only forgets a full bucket.
                self._state.popitem(last=False)
        else:
            self._state.move_to_end(key)
        return state

    # --- sends waiting for their commit ----------------------------------------------------------

    def in_flight(self, user_id: str) -> _InFlightSlot:
        """Hold one of ``user_id``'s in-flight slots for the duration of a ``with`` block."""
        return _InFlightSlot(self, user_id)

    def _take_slot(self, user_id: str) -> None:
        held = self._in_flight.get(user_id, 0)
        if self.enabled and held >= self._max_in_flight:
            self._in_flight_refused.inc()
            raise refused(0.05)
        self._in_flight[user_id] = held + 1

    def _release_slot(self, user_id: str) -> None:
        left = self._in_flight[user_id] - 1
        if left:
            self._in_flight[user_id] = left
        else:
            del self._in_flight[user_id]

    async def close(self) -> None:
        for state in self._state.values():
            if state.fetch is not None:
                state.fetch.cancel()
