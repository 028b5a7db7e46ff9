"""Message status moves sent -> delivered -> read, only forwards, only by the recipient."""

from __future__ import annotations

import uuid

from tests.support.service import Device, RunningService, devices, open_conversation, unique


async def _chat(svc: RunningService, a: Device, bob: str, n: int) -> tuple[str, list[str]]:
    conversation = await open_conversation(svc, a, bob)
    ids = []
    for i in range(n):
        sent = await a.ok("sendMessage", {"conversationId": conversation, "content": f"m{i}"})
        ids.append(sent["id"])
    return conversation, ids


async def test_the_recipient_marks_delivered_and_every_author_device_hears_it(
    svc: RunningService,
) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with devices(svc, alice, alice, bob, bob) as [a1, a2, b1, b2]:
        conversation, ids = await _chat(svc, a1, bob, 2)
        result = await b1.ok("markDelivered", {"messageIds": ids})
        assert result == {"updated": 2}
        for device in (a1, a2, b2):  # the author's devices and the marker's other device
            status = await device.next("messageStatus")
            assert status["conversationId"] == conversation
            assert sorted(status["messageIds"]) == sorted(ids)
            assert status["status"] == "delivered"
            assert status["userId"] == bob
            assert status["at"].endswith("Z")
        await b1.nothing("messageStatus")
        synced = await b1.ok("syncMessages", {})
    assert {m["status"] for m in synced["messages"]} == {"delivered"}


async def test_marking_again_changes_nothing_and_announces_nothing(svc: RunningService) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with devices(svc, alice, bob) as [a, b]:
        _, ids = await _chat(svc, a, bob, 1)
        assert await b.ok("markDelivered", {"messageIds": ids}) == {"updated": 1}
        await a.next("messageStatus")
        assert await b.ok("markDelivered", {"messageIds": ids + ids}) == {"updated": 0}
        await a.nothing("messageStatus")


async def test_read_stays_read_when_a_late_delivered_mark_arrives(svc: RunningService) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with devices(svc, alice, bob) as [a, b]:
        conversation, ids = await _chat(svc, a, bob, 3)
        read = await b.ok("markRead", {"conversationId": conversation, "upToMessageId": ids[-1]})
        assert read == {"updated": 3}
        assert await b.ok("markDelivered", {"messageIds": ids}) == {"updated": 0}
        synced = await b.ok("syncMessages", {})
    assert {m["status"] for m in synced["messages"]} == {"read"}


async def test_mark_read_covers_the_other_participants_messages_up_to_the_given_one(
    svc: RunningService,
) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with devices(svc, alice, bob) as [a, b]:
        conversation, ids = await _chat(svc, a, bob, 4)
        mine = await b.ok("sendMessage", {"conversationId": conversation, "content": "reply"})
        await a.next("newMessage")
        updated = await b.ok("markRead", {"conversationId": conversation, "upToMessageId": ids[1]})
        assert updated == {"updated": 2}
        status = await a.next("messageStatus")
        assert sorted(status["messageIds"]) == sorted(ids[:2])
        assert status["status"] == "read"
        # Up to bob's own later message: alice's remaining two, never bob's own.
        updated = await b.ok(
            "markRead", {"conversationId": conversation, "upToMessageId": mine["id"]}
        )
        assert updated == {"updated": 2}
        history = {m["id"]: m["status"] for m in (await b.ok("syncMessages", {}))["messages"]}
    assert [history[i] for i in ids] == ["read"] * 4
    assert history[mine["id"]] == "sent"


async def test_an_author_cannot_mark_their_own_message(svc: RunningService) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with devices(svc, alice) as [a]:
        _, ids = await _chat(svc, a, bob, 1)
        reply = await a.call("markDelivered", {"messageIds": ids})
    assert reply["error"]["code"] == "FORBIDDEN"
    assert reply["error"]["details"] == ids


async def test_messages_of_other_conversations_or_unknown_ids_are_not_found(
    svc: RunningService,
) -> None:
    alice, bob, eve = unique("alice"), unique("bob"), unique("eve")
    svc.connect_users((alice, bob))
    async with devices(svc, alice, eve) as [a, e]:
        conversation, ids = await _chat(svc, a, bob, 1)
        stolen = await e.call("markDelivered", {"messageIds": ids})
        unknown = str(uuid.uuid4())
        missing = await e.call("markDelivered", {"messageIds": [unknown]})
        foreign = await e.call(
            "markRead", {"conversationId": conversation, "upToMessageId": ids[0]}
        )
    assert stolen["error"]["code"] == "NOT_FOUND"
    assert missing["error"]["details"] == [unknown]
    assert foreign["error"]["code"] == "FORBIDDEN"


async def test_mark_read_with_a_message_from_another_conversation_is_not_found(
    svc: RunningService,
) -> None:
    alice, bob, carol = unique("alice"), unique("bob"), unique("carol")
    svc.connect_users((alice, bob), (alice, carol))
    async with devices(svc, alice, bob) as [a, b]:
        with_bob, _ = await _chat(svc, a, bob, 1)
        _, carol_ids = await _chat(svc, a, carol, 1)
        reply = await b.call(
            "markRead", {"conversationId": with_bob, "upToMessageId": carol_ids[0]}
        )
    assert reply["error"]["code"] == "NOT_FOUND"


async def test_bad_status_payloads_are_validation_errors(svc: RunningService) -> None:
    async with devices(svc, unique()) as [d]:
        for event, payload in (
            ("markDelivered", {"messageIds": []}),
            ("markDelivered", {"messageIds": [str(uuid.uuid4())] * 101}),
            ("markDelivered", {"messageIds": ["nope"]}),
            ("markDelivered", {"messageIds": "not-a-list"}),
            ("markRead", {"conversationId": str(uuid.uuid4())}),
            ("markRead", {"conversationId": "x", "upToMessageId": str(uuid.uuid4())}),
        ):
            reply = await d.call(event, payload)
            assert reply["error"]["code"] == "VALIDATION_FAILED", (event, payload)
