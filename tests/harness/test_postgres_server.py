"""The test PostgreSQL survives the tests that take it down, so one failure stays one failure.

A CI run had one worker's session server stay down after a test that restarted it, and every
later test on that worker failed or errored (134 of them). Each test here starts a private
server (not the session's) and does to it what such a test does.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.servers import PostgresServer, running_postgres


@pytest.fixture
def server() -> Iterator[PostgresServer]:
    with running_postgres(settings={"fsync": "off"}) as started:
        yield started


async def test_a_block_that_fails_while_postgresql_is_stopped_still_starts_it_again(
    server: PostgresServer,
) -> None:
    with pytest.raises(RuntimeError, match="the test failed"):
        async with server.stopped():
            assert server.psql("postgres", "SELECT 1", check=False) == ""
            raise RuntimeError("the test failed while the server was down")
    assert server.psql("postgres", "SELECT 1") == "1"


def test_a_database_asked_of_a_server_that_died_is_created_after_starting_it_again(
    server: PostgresServer,
) -> None:
    server.kill()
    dsn = server.create_database("after_the_crash")
    assert dsn.endswith("/after_the_crash")
    assert server.psql("after_the_crash", "SELECT current_database()") == "after_the_crash"
