"""createConversation: only between first-degree connections, one conversation per pair."""

from __future__ import annotations

import asyncio

import grpc

from tests.support.service import RunningService, devices, unique


async def test_connected_users_get_a_conversation_with_both_participants(
    svc: RunningService,
) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with devices(svc, alice) as [device]:
        conversation = await device.ok("createConversation", {"participantId": bob})
    assert set(conversation["participantIds"]) == {alice, bob}
    assert conversation["createdAt"].endswith("Z")
    assert len(conversation["id"]) == 36


async def test_the_same_pair_always_gets_the_same_conversation_from_either_side(
    svc: RunningService,
) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with devices(svc, alice, bob) as [a, b]:
        first = await a.ok("createConversation", {"participantId": bob})
        again = await a.ok("createConversation", {"participantId": bob})
        reverse = await b.ok("createConversation", {"participantId": alice})
    assert first == again == reverse


async def test_racing_creates_for_one_pair_make_exactly_one_conversation(
    svc: RunningService,
) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with devices(svc, alice, alice, bob, bob) as group:
        replies = await asyncio.gather(
            *(
                d.call("createConversation", {"participantId": bob if i < 2 else alice})
                for i, d in enumerate(group)
                for _ in range(5)
            )
        )
    assert all(r["ok"] for r in replies), replies
    assert len({r["data"]["id"] for r in replies}) == 1


async def test_users_who_are_not_connected_are_forbidden(svc: RunningService) -> None:
    alice, stranger = unique("alice"), unique("stranger")
    async with devices(svc, alice) as [device]:
        reply = await device.call("createConversation", {"participantId": stranger})
    assert reply["ok"] is False
    assert reply["error"]["code"] == "FORBIDDEN"


async def test_a_conversation_with_yourself_is_a_validation_error(svc: RunningService) -> None:
    alice = unique("alice")
    async with devices(svc, alice) as [device]:
        reply = await device.call("createConversation", {"participantId": alice})
    assert reply["error"]["code"] == "VALIDATION_FAILED"


async def test_connections_service_down_fails_closed_with_unavailable(svc: RunningService) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    svc.graph.fail_with = grpc.StatusCode.UNAVAILABLE
    try:
        async with devices(svc, alice) as [device]:
            reply = await device.call("createConversation", {"participantId": bob})
    finally:
        svc.graph.fail_with = None
    assert reply["ok"] is False
    assert reply["error"]["code"] == "UNAVAILABLE"


async def test_connections_service_too_slow_fails_closed_with_unavailable(
    svc: RunningService,
) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    svc.graph.delay_seconds = svc.settings.connections_timeout_seconds + 1.0
    try:
        async with devices(svc, alice) as [device]:
            reply = await device.call("createConversation", {"participantId": bob})
    finally:
        svc.graph.delay_seconds = 0
    assert reply["error"]["code"] == "UNAVAILABLE"


async def test_after_the_connections_service_recovers_the_next_call_succeeds(
    svc: RunningService,
) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with devices(svc, alice) as [device]:
        svc.graph.fail_with = grpc.StatusCode.INTERNAL
        try:
            failed = await device.call("createConversation", {"participantId": bob})
        finally:
            svc.graph.fail_with = None
        recovered = await device.call("createConversation", {"participantId": bob})
    assert failed["error"]["code"] == "UNAVAILABLE"
    assert recovered["ok"] is True


async def test_bad_create_payloads_are_validation_errors(svc: RunningService) -> None:
    async with devices(svc, unique()) as [device]:
        for payload in (
            {},
            {"participantId": ""},
            {"participantId": "x" * 129},
            {"participantId": 7},
            {"participantId": "bob", "extra": True},
            ["bob"],
            "bob",
        ):
            reply = await device.call("createConversation", payload)
            assert reply["error"]["code"] == "VALIDATION_FAILED", payload
