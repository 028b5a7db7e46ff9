"""Handshakes arriving together read their users' log positions together."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import socketio

from messaging.delivery import Delivery


async def test_a_burst_of_first_sockets_reads_the_log_positions_in_a_few_queries() -> None:
    reads: list[list[str]] = []

    async def heads(user_ids: Sequence[str]) -> dict[str, int]:
        reads.append(list(user_ids))
        await asyncio.sleep(0.01)  # a round trip: handshakes keep arriving meanwhile
        return {u: int(u.split("-")[1]) * 10 for u in user_ids}

    async def events(user_id: str, after: int) -> list[object]:
        return []

    delivery = Delivery(socketio.AsyncServer(async_mode="asgi"), replica_id="r")
    delivery.use_log(heads=heads, events=events)  # type: ignore[arg-type]
    users = [f"user-{n}" for n in range(200)]
    await asyncio.gather(*(delivery.watch(u) for u in users), delivery.watch("user-7"))
    assert len(reads) <= 2, [len(r) for r in reads]
    assert sorted(u for r in reads for u in r) == sorted(users)  # each user read once
    for n, user in enumerate(users):
        assert delivery._tracks[user].last == n * 10  # each gets its own position


async def test_a_failed_position_read_leaves_the_position_unknown_for_the_healer() -> None:
    async def heads(user_ids: Sequence[str]) -> dict[str, int]:
        raise ConnectionError("database away")

    async def events(user_id: str, after: int) -> list[object]:
        return []

    delivery = Delivery(socketio.AsyncServer(async_mode="asgi"), replica_id="r")
    delivery.use_log(heads=heads, events=events)  # type: ignore[arg-type]
    await asyncio.gather(delivery.watch("a"), delivery.watch("b"))
    assert delivery._tracks["a"].last is None and delivery._tracks["b"].last is None
