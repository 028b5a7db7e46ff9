"""Per-member delivery and read state in groups, receipts, and unread counts per member."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from sqlalchemy import func, select

from messaging.proto.messaging.v1 import messaging_pb2 as pb
from messaging.proto.messaging.v1 import messaging_pb2_grpc as pb_grpc
from messaging.publishing import Publisher
from messaging.tables import read_marks, user_changes
from tests.support.service import Device, RunningService, devices, unique


async def _group(svc: RunningService, creator: Device, user: str, others: Sequence[str]) -> str:
    svc.connect_users(*((user, o) for o in others))
    data = await creator.ok(
        "createConversation", {"participantIds": list(others), "title": "Receipts"}
    )
    return str(data["id"])


async def _status(device: Device, conversation_id: str, message_id: str) -> str:
    synced = await device.ok("syncMessages", {})
    [found] = [m for m in synced["messages"] if m["id"] == message_id]
    del conversation_id
    return str(found["status"])


async def test_mark_delivered_records_the_callers_own_state_and_names_it_to_the_author(
    svc: RunningService,
) -> None:
    alice, bob, carol = unique("alice"), unique("bob"), unique("carol")
    async with devices(svc, alice, bob, carol) as [a, b, c]:
        group = await _group(svc, a, alice, [bob, carol])
        sent = await a.ok("sendMessage", {"conversationId": group, "content": "hi"})
        done = await b.ok("markDelivered", {"messageIds": [sent["id"]]})
        event = await a.next("messageStatus")
        again = await b.ok("markDelivered", {"messageIds": [sent["id"]]})
        status_after_bob = await _status(a, group, sent["id"])
        await c.ok("markDelivered", {"messageIds": [sent["id"]]})
        status_after_all = await _status(a, group, sent["id"])
    assert done == {"updated": 1}
    assert again == {"updated": 0}
    assert event["userId"] == bob
    assert (event["status"], event["messageIds"]) == ("delivered", [sent["id"]])
    # The lowest over the other members: sent until every one of them has it.
    assert (status_after_bob, status_after_all) == ("sent", "delivered")


async def test_a_groups_message_is_read_when_every_other_member_has_read_it(
    svc: RunningService,
) -> None:
    alice, bob, carol = unique("alice"), unique("bob"), unique("carol")
    async with devices(svc, alice, bob, carol) as [a, b, c]:
        group = await _group(svc, a, alice, [bob, carol])
        first = await a.ok("sendMessage", {"conversationId": group, "content": "one"})
        second = await a.ok("sendMessage", {"conversationId": group, "content": "two"})
        read = await b.ok("markRead", {"conversationId": group, "upToMessageId": second["id"]})
        event = await a.next("messageStatus")
        after_bob = await _status(a, group, first["id"])
        await c.ok("markDelivered", {"messageIds": [first["id"], second["id"]]})
        after_carol_got_them = await _status(a, group, first["id"])
        await c.ok("markRead", {"conversationId": group, "upToMessageId": first["id"]})
        after_carol_first = [await _status(a, group, m["id"]) for m in (first, second)]
        repeat = await b.ok("markRead", {"conversationId": group, "upToMessageId": first["id"]})
    assert read == {"updated": 2}
    assert (event["userId"], event["status"]) == (bob, "read")
    assert event["messageIds"] == [second["id"]]  # read up to and including the newest named
    assert after_bob == "sent"  # Carol has neither received nor read it
    assert after_carol_got_them == "delivered"  # Bob's read counts as received
    assert after_carol_first == ["read", "delivered"]
    assert repeat == {"updated": 0}  # read stays read: the position never moves back


async def test_only_a_recipient_may_mark_a_groups_message(svc: RunningService) -> None:
    alice, bob = unique("alice"), unique("bob")
    async with devices(svc, alice) as [a]:
        group = await _group(svc, a, alice, [bob])
        sent = await a.ok("sendMessage", {"conversationId": group, "content": "mine"})
        reply = await a.call("markDelivered", {"messageIds": [sent["id"]]})
    assert reply["error"]["code"] == "FORBIDDEN"


async def test_mark_read_writes_one_read_mark_and_log_rows_that_do_not_grow_with_the_group(
    svc: RunningService,
) -> None:
    alice = unique("alice")
    others = [unique("member") for _ in range(12)]
    async with devices(svc, alice, others[0]) as [a, reader]:
        group = await _group(svc, a, alice, others)
        sent = [
            await a.ok("sendMessage", {"conversationId": group, "content": f"m{i}"})
            for i in range(5)
        ]
        reply = await reader.ok(
            "markRead", {"conversationId": group, "upToMessageId": sent[-1]["id"]}
        )
    async with svc.service.chat.engine.connect() as conn:
        marks = (
            await conn.execute(select(func.count()).where(read_marks.c.user_id == others[0]))
        ).scalar()
        logged = (
            await conn.execute(
                select(func.count()).where(
                    user_changes.c.actor_id == others[0], user_changes.c.kind == "read"
                )
            )
        ).scalar()
    assert reply == {"updated": 5}
    assert marks == 1
    assert logged == 2  # the author's log and the reader's, not a row per member per message


async def test_get_receipts_names_every_other_member_with_its_times(svc: RunningService) -> None:
    alice, bob, carol, dave = (unique(n) for n in ("alice", "bob", "carol", "dave"))
    async with devices(svc, alice, bob, carol) as [a, b, c]:
        group = await _group(svc, a, alice, [bob, carol])
        sent = await a.ok("sendMessage", {"conversationId": group, "content": "hi"})
        await b.ok("markDelivered", {"messageIds": [sent["id"]]})
        await c.ok("markRead", {"conversationId": group, "upToMessageId": sent["id"]})
        svc.connect_users((alice, dave))
        await a.ok("addParticipants", {"conversationId": group, "userIds": [dave]})
        receipts = (await a.ok("getReceipts", {"messageId": sent["id"]}))["receipts"]
        not_author = await b.call("getReceipts", {"messageId": sent["id"]})
    by_user = {r["userId"]: r for r in receipts}
    # Dave joined after the message: it was never his to receive.
    assert sorted(by_user) == sorted([bob, carol])
    assert by_user[bob]["deliveredAt"] is not None and by_user[bob]["readAt"] is None
    assert by_user[carol]["readAt"] is not None
    assert by_user[carol]["deliveredAt"] == by_user[carol]["readAt"]
    assert not_author["error"]["code"] == "FORBIDDEN"


async def test_get_receipts_of_a_direct_message_names_the_other_participant(
    svc: RunningService,
) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with devices(svc, alice, bob) as [a, b]:
        direct = await a.ok("createConversation", {"participantId": bob})
        sent = await a.ok("sendMessage", {"conversationId": direct["id"], "content": "hi"})
        before = (await a.ok("getReceipts", {"messageId": sent["id"]}))["receipts"]
        await b.ok("markDelivered", {"messageIds": [sent["id"]]})
        after = (await a.ok("getReceipts", {"messageId": sent["id"]}))["receipts"]
    assert before == [{"userId": bob, "deliveredAt": None, "readAt": None}]
    assert after[0]["deliveredAt"] is not None and after[0]["readAt"] is None


async def test_get_receipts_of_a_message_you_cannot_see_is_not_found(svc: RunningService) -> None:
    alice, bob, eve = unique("alice"), unique("bob"), unique("eve")
    async with devices(svc, alice, eve) as [a, e]:
        group = await _group(svc, a, alice, [bob])
        sent = await a.ok("sendMessage", {"conversationId": group, "content": "hi"})
        stranger = await e.call("getReceipts", {"messageId": sent["id"]})
        await a.ok("leaveConversation", {"conversationId": group})
        left = await a.call("getReceipts", {"messageId": sent["id"]})
        bad = await a.call("getReceipts", {"messageId": "nope"})
    assert stranger["error"]["code"] == left["error"]["code"] == "NOT_FOUND"
    assert bad["error"]["code"] == "VALIDATION_FAILED"


async def test_sync_since_carries_a_members_receipt_to_the_author(svc: RunningService) -> None:
    alice, bob = unique("alice"), unique("bob")
    async with devices(svc, alice, bob) as [a, b]:
        group = await _group(svc, a, alice, [bob])
        sent = await a.ok("sendMessage", {"conversationId": group, "content": "hi"})
        token = (await a.ok("syncMessages", {}))["syncToken"]
        await b.ok("markRead", {"conversationId": group, "upToMessageId": sent["id"]})
        changed = await a.ok("syncMessages", {"since": token})
    assert [(m["id"], m["status"]) for m in changed["messages"]] == [(sent["id"], "read")]


async def test_the_author_heals_a_missed_receipt_from_its_change_log(svc: RunningService) -> None:
    """The healer turns log entries into the same events as live: a member's read, named."""
    alice, bob = unique("alice"), unique("bob")
    async with devices(svc, alice, bob) as [a, b]:
        group = await _group(svc, a, alice, [bob])
        sent = await a.ok("sendMessage", {"conversationId": group, "content": "hi"})
        await b.ok("markRead", {"conversationId": group, "upToMessageId": sent["id"]})
        await a.next("messageStatus")
    publisher = Publisher(delivery=svc.service.delivery, cursor_key=svc.service.settings.cursor_key)
    events = publisher.encode(await svc.service.chat.messages.log_events(alice, 0))
    statuses = [e.data for e in events if e.event == "messageStatus" and e.data is not None]
    assert [(e["userId"], e["status"], e["messageIds"]) for e in statuses] == [
        (bob, "read", [sent["id"]])
    ]


async def _unread(svc: RunningService, user: str, conversation_id: str) -> int:
    async with grpc.aio.insecure_channel(svc.grpc_target) as channel:
        stub = pb_grpc.MessagingServiceStub(channel)
        reply: Any = await stub.ListConversations(
            pb.ListConversationsRequest(),
            metadata=[("authorization", f"Bearer {svc.token(user)}")],
        )
    [found] = [s for s in reply.conversations if s.conversation.id == conversation_id]
    return int(found.unread_count)


async def test_unread_counts_are_per_member(svc: RunningService) -> None:
    alice, bob, carol = unique("alice"), unique("bob"), unique("carol")
    async with devices(svc, alice, bob) as [a, b]:
        group = await _group(svc, a, alice, [bob, carol])
        sent = [
            await a.ok("sendMessage", {"conversationId": group, "content": f"m{i}"})
            for i in range(3)
        ]
        await b.ok("markRead", {"conversationId": group, "upToMessageId": sent[1]["id"]})
        await b.ok("sendMessage", {"conversationId": group, "content": "from bob"})
    assert await _unread(svc, bob, group) == 1
    assert await _unread(svc, carol, group) == 4
    assert await _unread(svc, alice, group) == 1


async def test_marking_delivered_after_reading_changes_nothing(svc: RunningService) -> None:
    alice, bob = unique("alice"), unique("bob")
    async with devices(svc, alice, bob) as [a, b]:
        group = await _group(svc, a, alice, [bob])
        sent = await a.ok("sendMessage", {"conversationId": group, "content": "hi"})
        await b.ok("markRead", {"conversationId": group, "upToMessageId": sent["id"]})
        await a.next("messageStatus")
        again = await b.ok("markDelivered", {"messageIds": [sent["id"]]})
        await a.nothing("messageStatus")
        status = await _status(a, group, sent["id"])
    assert again == {"updated": 0}
    assert status == "read"  # read stays read


async def test_a_member_who_joined_later_does_not_hold_back_an_older_messages_status(
    svc: RunningService,
) -> None:
    alice, bob, carol = unique("alice"), unique("bob"), unique("carol")
    async with devices(svc, alice, bob) as [a, b]:
        group = await _group(svc, a, alice, [bob])
        sent = await a.ok("sendMessage", {"conversationId": group, "content": "before carol"})
        svc.connect_users((alice, carol))
        await a.ok("addParticipants", {"conversationId": group, "userIds": [carol]})
        await b.ok("markRead", {"conversationId": group, "upToMessageId": sent["id"]})
        status = await _status(a, group, sent["id"])
    assert status == "read"


async def test_a_member_who_left_no_longer_holds_back_a_messages_status(
    svc: RunningService,
) -> None:
    alice, bob, carol = unique("alice"), unique("bob"), unique("carol")
    async with devices(svc, alice, bob, carol) as [a, b, c]:
        group = await _group(svc, a, alice, [bob, carol])
        sent = await a.ok("sendMessage", {"conversationId": group, "content": "hi"})
        await b.ok("markRead", {"conversationId": group, "upToMessageId": sent["id"]})
        before = await _status(a, group, sent["id"])
        await c.ok("leaveConversation", {"conversationId": group})
        after = await _status(a, group, sent["id"])
    assert (before, after) == ("sent", "read")
