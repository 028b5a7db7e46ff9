"""Reads served by a PostgreSQL streaming replica without breaking read-your-writes.

History pages and conversation lists (``MESSAGING_DATABASE_READ_URL``) may be read from a hot
standby, but a client must never miss there a change it was acknowledged, on this process or on
any other (the user's other device, a gRPC bot). So every such read takes a bound first: the
primary's WAL insert position, read *after* the request arrived. Every commit acknowledged to
anyone before that moment wrote its commit record below the bound (also with
``synchronous_commit=off``: the insert position, not the flushed one). The read goes to the
replica only once the replica's replay position (``pg_last_wal_replay_lsn()``, asked on the very
connection that then reads, so a read URL that balances over several standbys stays exact) has
reached the bound; it waits for that a bounded time, then reads the primary instead. A replica
that is down, not a standby (promoted, or a primary by mistake) or that fails the read in any way
is never an error for the client: the primary answers.

The bound costs one tiny statement on the primary, shared by every read that arrives while one
is in flight (single flight: a probe that started before a read arrived cannot bound it, so
those reads take the next one). The primary still sees one round trip per batch of reads instead
of the reads themselves (a history page is three or four statements). docs/read-replicas.md
states the guarantee for operators.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TypeVar

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from messaging import metrics
from messaging.logs import describe_error

log = logging.getLogger(__name__)

T = TypeVar("T")
ConnectionFactory = Callable[[], AbstractAsyncContextManager[AsyncConnection]]

# After the replica failed to connect, reads go to the primary this long before trying it again
# (a replica that is away would otherwise cost every read a connect timeout).
RETRY_AFTER_SECONDS = 5.0
# Polling the replay position while waiting: from 1 ms, doubling, to at most this.
MAX_POLL_SECONDS = 0.02

READS = ("history", "conversations")
# Why a read was served where it was (the ``reason`` label).
REASONS = {
    "replica": ("caught_up", "waited"),
    "primary": ("lagging", "replica_down", "replica_error", "not_a_standby"),
}

_PRIMARY_POSITION = text("SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint")
_REPLAYED_POSITION = text("SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint")


class ReplicaReads:
    """Routes the reads that tolerate a standby to it, each bounded by the primary's position."""

    def __init__(
        self,
        *,
        replica: AsyncEngine,
        max_wait_seconds: float,
        retry_after_seconds: float = RETRY_AFTER_SECONDS,
    ) -> None:
        self._replica = replica
        self._max_wait = max_wait_seconds
        self._retry_after = retry_after_seconds
        self._down_until = 0.0
        # The probe the reads arriving now will share (None: none asked for yet), and whether
        # the task that runs probes one after the other is alive.
        self._next_probe: asyncio.Future[int] | None = None
        self._probing: asyncio.Task[None] | None = None
        metrics.READ_REPLICA_UP.set(1)
        for read in READS:
            for served_by, reasons in REASONS.items():
                for reason in reasons:
                    metrics.READ_REPLICA_READS.labels(read=read, served_by=served_by, reason=reason)

    @property
    def engine(self) -> AsyncEngine:
        return self._replica

    async def read(
        self,
        kind: str,
        primary: ConnectionFactory,
        work: Callable[[AsyncConnection], Awaitable[T]],
    ) -> T:
        """``work`` on the replica if it has replayed everything acknowledged before this call,
        else on a connection from ``primary`` (whose failures are the caller's errors).

        ``work`` may run twice (once on the replica that failed it, then on the primary): it
        must only read.
        """
        bound = await self._bound(primary)
        reason = "replica_down"
        if time.monotonic() >= self._down_until:
            try:
                async with self._replica.connect() as pooled:
                    conn = await pooled.execution_options(isolation_level="AUTOCOMMIT")
                    reason = await self._wait_for_replay(conn, bound)
                    if reason in REASONS["replica"]:
                        result = await work(conn)
                        metrics.READ_REPLICA_READS.labels(
                            read=kind, served_by="replica", reason=reason
                        ).inc()
                        return result
            except (DBAPIError, OSError, TimeoutError, PoolTimeout) as exc:
                reason = "replica_error"
                if _replica_away(exc):
                    reason = "replica_down"
                    self._down_until = time.monotonic() + self._retry_after
                    metrics.READ_REPLICA_UP.set(0)
                log.warning(
                    "read replica failed; reading the primary",
                    extra={"read": kind, "error": describe_error(exc)},
                )
        metrics.READ_REPLICA_READS.labels(read=kind, served_by="primary", reason=reason).inc()
        async with primary() as conn:
            return await work(conn)

    async def _wait_for_replay(self, conn: AsyncConnection, bound: int) -> str:
        """``caught_up`` or ``waited`` when the replica's replay reached ``bound``; else why not."""
        started = time.monotonic()
        deadline = started + self._max_wait
        pause = 0.001
        waited = False
        while True:
            replayed = (await conn.execute(_REPLAYED_POSITION)).scalar()
            if replayed is None:  # not in recovery: it no longer follows our primary
                return "not_a_standby"
            metrics.READ_REPLICA_UP.set(1)
            lag = max(0, bound - int(replayed))
            if not waited:
                metrics.READ_REPLICA_LAG_BYTES.set(lag)
            if lag == 0:
                metrics.READ_REPLICA_WAIT.observe(time.monotonic() - started)
                return "waited" if waited else "caught_up"
            now = time.monotonic()
            if now >= deadline:
                metrics.READ_REPLICA_WAIT.observe(now - started)
                return "lagging"
            waited = True
            await asyncio.sleep(min(pause, deadline - now))
            pause = min(pause * 2, MAX_POLL_SECONDS)

    async def _bound(self, primary: ConnectionFactory) -> int:
        """The primary's WAL insert position, read after this call began."""
        if self._next_probe is None:
            self._next_probe = asyncio.get_running_loop().create_future()
            if self._probing is None:
                self._probing = asyncio.create_task(
                    self._run_probes(primary), name="read-replica-bound"
                )
        return await asyncio.shield(self._next_probe)

    async def _run_probes(self, primary: ConnectionFactory) -> None:
        """Answer the waiting probe, then the one asked for meanwhile, until none is."""
        try:
            while (probe := self._next_probe) is not None:
                self._next_probe = None  # reads arriving from now on need a later probe
                try:
                    async with primary() as conn:
                        position = int((await conn.execute(_PRIMARY_POSITION)).scalar_one())
                except BaseException as exc:
                    probe.set_exception(exc)
                    probe.exception()  # retrieved: every waiter re-raises it
                    if not isinstance(exc, Exception):
                        raise
                else:
                    probe.set_result(position)
        finally:
            self._probing = None
            if self._next_probe is not None and not self._next_probe.done():
                # Cancelled between probes (shutdown): nobody will answer these reads.
                self._next_probe.cancel()
                self._next_probe = None

    async def dispose(self) -> None:
        await self._replica.dispose()


def _replica_away(exc: BaseException) -> bool:
    """The replica could not be reached or is restarting (as opposed to one read failing on it,
    e.g. a query cancelled by a recovery conflict, or its pool busy for a moment)."""
    if isinstance(exc, PoolTimeout):
        return False
    if not isinstance(exc, DBAPIError):
        return True  # OSError, TimeoutError: connecting failed
    orig = exc.orig
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return (
        bool(exc.connection_invalidated)
        or isinstance(orig, (OSError, TimeoutError))
        or (isinstance(state, str) and state[:2] in ("08", "57") and state != "57014")
    )
