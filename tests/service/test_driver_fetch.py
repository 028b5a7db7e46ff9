"""``store.driver_fetch``: the statements asyncpg runs past SQLAlchemy's cursor (a new-message
batch, a history page) keep SQLAlchemy's semantics: the caller's transaction, the error classes
the commit and unavailability rules read, and a pool that never hands out a broken connection."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from messaging import db
from messaging.commits import refused_for_its_data
from messaging.settings import Settings
from messaging.store import driver_fetch
from messaging.transactions import Database, is_unavailability
from tests.support.servers import PostgresServer
from tests.support.service import JWT_SECRET

SCRATCH = "CREATE TABLE IF NOT EXISTS scratch (id int PRIMARY KEY)"


@pytest_asyncio.fixture
async def engine(postgres_server: PostgresServer) -> AsyncIterator[AsyncEngine]:
    url = postgres_server.create_database(f"driver_{uuid.uuid4().hex[:8]}")
    built = db.create_engine(Settings(database_url=url, jwt_secret=JWT_SECRET))
    async with built.begin() as conn:
        await conn.exec_driver_sql(SCRATCH)
    yield built
    await built.dispose()


async def test_a_statement_the_database_refuses_keeps_the_connection_for_the_next(
    engine: AsyncEngine,
) -> None:
    """The group committer retries a refused batch message by message on the same connection."""
    async with Database(engine).connection() as conn:
        await driver_fetch(conn, "INSERT INTO scratch VALUES ($1) RETURNING id", 1)
        with pytest.raises(DBAPIError) as refused:
            await driver_fetch(conn, "INSERT INTO scratch VALUES ($1) RETURNING id", 1)
        assert refused_for_its_data(refused.value) and not is_unavailability(refused.value)
        assert not conn.invalidated
        assert [tuple(r) for r in await driver_fetch(conn, "SELECT id FROM scratch")] == [(1,)]


async def test_a_cut_connection_is_unavailable_and_leaves_the_pool(
    engine: AsyncEngine, postgres_server: PostgresServer
) -> None:
    async with Database(engine).connection() as conn:
        pid = (await driver_fetch(conn, "SELECT pg_backend_pid()"))[0][0]
        await asyncio.to_thread(
            postgres_server.psql, "postgres", f"SELECT pg_terminate_backend({pid})"
        )
        with pytest.raises(DBAPIError) as cut:
            await driver_fetch(conn, "SELECT 1")
        assert is_unavailability(cut.value) and not refused_for_its_data(cut.value)
        assert conn.invalidated
    async with Database(engine).connection() as conn:
        assert (await driver_fetch(conn, "SELECT pg_backend_pid()"))[0][0] != pid


async def test_in_a_transaction_the_statement_is_part_of_it(engine: AsyncEngine) -> None:
    """Outside autocommit it goes through SQLAlchemy, which begins the driver's transaction: a
    rollback takes the row back (asyncpg alone would have committed it at once)."""
    async with engine.connect() as conn:
        await conn.begin()
        await driver_fetch(conn, "INSERT INTO scratch VALUES ($1) RETURNING id", 7)
        await conn.rollback()
    async with Database(engine).connection() as conn:
        assert await driver_fetch(conn, "SELECT id FROM scratch WHERE id = 7") == []
