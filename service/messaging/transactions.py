"""The transaction policy, in one place: how the rules reach the database.

Every read and write of the rules goes through ``Database.connection()`` (autocommit reads, the
group committer's batches) or ``Database.transaction()``; both turn the database being away,
overloaded or restarting into ``UNAVAILABLE`` (``is_unavailability`` says which errors mean
"not now"), and flip ``database_ok`` so readiness turns at once rather than at the next check.
The drain counter lives here too: requests in flight, so a draining process waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from messaging import db, store
from messaging.errors import Unavailable
from messaging.logs import describe_error
from messaging.read_replica import ReplicaReads

log = logging.getLogger(__name__)

T = TypeVar("T")


class Database:
    """Connections and transactions over one engine, and the requests in flight.

    ``keep_connections``: how many autocommit connections stay checked out between reads, for
    the next ones (PostgreSQL; 0 keeps none). A checkout from SQLAlchemy's pool, setting
    autocommit and giving the connection back cost three greenlet switches and the pool's
    bookkeeping: 15% of a gRPC history page's CPU (BENCHMARKS.md, "Twelfth reading"). A kept
    connection is used again only after a clean use; one that sat idle for
    ``db.IDLE_BEFORE_PING_SECONDS`` is pinged first, like the pool's own (``db.py``).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        replica: ReplicaReads | None = None,
        keep_connections: int = 0,
    ) -> None:
        self._engine = engine
        # Newest last, each with when it was given back.
        self._kept: list[tuple[AsyncConnection, float]] = []
        self._keep = keep_connections if engine.dialect.name == "postgresql" else 0
        self._closed = False
        # History and conversation lists may be served by a read replica (None: the primary).
        self._replica = replica
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        # False from the moment a request finds the database away until a ping succeeds:
        # readiness turns at once, not at the next periodic check.
        self.database_ok = True

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    @property
    def kept_connections(self) -> int:
        """Connections checked out of the pool but idle, kept for the next reads."""
        return len(self._kept)

    @property
    def replica(self) -> ReplicaReads | None:
        """The read replica, None without one (``Service.stop`` disposes of it)."""
        return self._replica

    async def read(self, kind: str, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """``work`` (reads only) on the read replica when it has everything acknowledged before
        this call, else on the primary (read_replica.py); the primary without a replica."""
        if self._replica is not None:
            return await self._replica.read(kind, self._connection, work)
        async with self._connection() as conn:
            return await work(conn)

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        """A transaction whose database failures surface as ``UNAVAILABLE``."""
        try:
            with _database_errors():
                async with self._engine.begin() as conn:
                    yield conn
        except Unavailable:
            self.database_ok = False
            raise

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection]:
        """A connection without an open transaction, for reads and for the group committer.

        On PostgreSQL it is in autocommit, so a read, or a batch of new messages (one statement),
        is one round trip instead of three (BEGIN, statement, COMMIT). A read of several
        statements may see commits made between them, which every reader here tolerates. The
        committer commits each batch itself (a no-op in autocommit, needed on SQLite).
        """
        try:
            with _database_errors():
                if self._engine.dialect.name != "postgresql":
                    async with self._engine.connect() as conn:
                        yield conn
                    return
                conn = await self._take()
                kept = False
                try:
                    yield conn
                    kept = await self._keep_for_next(conn)
                finally:
                    if not kept:
                        await conn.close()
        except Unavailable:
            self.database_ok = False
            raise

    async def _take(self) -> AsyncConnection:
        """A kept connection (pinged first if it sat idle), else one from the pool."""
        while self._kept:
            conn, since = self._kept.pop()
            if time.monotonic() - since < db.IDLE_BEFORE_PING_SECONDS:
                return conn
            try:
                await store.ping(conn)
            except BaseException as exc:
                # Cut while it was kept (a restart, a proxy): the pool replaces it.
                with contextlib.suppress(Exception):
                    await conn.invalidate()
                    await conn.close()
                if not isinstance(exc, Exception):
                    raise
                continue
            return conn
        conn = await self._engine.connect().start()
        try:
            return await conn.execution_options(isolation_level="AUTOCOMMIT")
        except BaseException:
            await conn.close()
            raise

    async def _keep_for_next(self, conn: AsyncConnection) -> bool:
        """Keep ``conn`` after a clean use, if there is room (the rest go back to the pool)."""
        if self._closed or len(self._kept) >= self._keep or conn.invalidated:
            return False
        if conn.in_transaction():
            # SQLAlchemy's own bookkeeping of an autocommit connection that ran statements
            # (nothing is open in the database); ended so the next user starts clean.
            await conn.rollback()
        self._kept.append((conn, time.monotonic()))
        return True

    async def close(self) -> None:
        """Give the kept connections back to the pool (before the engine is disposed of)."""
        self._closed = True
        kept, self._kept = self._kept, []
        for conn, _ in kept:
            with contextlib.suppress(Exception):
                await conn.close()

    def connection(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection for the feature modules' reads (failures surface as ``UNAVAILABLE``)."""
        return self._connection()

    def transaction(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A transaction for the feature modules' writes (failures surface as ``UNAVAILABLE``)."""
        return self._transaction()

    def request_started(self) -> None:
        """Count a request in flight, so a draining process can wait for them to finish."""
        self._in_flight += 1
        self._idle.clear()

    def request_finished(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def ping_database(self) -> None:
        async with self._connection() as conn:
            await store.ping(conn)
        self.database_ok = True


@contextmanager
def _database_errors() -> Iterator[None]:
    """Turn the database being unreachable, overloaded or restarting into ``UNAVAILABLE``."""
    try:
        yield
    except (OperationalError, DBAPIError, OSError, TimeoutError, PoolTimeout) as exc:
        if isinstance(exc, DBAPIError) and not is_unavailability(exc):
            raise
        log.warning("database unavailable", extra={"error": describe_error(exc)})
        raise Unavailable("the database is unavailable; try again") from exc


# SQLSTATE classes and codes that mean "not now" rather than "never": connection exceptions,
# insufficient resources (too many connections), operator intervention (admin shutdown, crash
# shutdown, cannot connect now, statement cancelled), and a transaction that lost a race
# (serialization failure, deadlock, lock not available) which a retry resolves.
_RETRYABLE_CLASSES = ("08", "53", "57")
_RETRYABLE_STATES = ("40001", "40P01", "55P03")


def is_unavailability(exc: DBAPIError) -> bool:
    """Whether a database error says the database is away or busy (retryable), not a bug."""
    if exc.connection_invalidated or isinstance(exc, (OperationalError, InterfaceError)):
        return True
    orig = exc.orig
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if isinstance(state, str) and (state[:2] in _RETRYABLE_CLASSES or state in _RETRYABLE_STATES):
        return True
    cause = getattr(orig, "__cause__", None)
    return isinstance(orig, (OSError, TimeoutError)) or isinstance(cause, (OSError, TimeoutError))
