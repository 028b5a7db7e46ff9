"""Group conversations over Socket.IO: creation, membership, fan-out, leaving and joining."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence

import grpc
import pytest
from sqlalchemy import func, select

from messaging.dev_connections import ConnectionGraph
from messaging.tables import conversations
from tests.support.service import (
    Device,
    RunningService,
    devices,
    running_service,
    service_settings,
    unique,
)


def _connect_all(svc: RunningService, creator: str, others: Sequence[str]) -> None:
    svc.connect_users(*((creator, o) for o in others))


async def _group(
    svc: RunningService, device: Device, others: Sequence[str], **extra: str
) -> dict[str, object]:
    data: dict[str, object] = await device.ok(
        "createConversation", {"participantIds": list(others), "title": "Team", **extra}
    )
    return data


async def _send(device: Device, conversation_id: object, content: str = "hi") -> dict[str, object]:
    message: dict[str, object] = await device.ok(
        "sendMessage", {"conversationId": conversation_id, "content": content}
    )
    return message


async def test_a_group_is_created_with_its_kind_title_creator_and_sorted_members(
    svc: RunningService,
) -> None:
    alice, bob, carol = unique("alice"), unique("bob"), unique("carol")
    _connect_all(svc, alice, [bob, carol])
    async with devices(svc, alice) as [a]:
        group = await _group(svc, a, [carol, bob])
    assert group["kind"] == "group"
    assert group["title"] == "Team"
    assert group["createdBy"] == alice
    assert group["participantIds"] == sorted([alice, bob, carol])
    assert str(group["createdAt"]).endswith("Z")


async def test_a_direct_conversation_has_kind_direct_no_title_and_no_creator(
    svc: RunningService,
) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with devices(svc, alice) as [a]:
        direct = await a.ok("createConversation", {"participantId": bob})
    assert (direct["kind"], direct["title"], direct["createdBy"]) == ("direct", None, None)


async def test_a_repeated_client_conversation_id_of_the_creator_returns_the_same_group(
    svc: RunningService,
) -> None:
    alice, bob, carol = unique("alice"), unique("bob"), unique("carol")
    _connect_all(svc, alice, [bob, carol])
    svc.connect_users((bob, carol))
    async with devices(svc, alice, bob) as [a, b]:
        first = await _group(svc, a, [bob, carol], clientConversationId="k1")
        again = await _group(svc, a, [bob, carol], clientConversationId="k1")
        other_key = await _group(svc, a, [bob, carol], clientConversationId="k2")
        # The key is the creator's own: another creator's same key makes its own group.
        bobs = await _group(svc, b, [carol], clientConversationId="k1")
    assert first == again
    assert len({first["id"], other_key["id"], bobs["id"]}) == 3


async def test_without_a_client_conversation_id_each_create_makes_a_new_group(
    svc: RunningService,
) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with devices(svc, alice) as [a]:
        first = await _group(svc, a, [bob])
        second = await _group(svc, a, [bob])
    assert first["id"] != second["id"]


async def test_the_creator_must_be_connected_to_every_member(
    svc: RunningService,
) -> None:
    alice, bob, stranger = unique("alice"), unique("bob"), unique("stranger")
    svc.connect_users((alice, bob))
    async with devices(svc, alice, bob) as [a, b]:
        reply = await a.call(
            "createConversation", {"participantIds": [bob, stranger], "title": "Team"}
        )
        await b.nothing("conversationUpdated")
    assert reply["ok"] is False
    assert reply["error"]["code"] == "FORBIDDEN"
    assert reply["error"]["details"] == [stranger]


async def test_connection_checks_for_new_members_run_in_one_concurrent_round(
    svc: RunningService,
) -> None:
    alice = unique("alice")
    others = [unique("member") for _ in range(6)]
    _connect_all(svc, alice, others)
    svc.graph.most_in_flight = 0
    # Well below the deadline, and long enough for the calls to overlap if they are concurrent.
    svc.graph.delay_seconds = 0.15
    try:
        async with devices(svc, alice) as [a]:
            await _group(svc, a, others)
    finally:
        svc.graph.delay_seconds = 0.0
    assert svc.graph.most_in_flight == len(others)


async def test_connections_service_down_fails_group_creation_closed(svc: RunningService) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    svc.graph.fail_with = grpc.StatusCode.UNAVAILABLE
    try:
        async with devices(svc, alice) as [a]:
            reply = await a.call("createConversation", {"participantIds": [bob], "title": "T"})
    finally:
        svc.graph.fail_with = None
    assert reply["error"]["code"] == "UNAVAILABLE"


@pytest.mark.parametrize(
    "payload",
    [
        {"participantIds": [], "title": "T"},
        {"participantIds": ["x"], "title": ""},
        {"participantIds": ["x"], "title": "   "},
        {"participantIds": ["x"], "title": "t" * 101},
        {"participantIds": ["x"]},
        {"participantIds": ["x"], "title": "T", "clientConversationId": ""},
        {"participantIds": ["x"], "title": "T", "participantId": "y"},
        {"participantIds": "x", "title": "T"},
    ],
)
async def test_a_malformed_group_is_a_validation_error(
    svc: RunningService, payload: dict[str, object]
) -> None:
    async with devices(svc, unique("alice")) as [a]:
        reply = await a.call("createConversation", payload)
    assert reply["error"]["code"] == "VALIDATION_FAILED"


async def test_listing_yourself_among_a_groups_members_is_a_validation_error(
    svc: RunningService,
) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with devices(svc, alice) as [a]:
        reply = await a.call("createConversation", {"participantIds": [bob, alice], "title": "T"})
    assert reply["error"]["code"] == "VALIDATION_FAILED"


async def test_a_group_has_at_most_fifty_members_by_default(svc: RunningService) -> None:
    alice = unique("alice")
    others = [unique("m") for _ in range(50)]
    async with devices(svc, alice) as [a]:
        reply = await a.call("createConversation", {"participantIds": others, "title": "T"})
        svc.graph.all_connected = True
        try:
            full = await _group(svc, a, others[:49])
            more = await a.call(
                "addParticipants", {"conversationId": full["id"], "userIds": [others[49]]}
            )
        finally:
            svc.graph.all_connected = False
    assert reply["error"]["code"] == "VALIDATION_FAILED"
    assert len(full["participantIds"]) == 50  # type: ignore[arg-type]
    assert more["error"]["code"] == "VALIDATION_FAILED"


@pytest.fixture
async def small_groups(database_url: str, backend: str) -> AsyncIterator[RunningService]:
    graph = ConnectionGraph(all_connected=True)
    settings = service_settings(database_url, group_max_members=3)
    async with running_service(settings, graph, backend) as running:
        yield running


async def test_the_member_limit_is_a_setting(small_groups: RunningService) -> None:
    svc = small_groups
    alice, bob, carol, dave = (unique(n) for n in ("alice", "bob", "carol", "dave"))
    async with devices(svc, alice) as [a]:
        too_many = await a.call(
            "createConversation", {"participantIds": [bob, carol, dave], "title": "T"}
        )
        group = await _group(svc, a, [bob, carol])
        add = await a.call("addParticipants", {"conversationId": group["id"], "userIds": [dave]})
    assert too_many["error"]["code"] == "VALIDATION_FAILED"
    assert add["error"]["code"] == "VALIDATION_FAILED"


async def test_every_member_gets_a_groups_message_on_every_device_without_a_connection_check(
    svc: RunningService,
) -> None:
    alice, bob, carol = unique("alice"), unique("bob"), unique("carol")
    _connect_all(svc, alice, [bob, carol])
    async with devices(svc, alice, alice, bob, bob, carol) as [a1, a2, b1, b2, c]:
        group = await _group(svc, a1, [bob, carol])
        # Bob and Carol are not connected to each other: membership is the rule for sending.
        calls = svc.graph.calls
        sent = await _send(b1, group["id"], "from bob")
        assert svc.graph.calls == calls
        for device in (a1, a2, b2, c):
            assert (await device.next("newMessage"))["id"] == sent["id"]
        await b1.nothing("newMessage")


async def test_every_member_is_told_of_the_group_and_its_changes(svc: RunningService) -> None:
    alice, bob, carol = unique("alice"), unique("bob"), unique("carol")
    _connect_all(svc, alice, [bob, carol])
    async with devices(svc, alice, alice, bob, carol) as [a1, a2, b, c]:
        group = await _group(svc, a1, [bob])
        created = [await d.next("conversationUpdated") for d in (a2, b)]
        await a1.nothing("conversationUpdated")  # the caller has the ack
        await a1.ok("addParticipants", {"conversationId": group["id"], "userIds": [carol]})
        joined = [await d.next("conversationUpdated") for d in (a2, b, c)]
        await b.ok("leaveConversation", {"conversationId": group["id"]})
        left = [await d.next("conversationUpdated") for d in (a1, a2, c)]
    assert all(e["change"] == {"type": "created", "userIds": [bob], "by": alice} for e in created)
    assert all(e["change"] == {"type": "joined", "userIds": [carol], "by": alice} for e in joined)
    assert all(e["change"] == {"type": "left", "userIds": [bob], "by": bob} for e in left)
    assert left[0]["conversation"]["participantIds"] == sorted([alice, carol])


async def test_the_devices_of_a_member_who_left_are_told(svc: RunningService) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with devices(svc, alice, bob, bob) as [a, b1, b2]:
        group = await _group(svc, a, [bob])
        await b2.next("conversationUpdated")
        await b1.ok("leaveConversation", {"conversationId": group["id"]})
        event = await b2.next("conversationUpdated")
    assert event["change"]["type"] == "left"
    assert bob not in event["conversation"]["participantIds"]


async def test_a_member_who_left_receives_nothing_more_and_can_read_nothing(
    svc: RunningService,
) -> None:
    alice, bob, carol = unique("alice"), unique("bob"), unique("carol")
    _connect_all(svc, alice, [bob, carol])
    async with devices(svc, alice, bob) as [a, b]:
        group = await _group(svc, a, [bob, carol])
        before = await _send(a, group["id"], "before")
        await b.next("newMessage")
        await b.ok("leaveConversation", {"conversationId": group["id"]})
        await _send(a, group["id"], "after")
        await b.nothing("newMessage")
        cid = group["id"]
        replies = {
            "send": await b.call("sendMessage", {"conversationId": cid, "content": "x"}),
            "read": await b.call(
                "markRead", {"conversationId": cid, "upToMessageId": before["id"]}
            ),
            "delivered": await b.call("markDelivered", {"messageIds": [before["id"]]}),
            "typing": await b.call("typing", {"conversationId": cid, "isTyping": True}),
            "leave": await b.call("leaveConversation", {"conversationId": cid}),
            "add": await b.call("addParticipants", {"conversationId": cid, "userIds": [alice]}),
        }
    assert {k: r["error"]["code"] for k, r in replies.items()} == dict.fromkeys(
        replies, "NOT_FOUND"
    )


async def test_a_member_who_joined_sees_messages_from_the_moment_of_joining(
    svc: RunningService,
) -> None:
    alice, bob, carol = unique("alice"), unique("bob"), unique("carol")
    _connect_all(svc, alice, [bob, carol])
    async with devices(svc, alice, carol) as [a, c]:
        group = await _group(svc, a, [bob])
        old = await _send(a, group["id"], "before carol")
        await a.ok("addParticipants", {"conversationId": group["id"], "userIds": [carol]})
        new = await _send(a, group["id"], "after carol")
        assert (await c.next("newMessage"))["id"] == new["id"]
        synced = await c.ok("syncMessages", {})
        hidden = await c.call("markDelivered", {"messageIds": [old["id"]]})
        hidden_read = await c.call(
            "markRead", {"conversationId": group["id"], "upToMessageId": old["id"]}
        )
    assert [m["id"] for m in synced["messages"] if m["conversationId"] == group["id"]] == [
        new["id"]
    ]
    assert hidden["error"]["code"] == "NOT_FOUND"
    assert hidden_read["error"]["code"] == "NOT_FOUND"


async def test_any_member_may_add_its_own_connections_only(svc: RunningService) -> None:
    alice, bob, carol, dave = (unique(n) for n in ("alice", "bob", "carol", "dave"))
    _connect_all(svc, alice, [bob, carol])
    svc.connect_users((bob, dave))
    async with devices(svc, alice, bob) as [a, b]:
        group = await _group(svc, a, [bob])
        # Carol is Alice's connection, not Bob's: Bob may not bring her in.
        refused = await b.call(
            "addParticipants", {"conversationId": group["id"], "userIds": [carol]}
        )
        added = await b.ok("addParticipants", {"conversationId": group["id"], "userIds": [dave]})
        again = await b.ok("addParticipants", {"conversationId": group["id"], "userIds": [dave]})
    assert refused["error"]["code"] == "FORBIDDEN"
    assert refused["error"]["details"] == [carol]
    assert added["participantIds"] == sorted([alice, bob, dave])
    assert again == added  # adding a member again changes nothing


async def test_direct_conversations_take_no_members_and_cannot_be_left(
    svc: RunningService,
) -> None:
    alice, bob, carol = unique("alice"), unique("bob"), unique("carol")
    svc.connect_users((alice, bob), (alice, carol))
    async with devices(svc, alice) as [a]:
        direct = await a.ok("createConversation", {"participantId": bob})
        add = await a.call("addParticipants", {"conversationId": direct["id"], "userIds": [carol]})
        leave = await a.call("leaveConversation", {"conversationId": direct["id"]})
    assert add["error"]["code"] == "VALIDATION_FAILED"
    assert leave["error"]["code"] == "VALIDATION_FAILED"


async def test_a_group_nobody_knows_is_not_found(svc: RunningService) -> None:
    missing = str(uuid.uuid4())
    async with devices(svc, unique("alice")) as [a]:
        add = await a.call("addParticipants", {"conversationId": missing, "userIds": ["x"]})
        leave = await a.call("leaveConversation", {"conversationId": missing})
        bad = await a.call("leaveConversation", {"conversationId": "nope"})
    assert add["error"]["code"] == leave["error"]["code"] == "NOT_FOUND"
    assert bad["error"]["code"] == "VALIDATION_FAILED"


async def test_a_non_member_cannot_send_or_add_to_a_group(svc: RunningService) -> None:
    alice, bob, eve = unique("alice"), unique("bob"), unique("eve")
    svc.connect_users((alice, bob), (eve, alice))
    async with devices(svc, alice, eve) as [a, e]:
        group = await _group(svc, a, [bob])
        send = await e.call("sendMessage", {"conversationId": group["id"], "content": "x"})
        add = await e.call("addParticipants", {"conversationId": group["id"], "userIds": [alice]})
    assert send["error"]["code"] == add["error"]["code"] == "NOT_FOUND"


async def test_typing_in_a_group_reaches_every_other_member(svc: RunningService) -> None:
    alice, bob, carol = unique("alice"), unique("bob"), unique("carol")
    _connect_all(svc, alice, [bob, carol])
    async with devices(svc, alice, bob, carol) as [a, b, c]:
        group = await _group(svc, a, [bob, carol])
        await b.ok("typing", {"conversationId": group["id"], "isTyping": True})
        events = [await d.next("typing") for d in (a, c)]
        await b.nothing("typing")
    assert all(
        e == {"conversationId": group["id"], "userId": bob, "isTyping": True} for e in events
    )


async def test_a_refused_group_stores_nothing(svc: RunningService) -> None:
    alice, bob, stranger = unique("alice"), unique("bob"), unique("stranger")
    svc.connect_users((alice, bob))
    async with devices(svc, alice) as [a]:
        await a.call("createConversation", {"participantIds": [bob, stranger], "title": "T"})
    async with svc.service.chat.engine.connect() as conn:
        count = (
            await conn.execute(select(func.count()).where(conversations.c.created_by == alice))
        ).scalar()
    assert count == 0


async def test_a_member_who_left_syncs_nothing_of_the_group(svc: RunningService) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with devices(svc, alice, bob) as [a, b]:
        direct = await a.ok("createConversation", {"participantId": bob})
        group = await _group(svc, a, [bob])
        await _send(a, group["id"], "in the group")
        kept = await _send(a, direct["id"], "direct")
        token = (await b.ok("syncMessages", {}))["syncToken"]
        await b.ok("leaveConversation", {"conversationId": group["id"]})
        everything = await b.ok("syncMessages", {})
        since = await b.ok("syncMessages", {"since": token})
    assert [m["id"] for m in everything["messages"]] == [kept["id"]]
    assert since["messages"] == []


async def test_racing_creates_with_one_client_conversation_id_make_one_group(
    svc: RunningService,
) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    payload = {"participantIds": [bob], "title": "T", "clientConversationId": "race"}
    async with devices(svc, alice, alice, alice) as group:
        replies = await asyncio.gather(
            *(d.call("createConversation", payload) for d in group for _ in range(3))
        )
    assert all(r["ok"] for r in replies), replies
    assert len({r["data"]["id"] for r in replies}) == 1
