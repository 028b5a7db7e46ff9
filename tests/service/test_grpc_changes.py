"""gRPC SendMessage, EditMessage, DeleteMessage, SetReaction and MarkRead: the socket events'
rules and codes, and their changes delivered to sockets exactly as socket-made ones; the socket's
listConversations and getMessageHistory are the gRPC methods' pages."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
import pytest_asyncio

from messaging.ids import new_message_id
from messaging.proto.messaging.v1 import messaging_pb2 as pb
from messaging.proto.messaging.v1 import messaging_pb2_grpc as pb_grpc
from messaging.records import NewMessage
from messaging.storage import messages as message_sql
from tests.support.service import RunningService, devices, open_conversation, unique


@pytest_asyncio.fixture
async def stub(svc: RunningService) -> AsyncIterator[pb_grpc.MessagingServiceAsyncStub]:
    async with grpc.aio.insecure_channel(svc.grpc_target) as channel:
        yield pb_grpc.MessagingServiceStub(channel)


def auth(svc: RunningService, user: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {svc.token(user)}")]


async def _code(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value.code()


def _iso(stamp: Any) -> str:
    return str(stamp.ToDatetime(tzinfo=UTC).isoformat(timespec="milliseconds")[:23] + "Z")


async def test_changes_made_over_grpc_reach_every_socket_of_both_participants(
    svc: RunningService, stub: pb_grpc.MessagingServiceAsyncStub
) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with devices(svc, alice, bob) as [a, b]:
        conversation = await open_conversation(svc, a, bob)
        sent = (
            await stub.SendMessage(
                pb.SendMessageRequest(conversation_id=conversation, content="from a bot"),
                metadata=auth(svc, alice),
            )
        ).message
        live = [await d.next("newMessage") for d in (a, b)]
        edited = (
            await stub.EditMessage(
                pb.EditMessageRequest(message_id=sent.id, content="from a bot, edited"),
                metadata=auth(svc, alice),
            )
        ).message
        updated = [await d.next("messageUpdated") for d in (a, b)]
        reactions = (
            await stub.SetReaction(
                pb.SetReactionRequest(message_id=sent.id, emoji="🤖", active=True),
                metadata=auth(svc, bob),
            )
        ).reactions
        reacted = [await d.next("messageReaction") for d in (a, b)]
        read = await stub.MarkRead(
            pb.MarkReadRequest(conversation_id=conversation, up_to_message_id=sent.id),
            metadata=auth(svc, bob),
        )
        status = [await d.next("messageStatus") for d in (a, b)]
        deleted = await stub.DeleteMessage(
            pb.DeleteMessageRequest(message_id=sent.id), metadata=auth(svc, alice)
        )
        gone = [await d.next("messageDeleted") for d in (a, b)]
        for device in (a, b):
            assert len(device.sync_tokens) == 5  # every event carried its token
    assert [m["id"] for m in live] == [sent.id] * 2 and live[0]["content"] == "from a bot"
    assert live[0]["reactions"] == {} and live[0]["attachments"] == []
    assert [m["content"] for m in updated] == ["from a bot, edited"] * 2
    assert updated[0]["editedAt"] == _iso(edited.edited_at)
    assert [(r.emoji, list(r.user_ids)) for r in reactions] == [("🤖", [bob])]
    assert [e["reactions"] for e in reacted] == [{"🤖": [bob]}] * 2
    assert read.updated == 1 and status[0]["status"] == "read" and status[0]["userId"] == bob
    assert deleted.id == sent.id and deleted.conversation_id == conversation
    assert [e["deletedAt"] for e in gone] == [_iso(deleted.deleted_at)] * 2


async def test_grpc_send_message_follows_the_socket_rules(
    svc: RunningService, stub: pb_grpc.MessagingServiceAsyncStub
) -> None:
    alice, bob, carol = unique("alice"), unique("bob"), unique("carol")
    svc.connect_users((alice, bob))
    async with devices(svc, alice) as [a]:
        conversation = await open_conversation(svc, a, bob)
    send = stub.SendMessage
    first = await send(
        pb.SendMessageRequest(conversation_id=conversation, content="once", client_message_id="k1"),
        metadata=auth(svc, alice),
    )
    repeat = await send(
        pb.SendMessageRequest(conversation_id=conversation, content="once", client_message_id="k1"),
        metadata=auth(svc, alice),
    )
    assert repeat.message == first.message and first.message.client_message_id == "k1"
    codes = [
        await _code(
            send(
                pb.SendMessageRequest(conversation_id=conversation, content=c),
                metadata=auth(svc, alice),
            )
        )
        for c in ("", "  ", "x" * 2001, "a\x00b")
    ]
    codes.append(
        await _code(
            send(
                pb.SendMessageRequest(conversation_id="nope", content="x"),
                metadata=auth(svc, alice),
            )
        )
    )
    codes.append(
        await _code(
            send(
                pb.SendMessageRequest(
                    conversation_id=conversation, content="x", attachment_ids=[str(uuid.uuid4())]
                ),
                metadata=auth(svc, alice),
            )
        )
    )
    assert codes == [grpc.StatusCode.INVALID_ARGUMENT] * 6
    stranger = await _code(
        send(
            pb.SendMessageRequest(conversation_id=conversation, content="x"),
            metadata=auth(svc, carol),
        )
    )
    missing = await _code(
        send(
            pb.SendMessageRequest(conversation_id=str(uuid.uuid4()), content="x"),
            metadata=auth(svc, alice),
        )
    )
    svc.graph.disconnect(alice, bob)
    try:
        unconnected = await _code(
            send(
                pb.SendMessageRequest(conversation_id=conversation, content="x"),
                metadata=auth(svc, alice),
            )
        )
    finally:
        svc.graph.connect(alice, bob)
    unauthenticated = await _code(
        send(pb.SendMessageRequest(conversation_id=conversation, content="x"))
    )
    assert stranger == grpc.StatusCode.PERMISSION_DENIED
    assert missing == grpc.StatusCode.NOT_FOUND
    assert unconnected == grpc.StatusCode.PERMISSION_DENIED
    assert unauthenticated == grpc.StatusCode.UNAUTHENTICATED


async def test_grpc_edits_deletes_and_reactions_follow_the_socket_rules(
    svc: RunningService, stub: pb_grpc.MessagingServiceAsyncStub
) -> None:
    alice, bob, carol = unique("alice"), unique("bob"), unique("carol")
    svc.connect_users((alice, bob))
    async with devices(svc, alice) as [a]:
        conversation = await open_conversation(svc, a, bob)
        sent = await a.ok("sendMessage", {"conversationId": conversation, "content": "hi"})
        old_id, _ = new_message_id()
        old = datetime.now(UTC) - timedelta(days=2)
        async with svc.service.chat.engine.begin() as conn:
            await message_sql.insert_messages(
                conn, [NewMessage(old_id, uuid.UUID(conversation), alice, "old", old, None)]
            )

    def edit(user: str, message_id: str, content: str = "new") -> Any:
        return stub.EditMessage(
            pb.EditMessageRequest(message_id=message_id, content=content), metadata=auth(svc, user)
        )

    def delete(user: str, message_id: str) -> Any:
        return stub.DeleteMessage(
            pb.DeleteMessageRequest(message_id=message_id), metadata=auth(svc, user)
        )

    def react(user: str, message_id: str, emoji: str = "👍", active: bool = True) -> Any:
        return stub.SetReaction(
            pb.SetReactionRequest(message_id=message_id, emoji=emoji, active=active),
            metadata=auth(svc, user),
        )

    denied = grpc.StatusCode.PERMISSION_DENIED
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    not_found = grpc.StatusCode.NOT_FOUND
    assert await _code(edit(bob, sent["id"])) == denied  # not the author
    assert await _code(edit(alice, str(old_id))) == denied  # the edit window passed
    assert await _code(edit(alice, sent["id"], " ")) == invalid
    assert await _code(edit(alice, "nope")) == invalid
    assert await _code(edit(carol, sent["id"])) == not_found
    assert await _code(delete(bob, sent["id"])) == denied
    assert await _code(delete(carol, sent["id"])) == not_found
    assert await _code(react(carol, sent["id"])) == not_found
    assert await _code(react(bob, sent["id"], "a b")) == invalid
    assert await _code(react(bob, sent["id"], "")) == invalid
    twice = [(await react(bob, sent["id"])).reactions for _ in range(2)]
    assert twice[0] == twice[1] and [r.emoji for r in twice[0]] == ["👍"]
    first = await delete(alice, sent["id"])
    second = await delete(alice, sent["id"])
    assert first == second and first.deleted_at.seconds > 0
    assert await _code(edit(alice, sent["id"])) == denied  # deleted
    assert await _code(react(bob, sent["id"])) == denied  # deleted


async def test_grpc_mark_read_follows_the_socket_rules(
    svc: RunningService, stub: pb_grpc.MessagingServiceAsyncStub
) -> None:
    alice, bob, carol = unique("alice"), unique("bob"), unique("carol")
    svc.connect_users((alice, bob))
    async with devices(svc, alice) as [a]:
        conversation = await open_conversation(svc, a, bob)
        sent = [
            await a.ok("sendMessage", {"conversationId": conversation, "content": f"m{i}"})
            for i in range(3)
        ]

    def mark(user: str, conversation_id: str, up_to: str) -> Any:
        return stub.MarkRead(
            pb.MarkReadRequest(conversation_id=conversation_id, up_to_message_id=up_to),
            metadata=auth(svc, user),
        )

    assert (await mark(bob, conversation, sent[1]["id"])).updated == 2
    assert (await mark(bob, conversation, sent[1]["id"])).updated == 0  # never backwards
    assert (await mark(alice, conversation, sent[2]["id"])).updated == 0  # own messages
    assert (
        await _code(mark(carol, conversation, sent[0]["id"])) == grpc.StatusCode.PERMISSION_DENIED
    )
    assert await _code(mark(bob, conversation, str(uuid.uuid4()))) == grpc.StatusCode.NOT_FOUND
    assert await _code(mark(bob, conversation, "x")) == grpc.StatusCode.INVALID_ARGUMENT


async def test_grpc_messages_carry_edits_deletes_and_reactions(
    svc: RunningService, stub: pb_grpc.MessagingServiceAsyncStub
) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with devices(svc, alice, bob) as [a, b]:
        conversation = await open_conversation(svc, a, bob)
        kept = await a.ok("sendMessage", {"conversationId": conversation, "content": "kept"})
        gone = await a.ok("sendMessage", {"conversationId": conversation, "content": "gone"})
        await a.ok("editMessage", {"messageId": kept["id"], "content": "kept, edited"})
        await b.ok("setReaction", {"messageId": kept["id"], "emoji": "👍", "active": True})
        await a.ok("setReaction", {"messageId": kept["id"], "emoji": "👍", "active": True})
        await a.ok("deleteMessage", {"messageId": gone["id"]})
    history = await stub.GetMessageHistory(
        pb.GetMessageHistoryRequest(conversation_id=conversation), metadata=auth(svc, bob)
    )
    listed = await stub.ListConversations(pb.ListConversationsRequest(), metadata=auth(svc, bob))
    deleted, edited = history.messages
    assert deleted.content == "" and deleted.HasField("deleted_at") and not deleted.reactions
    assert edited.content == "kept, edited" and edited.HasField("edited_at")
    assert not edited.HasField("deleted_at") and list(edited.attachments) == []
    assert [(r.emoji, list(r.user_ids)) for r in edited.reactions] == [("👍", [bob, alice])]
    assert listed.conversations[0].last_message == deleted


# --- the socket's pages are the gRPC methods' pages --------------------------------------------


async def test_socket_and_grpc_page_through_a_history_alike_with_the_same_cursors(
    svc: RunningService, stub: pb_grpc.MessagingServiceAsyncStub
) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with devices(svc, alice, bob) as [a, b]:
        conversation = await open_conversation(svc, a, bob)
        sent = [
            await a.ok("sendMessage", {"conversationId": conversation, "content": f"m{i}"})
            for i in range(7)
        ]
        socket_pages: list[list[str]] = []
        token: str | None = None
        while True:
            payload: dict[str, Any] = {"conversationId": conversation, "limit": 3}
            if token is not None:
                payload["pageToken"] = token
            page = await b.ok("getMessageHistory", payload)
            socket_pages.append([m["id"] for m in page["messages"]])
            if len(socket_pages) == 1:
                # New messages between pages shift nothing.
                await a.ok("sendMessage", {"conversationId": conversation, "content": "late"})
            token = page["nextPageToken"]
            if token is None:
                break
        first = await b.ok("getMessageHistory", {"conversationId": conversation, "limit": 3})
        grpc_second = await stub.GetMessageHistory(
            pb.GetMessageHistoryRequest(
                conversation_id=conversation, page_size=3, page_token=first["nextPageToken"]
            ),
            metadata=auth(svc, bob),
        )
        default = await b.ok("getMessageHistory", {"conversationId": conversation})
    newest_first = [m["id"] for m in reversed(sent)]
    assert socket_pages == [newest_first[:3], newest_first[3:6], newest_first[6:]]
    assert [m.id for m in grpc_second.messages] == newest_first[2:5]  # "late" came first
    assert len(default["messages"]) == 8 and default["nextPageToken"] is None


async def test_socket_and_grpc_list_conversations_alike_most_recently_active_first(
    svc: RunningService, stub: pb_grpc.MessagingServiceAsyncStub
) -> None:
    alice = unique("alice")
    others = [unique("friend") for _ in range(4)]
    svc.connect_users(*((alice, o) for o in others))
    async with devices(svc, alice) as [a]:
        conversations = [await open_conversation(svc, a, o) for o in others]
        await a.ok("sendMessage", {"conversationId": conversations[1], "content": "latest"})
        first = await a.ok("listConversations", {"limit": 2})
        second = await a.ok("listConversations", {"limit": 2, "pageToken": first["nextPageToken"]})
        default = await a.ok("listConversations", {})
        over_grpc = await stub.ListConversations(
            pb.ListConversationsRequest(page_size=2, page_token=first["nextPageToken"]),
            metadata=auth(svc, alice),
        )
    expected = [conversations[1], conversations[3], conversations[2], conversations[0]]
    walked = [e["conversation"]["id"] for e in first["conversations"] + second["conversations"]]
    assert walked == expected
    assert first["conversations"][0]["lastMessage"]["content"] == "latest"
    assert first["conversations"][0]["unreadCount"] == 0
    assert first["conversations"][1]["lastMessage"] is None
    assert second["nextPageToken"] is None
    assert [e["conversation"]["id"] for e in default["conversations"]] == expected
    assert [s.conversation.id for s in over_grpc.conversations] == expected[2:]


async def test_socket_page_requests_are_validated_and_checked_like_grpc(
    svc: RunningService,
) -> None:
    alice, bob, carol = unique("alice"), unique("bob"), unique("carol")
    svc.connect_users((alice, bob), (alice, carol))
    async with devices(svc, alice, carol) as [a, c]:
        conversation = await open_conversation(svc, a, bob)
        other = await open_conversation(svc, a, carol)
        await a.ok("sendMessage", {"conversationId": conversation, "content": "x"})
        await a.ok("sendMessage", {"conversationId": conversation, "content": "y"})
        page = await a.ok("getMessageHistory", {"conversationId": conversation, "limit": 1})
        listed = await a.ok("listConversations", {"limit": 1})
        replies = {
            "limit 0": await a.call("listConversations", {"limit": 0}),
            "limit 101": await a.call(
                "getMessageHistory", {"conversationId": conversation, "limit": 101}
            ),
            "limit text": await a.call("listConversations", {"limit": "5"}),
            "forged token": await a.call("listConversations", {"pageToken": "AAAA"}),
            "token of another list": await a.call(
                "getMessageHistory", {"conversationId": other, "pageToken": page["nextPageToken"]}
            ),
            "history token for the list": await a.call(
                "listConversations", {"pageToken": page["nextPageToken"]}
            ),
            "someone else's list token": await c.call(
                "listConversations", {"pageToken": listed["nextPageToken"]}
            ),
            "no conversation id": await a.call("getMessageHistory", {}),
            "not an object": await a.call("getMessageHistory", "x"),
            "unknown field": await a.call("listConversations", {"cursor": "x"}),
            "not a participant": await c.call(
                "getMessageHistory", {"conversationId": conversation}
            ),
            "no such conversation": await a.call(
                "getMessageHistory", {"conversationId": str(uuid.uuid4())}
            ),
        }
    codes = {name: reply["error"]["code"] for name, reply in replies.items() if not reply["ok"]}
    assert codes == {
        **{
            name: "VALIDATION_FAILED"
            for name in replies
            if name not in ("not a participant", "no such conversation")
        },
        "not a participant": "FORBIDDEN",
        "no such conversation": "NOT_FOUND",
    }
