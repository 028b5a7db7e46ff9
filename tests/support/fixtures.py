"""The session's PostgreSQL, Redis and object store: thin pytest wrappers over servers.py.

Each starts once per test session (once per xdist worker: private ports and directories, so
workers never share one) and is stopped at the end, also when the run fails or is interrupted.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.servers import (
    PostgresServer,
    RedisControl,
    S3Server,
    running_postgres,
    running_redis,
    running_s3,
)

# The tests measure behaviour, not this machine's disk: no flushes; many replicas and pools.
TEST_POSTGRES_SETTINGS = {"fsync": "off", "full_page_writes": "off", "max_connections": "300"}


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    with running_postgres(settings=TEST_POSTGRES_SETTINGS) as server:
        yield server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisControl]:
    with running_redis() as server:
        yield server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    with running_s3() as server:
        yield server
