"""Typing indicators are live and never stored; presence is shared only between peers."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from tests.support.service import RunningService, devices, open_conversation, unique


async def test_typing_reaches_the_other_participant_and_my_other_devices(
    svc: RunningService,
) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with devices(svc, alice, alice, bob) as [a1, a2, b]:
        conversation = await open_conversation(svc, a1, bob)
        assert await a1.ok("typing", {"conversationId": conversation, "isTyping": True}) == {}
        expected = {"conversationId": conversation, "userId": alice, "isTyping": True}
        assert await b.next("typing") == expected
        assert await a2.next("typing") == expected
        await a1.nothing("typing")
        await a1.ok("typing", {"conversationId": conversation, "isTyping": False})
        assert (await b.next("typing"))["isTyping"] is False
        synced = await b.ok("syncMessages", {})
    assert synced["messages"] == []  # typing is not persisted


async def test_typing_in_someone_elses_conversation_is_forbidden(svc: RunningService) -> None:
    alice, bob, eve = unique("alice"), unique("bob"), unique("eve")
    svc.connect_users((alice, bob))
    async with devices(svc, alice, eve, bob) as [a, e, b]:
        conversation = await open_conversation(svc, a, bob)
        reply = await e.call("typing", {"conversationId": conversation, "isTyping": True})
        missing = await e.call("typing", {"conversationId": str(uuid.uuid4()), "isTyping": True})
        not_bool = await a.call("typing", {"conversationId": conversation, "isTyping": "yes"})
        await b.nothing("typing")
    assert reply["error"]["code"] == "FORBIDDEN"
    assert missing["error"]["code"] == "NOT_FOUND"
    assert not_bool["error"]["code"] == "VALIDATION_FAILED"


async def test_presence_shows_online_peers_and_when_offline_ones_were_last_seen(
    svc: RunningService,
) -> None:
    alice, bob, carol = unique("alice"), unique("bob"), unique("carol")
    svc.connect_users((alice, bob), (alice, carol))
    async with devices(svc, alice, bob, carol) as [a, b, c]:
        await open_conversation(svc, a, bob)
        await open_conversation(svc, a, carol)
        before = datetime.now(UTC)
        await c.disconnect()
        presence = (await a.ok("getPresence", {"userIds": [bob, carol]}))["presence"]
        assert b.client.connected
    assert presence[bob] == {"online": True, "lastSeenAt": None}
    assert presence[carol]["online"] is False
    seen = datetime.fromisoformat(presence[carol]["lastSeenAt"].replace("Z", "+00:00"))
    assert seen >= before.replace(microsecond=before.microsecond // 1000 * 1000)


async def test_a_user_with_two_devices_stays_online_until_the_last_one_leaves(
    svc: RunningService,
) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with devices(svc, alice, bob, bob) as [a, b1, b2]:
        await open_conversation(svc, a, bob)
        await b1.disconnect()
        assert (await a.ok("getPresence", {"userIds": [bob]}))["presence"][bob]["online"]
        await b2.disconnect()
        assert not (await a.ok("getPresence", {"userIds": [bob]}))["presence"][bob]["online"]


async def test_presence_of_users_without_a_shared_conversation_is_not_disclosed(
    svc: RunningService,
) -> None:
    alice, stranger = unique("alice"), unique("stranger")
    async with devices(svc, alice, stranger) as [a, _]:
        presence = await a.ok("getPresence", {"userIds": [stranger, unique("nobody")]})
    assert presence == {"presence": {}}


async def test_bad_presence_payloads_are_validation_errors(svc: RunningService) -> None:
    async with devices(svc, unique()) as [d]:
        payloads: list[dict[str, Any]] = [
            {"userIds": []},
            {"userIds": ["u"] * 101},
            {"userIds": [""]},
            {},
        ]
        for payload in payloads:
            assert (await d.call("getPresence", payload))["error"]["code"] == "VALIDATION_FAILED"
