"""One user cannot take more than their share, however many replicas they spread over.

Real replicas (``messaging serve``) on real PostgreSQL and Redis. The budgets are set small so
that a flood is a few dozen requests; the limits' defaults are in docs/security.md.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import socketio

from tests.support.replicas import Cluster, devices_on, logs_on_failure
from tests.support.service import Device, unique


def _outcomes(replies: list[Any]) -> tuple[int, list[dict[str, Any]]]:
    """How many succeeded, and the errors of the others (each must be RATE_LIMITED)."""
    errors = [r["error"] for r in replies if not r["ok"]]
    for error in errors:
        assert error["code"] == "RATE_LIMITED", error
        retry = error["details"]["retryAfterMs"]
        assert isinstance(retry, int) and retry > 0, error
    return len(replies) - len(errors), errors


async def _registry_count(cluster: Cluster, user: str, expected: int) -> None:
    """Registry writes are asynchronous: wait until Redis holds ``expected`` sockets of ``user``."""
    assert cluster.redis is not None
    deadline = time.monotonic() + 10
    while int(cluster.redis.cli("SCARD", f"user-sockets:{user}")) != expected:
        assert time.monotonic() < deadline, "the registry never caught up"
        await asyncio.sleep(0.05)


async def test_one_user_flooding_sends_and_typing_over_two_replicas_gets_one_budget(
    cluster: Cluster,
) -> None:
    a, b = await cluster.start(
        2,
        rate_limit_send_per_second="1",
        rate_limit_send_burst="10",
        rate_limit_typing_per_second="1",
        rate_limit_typing_burst="5",
    )
    flooder, victim, bystander, friend = (unique(n) for n in ("flood", "victim", "by", "friend"))
    with logs_on_failure(cluster):
        async with devices_on(
            cluster, (flooder, a), (flooder, b), (victim, b), (bystander, a), (friend, b)
        ) as [f1, f2, v, by, _]:
            flooded = (await f1.ok("createConversation", {"participantId": victim}))["id"]
            quiet = (await by.ok("createConversation", {"participantId": friend}))["id"]

            started = time.monotonic()
            sends = await asyncio.gather(
                *(
                    device.call("sendMessage", {"conversationId": flooded, "content": f"{i}"})
                    for i in range(25)
                    for device in (f1, f2)
                )
            )
            bystanders = [
                await by.call("sendMessage", {"conversationId": quiet, "content": f"b{i}"})
                for i in range(5)
            ]
            elapsed = time.monotonic() - started
            sent, _ = _outcomes(sends)
            # One budget for both replicas: the burst plus what refilled meanwhile (and a
            # token in flight per replica); a limit per replica would have let 2 x 10 through.
            assert 10 <= sent <= 10 + int(elapsed) + 3, (sent, elapsed)
            assert all(r["ok"] for r in bystanders), bystanders

            v.drain("typing")
            started = time.monotonic()
            typing = await asyncio.gather(
                *(
                    device.call("typing", {"conversationId": flooded, "isTyping": i % 2 == 0})
                    for i in range(20)
                    for device in (f1, f2)
                )
            )
            elapsed = time.monotonic() - started
            typed, _ = _outcomes(typing)
            assert 5 <= typed <= 5 + int(elapsed) + 3, (typed, elapsed)
            await asyncio.sleep(1.0)
            # Only admitted typing events fan out: the victim's device gets no more than those.
            assert len(v.drain("typing")) <= typed


async def test_with_redis_down_the_local_limit_still_holds(cluster: Cluster) -> None:
    [a] = await cluster.start(1, rate_limit_send_per_second="1", rate_limit_send_burst="5")
    flooder, victim, bystander, friend = (unique(n) for n in ("flood", "victim", "by", "friend"))
    assert cluster.redis is not None
    with logs_on_failure(cluster):
        async with devices_on(cluster, (flooder, a), (bystander, a)) as [f, by]:
            flooded = (await f.ok("createConversation", {"participantId": victim}))["id"]
            quiet = (await by.ok("createConversation", {"participantId": friend}))["id"]
            cluster.redis.stop()
            started = time.monotonic()
            sends = [
                await f.call("sendMessage", {"conversationId": flooded, "content": f"{i}"})
                for i in range(20)
            ]
            elapsed = time.monotonic() - started
            sent, errors = _outcomes(sends)
            assert errors, "the flood must be refused with Redis down"
            assert sent <= 5 + int(elapsed) + 1, (sent, elapsed)
            for i in range(3):
                reply = await by.call("sendMessage", {"conversationId": quiet, "content": f"{i}"})
                assert reply["ok"], reply


async def test_a_users_sockets_are_capped_across_replicas_at_the_handshake(
    cluster: Cluster,
) -> None:
    a, b = await cluster.start(2, max_sockets_per_user="3")
    user, other = unique("many"), unique("other")
    with logs_on_failure(cluster):
        async with devices_on(cluster, (user, a), (user, a), (user, b)) as [first, *_]:
            await _registry_count(cluster, user, 3)
            for replica in (a, b):
                extra = Device(replica.url, cluster.token(user))
                with pytest.raises(socketio.exceptions.ConnectionError):
                    await extra.connect()
                assert extra.connect_error["data"]["code"] == "RATE_LIMITED", extra.connect_error
            async with devices_on(cluster, (other, b)):
                pass  # other users are not affected
            await first.disconnect()
            await _registry_count(cluster, user, 2)
            async with devices_on(cluster, (user, b)):
                pass  # a freed slot can be used again, from any replica


async def test_one_users_pipelined_sends_cannot_crowd_out_a_bystander(cluster: Cluster) -> None:
    [a] = await cluster.start(
        1,
        max_sends_in_flight_per_user="4",
        rate_limit_send_per_second="100000",
        rate_limit_send_burst="100000",
    )
    flooder, victim, bystander, friend = (unique(n) for n in ("flood", "victim", "by", "friend"))
    with logs_on_failure(cluster):
        async with devices_on(cluster, (flooder, a), (bystander, a)) as [f, by]:
            flooded = (await f.ok("createConversation", {"participantId": victim}))["id"]
            quiet = (await by.ok("createConversation", {"participantId": friend}))["id"]

            async def bystander_sends() -> list[Any]:
                return [
                    await by.call("sendMessage", {"conversationId": quiet, "content": f"{i}"})
                    for i in range(10)
                ]

            flood, calm = await asyncio.gather(
                asyncio.gather(
                    *(
                        f.call(
                            "sendMessage",
                            {"conversationId": flooded, "content": f"{i}"},
                            timeout=15,
                        )
                        for i in range(200)
                    )
                ),
                bystander_sends(),
            )
            sent, errors = _outcomes(list(flood))
            assert sent >= 4 and errors, (sent, len(errors))
            assert all(r["ok"] for r in calm), calm
