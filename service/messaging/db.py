"""The database engine and the schema migrations (``messaging migrate``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, pool
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from messaging import metrics
from messaging.logs import describe_error
from messaging.settings import Settings

MIGRATIONS = Path(__file__).with_name("migrations")

log = logging.getLogger(__name__)


def create_engine(settings: Settings) -> AsyncEngine:
    """An engine for the configured database; it connects lazily, on first use."""
    if settings.uses_postgres:
        return _postgres_engine(settings, settings.database_url)
    # SQLite allows one writer at a time: one pooled connection makes transactions queue in
    # the pool instead of failing with "database is locked".
    engine = create_async_engine(
        settings.database_url,
        poolclass=pool.AsyncAdaptedQueuePool,
        pool_size=1,
        max_overflow=0,
        pool_timeout=30,
        echo=settings.database_echo,
        hide_parameters=True,
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return engine


def create_read_engine(settings: Settings) -> AsyncEngine | None:
    """The read replica's engine (``MESSAGING_DATABASE_READ_URL``), or None when none is set.

    Shorter timeouts than the primary's: a replica that does not answer costs a read only the
    time to notice, then the primary serves it (read_replica.py).
    """
    if not settings.database_read_url:
        return None
    return _postgres_engine(settings, settings.database_read_url, pool_timeout=1, connect_timeout=2)


def _postgres_engine(
    settings: Settings, url: str, *, pool_timeout: float = 5, connect_timeout: float = 5
) -> AsyncEngine:
    engine = create_async_engine(
        url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_pool_size,
        pool_recycle=1800,
        pool_timeout=pool_timeout,
        echo=settings.database_echo,
        # Errors and echo lines never quote parameters: they are users' messages and ids.
        hide_parameters=True,
        connect_args={"timeout": connect_timeout, "command_timeout": 15},
    )
    _ping_when_idle(engine)
    return engine


IDLE_BEFORE_PING_SECONDS = 10.0


def _ping_when_idle(engine: AsyncEngine) -> None:
    """Check a pooled connection before use only if it sat idle for a while.

    SQLAlchemy's ``pool_pre_ping`` pings on every checkout: a round trip per request. A
    connection in constant use has just proved itself; one that sat idle may have been cut
    (a database restart, a proxy timeout). A failed ping makes the pool open a fresh one.
    """

    @event.listens_for(engine.sync_engine, "checkin")
    def _note_idle(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < IDLE_BEFORE_PING_SECONDS:
            return
        try:
            dbapi_connection.ping()
        except Exception as exc:
            raise DisconnectionError("pooled connection failed its ping") from exc


async def open_pool(engine: AsyncEngine) -> None:
    """Open every connection the pool keeps, before the replica reports ready.

    A pool grows on demand, so the first burst of concurrent requests after a start would each
    wait for a new connection (connect, authenticate, the driver's type setup): with 8
    concurrent gRPC history clients that was the worst p99 of the history benchmark
    (BENCHMARKS.md). The pool keeps them anyway once one burst has come. Best effort: a database
    that is not reachable yet is readiness's concern, and the connections open on demand later.
    """
    sync_pool = engine.sync_engine.pool
    if not isinstance(sync_pool, pool.QueuePool):
        return  # SQLite's single connection, a NullPool: nothing to keep open
    opened = await asyncio.gather(
        *(engine.connect().start() for _ in range(sync_pool.size())), return_exceptions=True
    )
    for conn in opened:
        if not isinstance(conn, BaseException):
            await conn.close()
    failures = [e for e in opened if isinstance(e, BaseException)]
    if failures:
        log.warning(
            "database pool not opened at start",
            extra={"failed": len(failures), "error": describe_error(failures[0])},
        )


def observe_pool(engine: AsyncEngine, *, kept: Callable[[], int] = lambda: 0) -> None:
    """Export the pool's in-use and idle connection counts (read at scrape time). ``kept``:
    connections checked out but idle, kept for the next reads (``transactions.Database``),
    counted as idle."""
    sync_pool = engine.sync_engine.pool
    if isinstance(sync_pool, pool.QueuePool):
        metrics.DB_POOL_CONNECTIONS.labels(state="in_use").set_function(
            lambda: sync_pool.checkedout() - kept()
        )
        metrics.DB_POOL_CONNECTIONS.labels(state="idle").set_function(
            lambda: sync_pool.checkedin() + kept()
        )


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def head_revision() -> str:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    head = script.get_current_head()
    assert head is not None
    return head


def migrate(settings: Settings) -> str:
    """Bring the schema to the newest revision; returns that revision. Safe to run repeatedly."""
    command.upgrade(alembic_config(settings.database_url), "head")
    return asyncio.run(current_revision(settings)) or ""


async def current_revision(settings: Settings) -> str | None:
    engine = create_async_engine(settings.database_url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda sync_conn: MigrationContext.configure(sync_conn).get_current_revision()
            )
    finally:
        await engine.dispose()
