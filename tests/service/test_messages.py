"""sendMessage: committed before the ack, delivered once to every device that should see it."""

from __future__ import annotations

import asyncio
import uuid

import grpc
from sqlalchemy import func, select

from messaging.tables import messages
from tests.support.service import RunningService, devices, open_conversation, unique


async def _pair(svc: RunningService) -> tuple[str, str]:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    return alice, bob


async def _stored_count(svc: RunningService, conversation_id: str) -> int:
    async with svc.service.chat.engine.connect() as conn:
        count = await conn.scalar(
            select(func.count())
            .select_from(messages)
            .where(messages.c.conversation_id == uuid.UUID(conversation_id))
        )
    return int(count or 0)


async def test_a_message_reaches_every_recipient_device_and_the_senders_other_devices(
    svc: RunningService,
) -> None:
    alice, bob = await _pair(svc)
    async with devices(svc, alice, alice, bob, bob) as [a1, a2, b1, b2]:
        conversation = await open_conversation(svc, a1, bob)
        sent = await a1.ok(
            "sendMessage",
            {"conversationId": conversation, "content": "hello", "clientMessageId": "c1"},
        )
        for device in (a2, b1, b2):
            assert await device.next("newMessage") == sent
        await a1.nothing("newMessage")
    assert sent["authorId"] == alice
    assert sent["status"] == "sent"
    assert sent["clientMessageId"] == "c1"
    assert uuid.UUID(sent["id"]).version == 7
    assert sent["createdAt"].endswith("Z")


async def test_the_ack_comes_after_the_message_is_committed(svc: RunningService) -> None:
    alice, bob = await _pair(svc)
    async with devices(svc, alice) as [a]:
        conversation = await open_conversation(svc, a, bob)
        sent = await a.ok("sendMessage", {"conversationId": conversation, "content": "durable"})
        # A fresh connection from the pool sees it: it was committed before the ack was sent.
        assert await _stored_count(svc, conversation) == 1
    assert sent["clientMessageId"] is None


async def test_a_repeated_client_message_id_stores_and_delivers_once(svc: RunningService) -> None:
    alice, bob = await _pair(svc)
    async with devices(svc, alice, bob) as [a, b]:
        conversation = await open_conversation(svc, a, bob)
        payload = {"conversationId": conversation, "content": "once", "clientMessageId": "retry-1"}
        first = await a.ok("sendMessage", payload)
        again = await a.ok("sendMessage", payload | {"content": "changed on retry"})
        assert again == first
        assert await b.next("newMessage") == first
        await b.nothing("newMessage")
    assert await _stored_count(svc, conversation) == 1


async def test_racing_sends_with_one_client_message_id_store_one_message(
    svc: RunningService,
) -> None:
    alice, bob = await _pair(svc)
    async with devices(svc, alice, alice, alice, bob) as [a1, a2, a3, b]:
        conversation = await open_conversation(svc, a1, bob)
        payload = {"conversationId": conversation, "content": "race", "clientMessageId": "race-1"}
        replies = await asyncio.gather(*(d.call("sendMessage", payload) for d in (a1, a2, a3) * 4))
        assert all(r["ok"] for r in replies), replies
        assert len({r["data"]["id"] for r in replies}) == 1
        await b.next("newMessage")
        await b.nothing("newMessage")
    assert await _stored_count(svc, conversation) == 1


async def test_the_same_client_message_id_from_another_author_is_another_message(
    svc: RunningService,
) -> None:
    alice, bob = await _pair(svc)
    async with devices(svc, alice, bob) as [a, b]:
        conversation = await open_conversation(svc, a, bob)
        from_alice = await a.ok(
            "sendMessage", {"conversationId": conversation, "content": "a", "clientMessageId": "k"}
        )
        from_bob = await b.ok(
            "sendMessage", {"conversationId": conversation, "content": "b", "clientMessageId": "k"}
        )
    assert from_alice["id"] != from_bob["id"]


async def test_an_unknown_conversation_is_not_found(svc: RunningService) -> None:
    async with devices(svc, unique()) as [a]:
        reply = await a.call(
            "sendMessage", {"conversationId": str(uuid.uuid4()), "content": "anyone there?"}
        )
    assert reply["error"]["code"] == "NOT_FOUND"


async def test_someone_outside_the_conversation_is_forbidden(svc: RunningService) -> None:
    alice, bob = await _pair(svc)
    mallory = unique("mallory")
    svc.connect_users((mallory, alice), (mallory, bob))
    async with devices(svc, alice, mallory, bob) as [a, m, b]:
        conversation = await open_conversation(svc, a, bob)
        reply = await m.call("sendMessage", {"conversationId": conversation, "content": "psst"})
        assert reply["error"]["code"] == "FORBIDDEN"
        await b.nothing("newMessage")


async def test_a_participant_who_is_no_longer_connected_is_forbidden(svc: RunningService) -> None:
    alice, bob = await _pair(svc)
    async with devices(svc, alice) as [a]:
        conversation = await open_conversation(svc, a, bob)
        svc.graph.disconnect(alice, bob)
        reply = await a.call("sendMessage", {"conversationId": conversation, "content": "hi"})
    assert reply["error"]["code"] == "FORBIDDEN"
    assert await _stored_count(svc, conversation) == 0


async def test_sending_while_the_connections_service_is_down_fails_closed(
    svc: RunningService,
) -> None:
    alice, bob = await _pair(svc)
    async with devices(svc, alice, bob) as [a, b]:
        conversation = await open_conversation(svc, a, bob)
        svc.graph.fail_with = grpc.StatusCode.UNAVAILABLE
        try:
            reply = await a.call("sendMessage", {"conversationId": conversation, "content": "x"})
        finally:
            svc.graph.fail_with = None
        assert reply["error"]["code"] == "UNAVAILABLE"
        await b.nothing("newMessage")
    assert await _stored_count(svc, conversation) == 0


BAD_SEND_PAYLOADS: list[tuple[dict[str, object], str]] = [
    ({"content": "no conversation"}, "conversationId"),
    ({"conversationId": "not-a-uuid", "content": "x"}, "conversationId"),
    ({"conversationId": "{conv}", "content": ""}, "content"),
    ({"conversationId": "{conv}", "content": "   \n\t "}, "content"),
    ({"conversationId": "{conv}", "content": "x" * 2001}, "content"),
    ({"conversationId": "{conv}", "content": "x" * 200_000}, "content"),
    ({"conversationId": "{conv}", "content": 42}, "content"),
    ({"conversationId": "{conv}", "content": "x", "clientMessageId": ""}, "clientMessageId"),
    ({"conversationId": "{conv}", "content": "x", "clientMessageId": "k" * 65}, "clientMessageId"),
    ({"conversationId": "{conv}", "content": "x", "surprise": 1}, "surprise"),
]


async def test_malformed_and_oversized_payloads_are_refused_and_the_socket_stays(
    svc: RunningService,
) -> None:
    alice, bob = await _pair(svc)
    async with devices(svc, alice, bob) as [a, b]:
        conversation = await open_conversation(svc, a, bob)
        for payload, field in BAD_SEND_PAYLOADS:
            filled = {k: (conversation if v == "{conv}" else v) for k, v in payload.items()}
            reply = await a.call("sendMessage", filled)
            assert reply["ok"] is False, payload
            assert reply["error"]["code"] == "VALIDATION_FAILED"
            assert any(field in d["field"] for d in reply["error"]["details"]), reply
        for weird in (None, "text", 3, [1, 2], True):
            reply = await a.call("sendMessage", weird)
            assert reply["error"]["code"] == "VALIDATION_FAILED", weird
        assert a.client.connected
        ok = await a.ok("sendMessage", {"conversationId": conversation, "content": "x" * 2000})
        assert len(ok["content"]) == 2000
        assert (await b.next("newMessage"))["id"] == ok["id"]
    assert await _stored_count(svc, conversation) == 1


async def test_extra_arguments_and_unknown_events_get_an_error_ack_not_a_disconnect(
    svc: RunningService,
) -> None:
    async with devices(svc, unique()) as [a]:
        two_args = await a.client.call("sendMessage", ({"a": 1}, {"b": 2}), timeout=5)
        unknown = await a.call("deleteEverything", {"please": True})
        assert a.client.connected
    assert two_args["error"]["code"] == "VALIDATION_FAILED"
    assert unknown["error"]["code"] == "VALIDATION_FAILED"
    assert "deleteEverything" in unknown["error"]["message"]


async def test_unicode_content_round_trips_exactly(svc: RunningService) -> None:
    alice, bob = await _pair(svc)
    text = "héllo 👋🏽 — 你好 \u202e ok"
    async with devices(svc, alice, bob) as [a, b]:
        conversation = await open_conversation(svc, a, bob)
        sent = await a.ok("sendMessage", {"conversationId": conversation, "content": text})
        assert (await b.next("newMessage"))["content"] == text
    assert sent["content"] == text


async def test_an_internal_error_is_reported_without_a_stack_trace(svc: RunningService) -> None:
    alice, bob = await _pair(svc)
    chat = svc.service.chat.messages

    async def broken(*_: object, **__: object) -> None:
        raise RuntimeError("secret internals: password=hunter2")

    async with devices(svc, alice) as [a]:
        conversation = await open_conversation(svc, a, bob)
        original = chat.send_message
        chat.send_message = broken  # type: ignore[method-assign,assignment]
        try:
            reply = await a.call("sendMessage", {"conversationId": conversation, "content": "x"})
        finally:
            chat.send_message = original  # type: ignore[method-assign]
        assert a.client.connected
    assert reply == {"ok": False, "error": {"code": "INTERNAL", "message": "internal error"}}
