"""The database pool: open before a replica is ready, reads reuse idle connections, and a stop
gives every connection back.

A pool that grows on demand makes the first burst of concurrent requests after a start wait for
new connections (connect, authenticate, the driver's type setup): with 8 concurrent gRPC
history clients that was the worst p99 of the whole history benchmark. A checkout from the pool
for every read cost 15% of a history page's CPU; reads now keep idle autocommit connections for
the next ones (BENCHMARKS.md, "Twelfth reading").
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sqlalchemy import text

from messaging import db, metrics
from messaging.dev_connections import ConnectionGraph
from messaging.settings import Settings
from tests.support.servers import PostgresServer
from tests.support.service import JWT_SECRET, RunningService, running_service, service_settings

POOL_SIZE = 3


@pytest_asyncio.fixture
async def own_db(postgres_server: PostgresServer) -> AsyncIterator[str]:
    """A database of its own, so its connections are this test's alone to count."""
    name = f"pool_{uuid.uuid4().hex[:8]}"
    url = postgres_server.create_database(name)
    await asyncio.to_thread(db.migrate, Settings(database_url=url, jwt_secret=JWT_SECRET))
    yield name


@pytest_asyncio.fixture
async def pool_svc(own_db: str, postgres_server: PostgresServer) -> AsyncIterator[RunningService]:
    url = postgres_server.dsn(own_db)
    settings = service_settings(url, database_pool_size=POOL_SIZE, delivery_check_seconds="300")
    async with running_service(settings, ConnectionGraph(), "postgres") as running:
        yield running


async def connections_to(server: PostgresServer, name: str) -> int:
    count = await asyncio.to_thread(
        server.psql,
        "postgres",
        f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{name}'",
    )
    return int(count)


def pool_gauge(state: str) -> float:
    """What a scrape reads now (the gauges of the service started last: this test's)."""
    for family in metrics.DB_POOL_CONNECTIONS.collect():
        for sample in family.samples:
            if sample.labels.get("state") == state:
                return sample.value
    raise AssertionError(f"no {state} sample")


async def test_a_started_replica_has_its_whole_pool_open_before_any_request(
    pool_svc: RunningService, own_db: str, postgres_server: PostgresServer
) -> None:
    assert await connections_to(postgres_server, own_db) >= POOL_SIZE


async def test_connections_kept_for_the_next_reads_count_as_idle_not_in_use(
    pool_svc: RunningService,
) -> None:
    database = pool_svc.service.chat.database

    async def read() -> None:
        async with database.connection() as conn:
            await conn.execute(text("SELECT pg_sleep(0.05)"))

    await asyncio.gather(*(read() for _ in range(POOL_SIZE)))
    assert database.kept_connections == POOL_SIZE
    assert pool_gauge("in_use") == 0
    assert pool_gauge("idle") >= POOL_SIZE


async def test_a_burst_past_the_pool_keeps_no_more_than_the_pool_size(
    pool_svc: RunningService, own_db: str, postgres_server: PostgresServer
) -> None:
    database = pool_svc.service.chat.database

    async def read() -> int:
        async with database.connection() as conn:
            pid = await conn.execute(text("SELECT pg_backend_pid() FROM pg_sleep(0.1)"))
            return int(pid.scalar_one())

    backends = await asyncio.gather(*(read() for _ in range(2 * POOL_SIZE)))
    assert len(set(backends)) == 2 * POOL_SIZE  # the overflow served the burst
    assert database.kept_connections == POOL_SIZE
    # The rest went back to the pool: never more open than its size and overflow allow.
    assert await connections_to(postgres_server, own_db) <= 2 * POOL_SIZE


async def test_a_kept_connection_cut_while_idle_is_replaced_not_failed(
    pool_svc: RunningService,
    own_db: str,
    postgres_server: PostgresServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    database = pool_svc.service.chat.database
    async with database.connection() as conn:
        await conn.execute(text("SELECT 1"))
    assert database.kept_connections >= 1
    monkeypatch.setattr(db, "IDLE_BEFORE_PING_SECONDS", 0.0)  # every kept one counts as idle
    killed = await asyncio.to_thread(
        postgres_server.psql,
        "postgres",
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        f"WHERE datname = '{own_db}' AND pid <> pg_backend_pid()",
    )
    assert int(killed) >= 1
    for _ in range(3):
        async with database.connection() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1


async def test_a_stopped_replica_gives_every_connection_back(
    own_db: str, postgres_server: PostgresServer
) -> None:
    url = postgres_server.dsn(own_db)
    settings = service_settings(url, database_pool_size=POOL_SIZE, delivery_check_seconds="300")
    async with running_service(settings, ConnectionGraph(), "postgres") as running:
        database = running.service.chat.database
        async with database.connection() as conn:
            await conn.execute(text("SELECT 1"))
        assert database.kept_connections >= 1
    for _ in range(50):
        if await connections_to(postgres_server, own_db) == 0:
            break
        await asyncio.sleep(0.1)
    assert await connections_to(postgres_server, own_db) == 0
