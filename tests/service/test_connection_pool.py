"""A replica opens its database pool before it reports ready.

A pool that grows on demand makes the first burst of concurrent requests after a start wait for
new connections (connect, authenticate, the driver's type setup): with 8 concurrent gRPC
history clients that was the worst p99 of the whole history benchmark (BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import uuid

from messaging import db
from messaging.dev_connections import ConnectionGraph
from messaging.settings import Settings
from tests.support.servers import PostgresServer
from tests.support.service import JWT_SECRET, running_service, service_settings


async def test_a_started_replica_has_its_whole_pool_open_before_any_request(
    postgres_server: PostgresServer,
) -> None:
    name = f"pool_{uuid.uuid4().hex[:8]}"
    url = postgres_server.create_database(name)
    await asyncio.to_thread(db.migrate, Settings(database_url=url, jwt_secret=JWT_SECRET))
    settings = service_settings(url, database_pool_size=4, delivery_check_seconds="300")
    async with running_service(settings, ConnectionGraph(), "postgres"):
        opened = await asyncio.to_thread(
            postgres_server.psql,
            "postgres",
            f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{name}'",
        )
    assert int(opened) >= 4
