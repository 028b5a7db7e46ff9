"""The first-degree check: cached both ways, errors never cached, one call per pair at a time,
and closed (UNAVAILABLE) whenever the Connections service cannot answer in time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio

from messaging.connections import ConnectionsChecker
from messaging.dev_connections import ConnectionGraph, start_connections_server
from messaging.errors import Unavailable


@pytest_asyncio.fixture
async def served() -> AsyncIterator[tuple[ConnectionGraph, str]]:
    """The stand-in Connections service (alice and bob are connected) and its address."""
    graph = ConnectionGraph()
    graph.connect("alice", "bob")
    server, port = await start_connections_server(graph)
    try:
        yield graph, f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


@pytest.fixture
def graph(served: tuple[ConnectionGraph, str]) -> ConnectionGraph:
    return served[0]


@pytest_asyncio.fixture
async def checker(served: tuple[ConnectionGraph, str]) -> AsyncIterator[ConnectionsChecker]:
    checker = ConnectionsChecker(
        address=served[1], timeout_seconds=1.0, cache_ttl_seconds=60, cache_size=1000
    )
    await checker.start()
    try:
        yield checker
    finally:
        await checker.close()


async def test_answers_are_cached_positive_and_negative(
    checker: ConnectionsChecker, graph: ConnectionGraph
) -> None:
    assert await checker.is_connected("alice", "bob") is True
    assert await checker.is_connected("bob", "alice") is True  # symmetric: the same entry
    assert await checker.is_connected("alice", "mallory") is False
    assert await checker.is_connected("mallory", "alice") is False
    assert graph.calls == 2


async def test_concurrent_checks_of_one_pair_make_one_call(
    checker: ConnectionsChecker, graph: ConnectionGraph
) -> None:
    graph.delay_seconds = 0.1
    answers = await asyncio.gather(*(checker.is_connected("alice", "bob") for _ in range(25)))
    assert answers == [True] * 25
    assert graph.calls == 1


async def test_errors_fail_closed_and_are_not_cached(
    checker: ConnectionsChecker, graph: ConnectionGraph
) -> None:
    graph.fail_with = grpc.StatusCode.INTERNAL
    with pytest.raises(Unavailable):
        await checker.is_connected("alice", "bob")
    graph.fail_with = None
    assert await checker.is_connected("alice", "bob") is True
    assert graph.calls == 2


async def test_a_slow_service_fails_closed_for_every_waiter(
    checker: ConnectionsChecker, graph: ConnectionGraph
) -> None:
    graph.delay_seconds = 3.0  # past the checker's 1 s deadline
    outcomes = await asyncio.gather(
        *(checker.is_connected("alice", "bob") for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(o, Unavailable) for o in outcomes), outcomes
    assert graph.calls == 1


async def test_an_unreachable_service_fails_closed() -> None:
    checker = ConnectionsChecker(
        address="127.0.0.1:1", timeout_seconds=0.3, cache_ttl_seconds=60, cache_size=10
    )
    await checker.start()
    try:
        with pytest.raises(Unavailable):
            await checker.is_connected("alice", "bob")
    finally:
        await checker.close()


async def test_cached_answers_expire_at_spread_out_times(
    served: tuple[ConnectionGraph, str],
) -> None:
    graph, address = served
    checker = ConnectionsChecker(
        address=address, timeout_seconds=1.0, cache_ttl_seconds=0.5, cache_size=1000
    )
    await checker.start()
    try:
        users = [f"user-{i}" for i in range(40)]
        await asyncio.gather(*(checker.is_connected("alice", u) for u in users))
        expiries = sorted(expiry for _, expiry in checker._cache.values())
        assert expiries[-1] - expiries[0] > 0.02, "entries cached together expire together"
        await asyncio.sleep(0.6)
        await checker.is_connected("alice", users[0])
        assert graph.calls == 41  # expired: asked again
    finally:
        await checker.close()
