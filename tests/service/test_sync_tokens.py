"""syncToken: every message event carries a position in the recipient's change log, and
``syncMessages {since}`` resumes from it exactly (the latest state of each changed message, once,
in change order)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import socketio

from messaging.ids import new_message_id
from messaging.records import NewMessage
from messaging.storage import messages as message_sql
from tests.support.service import Device, RunningService, devices, open_conversation, unique


async def _since_all(device: Device, since: str, limit: int = 100) -> tuple[list[dict], str]:  # type: ignore[type-arg]
    """Walk ``syncMessages {since}`` page by page; the messages and the final token."""
    collected: list[dict] = []  # type: ignore[type-arg]
    while True:
        page = await device.ok("syncMessages", {"since": since, "limit": limit})
        collected.extend(page["messages"])
        since = page["syncToken"]
        if not page["hasMore"]:
            return collected, since


async def test_every_message_event_carries_a_token_that_resumes_right_after_it(
    svc: RunningService,
) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with devices(svc, alice, bob) as [a, b]:
        conversation = await open_conversation(svc, a, bob)
        first = await a.ok("sendMessage", {"conversationId": conversation, "content": "one"})
        assert await b.next("newMessage") == first
        token = b.sync_tokens[-1]
        assert isinstance(token, str) and token
        assert await b.ok("syncMessages", {"since": token}) == {
            "messages": [],
            "hasMore": False,
            "syncToken": token,
        }
        later = [
            await a.ok("sendMessage", {"conversationId": conversation, "content": str(i)})
            for i in range(3)
        ]
        missed, _ = await _since_all(b, token)
        await b.ok("markRead", {"conversationId": conversation, "upToMessageId": first["id"]})
        status = await a.next("messageStatus")
        assert status["messageIds"] == [first["id"]] and status["status"] == "read"
        assert a.sync_tokens, "messageStatus carries a token too"
    assert [m["id"] for m in missed] == [m["id"] for m in later]


async def test_since_returns_the_latest_state_of_each_changed_message_once_in_change_order(
    svc: RunningService,
) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with devices(svc, alice, bob) as [a, b]:
        conversation = await open_conversation(svc, a, bob)
        start = (await b.ok("syncMessages", {}))["syncToken"]
        sent = [
            await a.ok("sendMessage", {"conversationId": conversation, "content": str(i)})
            for i in range(4)
        ]
        # The second message is delivered, then read, after the others were created.
        await b.ok("markDelivered", {"messageIds": [sent[1]["id"]]})
        await b.ok("markRead", {"conversationId": conversation, "upToMessageId": sent[1]["id"]})
        changed, token = await _since_all(b, start, limit=2)
        again, _ = await _since_all(b, token)
        authors_view, _ = await _since_all(a, (await a.ok("syncMessages", {}))["syncToken"])
    order = [sent[2]["id"], sent[3]["id"], sent[0]["id"], sent[1]["id"]]
    # sent[0] was read too (markRead covers everything up to sent[1]).
    assert [m["id"] for m in changed] == order
    assert [m["status"] for m in changed] == ["sent", "sent", "read", "read"]
    assert again == []
    assert authors_view == []  # a fresh full sync's token is already past everything


async def test_a_token_that_was_not_minted_for_the_caller_is_refused(svc: RunningService) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with devices(svc, alice, bob) as [a, b]:
        conversation = await open_conversation(svc, a, bob)
        sent = await a.ok("sendMessage", {"conversationId": conversation, "content": "x"})
        await b.next("newMessage")
        bobs = b.sync_tokens[-1]
        replies = [
            await a.call("syncMessages", {"since": bobs}),
            await b.call("syncMessages", {"since": _tampered(bobs)}),
            await b.call("syncMessages", {"since": "not-a-token"}),
            await b.call("syncMessages", {"since": ""}),
            await b.call("syncMessages", {"since": bobs, "after": sent["id"]}),
        ]
        still = await b.call("syncMessages", {"since": bobs})
    assert [r["error"]["code"] for r in replies] == ["VALIDATION_FAILED"] * 5
    assert still["ok"] is True


async def test_a_change_that_commits_late_is_not_skipped_by_a_token_handed_out_meanwhile(
    svc: RunningService,
) -> None:
    """A message written in a transaction that commits after a later one is still found: a
    user's positions are taken under their counter's row lock, so they commit in order."""
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with devices(svc, alice, bob) as [a, b]:
        conversation = uuid.UUID(await open_conversation(svc, a, bob))
        start = (await b.ok("syncMessages", {}))["syncToken"]
        for content in ("first", "second"):
            message_id, created_at = new_message_id()
            async with svc.service.chat.engine.begin() as conn:
                await message_sql.insert_messages(
                    conn, [NewMessage(message_id, conversation, alice, content, created_at, None)]
                )
        page = await b.ok("syncMessages", {"since": start, "limit": 1})
        rest = await b.ok("syncMessages", {"since": page["syncToken"]})
    assert [m["content"] for m in page["messages"]] == ["first"]
    assert [m["content"] for m in rest["messages"]] == ["second"]


async def test_writers_of_different_users_never_wait_for_each_other(
    pg_svc: RunningService,
) -> None:
    """No cluster-wide lock on the write path: while a transaction holds alice and bob's log
    counters, a send between two other users commits and is acknowledged."""
    svc = pg_svc
    alice, bob, carol, dave = (unique(n) for n in ("alice", "bob", "carol", "dave"))
    svc.connect_users((alice, bob), (carol, dave))
    async with devices(svc, alice, carol) as [a, c]:
        held = uuid.UUID(await open_conversation(svc, a, bob))
        other = await open_conversation(svc, c, dave)
        engine = svc.service.chat.engine
        conn = await engine.connect()
        transaction = await conn.begin()
        try:
            message_id, created_at = new_message_id()
            await message_sql.insert_messages(
                conn, [NewMessage(message_id, held, alice, "held", created_at, None)]
            )
            reply = await asyncio.wait_for(
                c.call("sendMessage", {"conversationId": other, "content": "free"}), 10
            )
        finally:
            await transaction.rollback()
            await conn.close()
    assert reply["ok"] is True, reply


async def test_a_repeated_send_reaches_a_recipient_that_never_got_the_original(
    svc: RunningService,
) -> None:
    """The original was committed by a replica that died before fanning it out (here: written
    straight to the store); the client's retry with the same clientMessageId delivers it, once."""
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with devices(svc, alice, bob) as [a, b]:
        conversation = await open_conversation(svc, a, bob)
        message_id, created_at = new_message_id()
        original = NewMessage(
            message_id, uuid.UUID(conversation), alice, "in doubt", created_at, "retry-1"
        )
        async with svc.service.chat.engine.begin() as conn:
            await message_sql.insert_messages(conn, [original])
        payload = {
            "conversationId": conversation,
            "content": "in doubt",
            "clientMessageId": "retry-1",
        }
        retried = await a.ok("sendMessage", payload)
        got = await b.next("newMessage")
        again = await a.ok("sendMessage", payload)
        await b.nothing("newMessage", wait=0.5)
    assert retried["id"] == again["id"] == got["id"] == str(message_id)


async def test_a_connecting_device_gets_no_live_event_before_its_connect(
    svc: RunningService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events for a user while their device's handshake is still running (here: a slow
    subscription) must not reach it ahead of its CONNECT: the device would take their token and
    its catch-up sync would start past what it missed while away."""
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    delivery = svc.service.delivery
    original = delivery.watch

    async def slow_watch(user_id: str) -> None:
        await original(user_id)
        await asyncio.sleep(1.0)

    async with devices(svc, alice) as [a]:
        conversation = await open_conversation(svc, a, bob)
        monkeypatch.setattr(delivery, "watch", slow_watch)
        heard: list[str] = []
        client = socketio.AsyncClient(reconnection=False)

        async def connected() -> None:
            heard.append("connect")

        async def new_message(data: Any) -> None:
            heard.append("newMessage")

        client.on("connect", connected)
        client.on("newMessage", new_message)
        connecting = asyncio.create_task(
            client.connect(
                svc.url, auth={"token": svc.token(bob)}, transports=["websocket"], wait_timeout=10
            )
        )
        try:
            await asyncio.sleep(0.5)  # the handshake is inside the slow subscription
            for i in range(3):
                await a.ok("sendMessage", {"conversationId": conversation, "content": str(i)})
            await connecting
            await a.ok("sendMessage", {"conversationId": conversation, "content": "after"})
            await asyncio.sleep(0.5)
        finally:
            await client.disconnect()
    assert heard[0] == "connect", heard
    assert heard.count("newMessage") >= 1


def _tampered(token: str) -> str:
    """The token with one character of its middle changed (all six of its bits are the token's:
    the last characters may carry padding bits, and a token that already ended in the
    replacement would be unchanged)."""
    middle = len(token) // 2
    return token[:middle] + ("B" if token[middle] != "B" else "C") + token[middle + 1 :]
