"""Edits, deletes and reactions over Socket.IO: the rules, the error codes, the events every
device gets, and what storage keeps (on PostgreSQL and on SQLite)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from messaging import store
from messaging.ids import new_message_id
from messaging.records import LogEntry, NewMessage
from messaging.storage import message_changes as change_store
from messaging.storage import messages as message_sql
from messaging.tables import message_reactions, messages
from tests.support.service import Device, RunningService, devices, open_conversation, unique


def _code(reply: dict[str, Any]) -> str:
    assert reply["ok"] is False, reply
    return str(reply["error"]["code"])


async def _pair(svc: RunningService) -> tuple[str, str]:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    return alice, bob


async def _send(device: Device, conversation: str, content: str = "hello") -> dict[str, Any]:
    data: dict[str, Any] = await device.ok(
        "sendMessage", {"conversationId": conversation, "content": content}
    )
    return data


async def _since_all(device: Device, since: str) -> tuple[list[dict[str, Any]], str]:
    collected: list[dict[str, Any]] = []
    while True:
        page = await device.ok("syncMessages", {"since": since, "limit": 2})
        collected.extend(page["messages"])
        since = page["syncToken"]
        if not page["hasMore"]:
            return collected, since


# --- editMessage -------------------------------------------------------------------------------


async def test_an_edit_replaces_the_content_and_reaches_every_device_but_the_editing_one(
    svc: RunningService,
) -> None:
    alice, bob = await _pair(svc)
    async with devices(svc, alice, alice, bob, bob) as [a1, a2, b1, b2]:
        conversation = await open_conversation(svc, a1, bob)
        sent = await _send(a1, conversation, "helo")
        for device in (a2, b1, b2):
            await device.next("newMessage")
        edited = await a1.ok("editMessage", {"messageId": sent["id"], "content": "hello"})
        got = [await d.next("messageUpdated") for d in (a2, b1, b2)]
        await a1.nothing("messageUpdated", wait=0.3)
        history = await b1.ok("getMessageHistory", {"conversationId": conversation})
    assert edited["content"] == "hello" and edited["editedAt"] is not None
    assert {k: v for k, v in edited.items() if k not in ("content", "editedAt")} == {
        k: v for k, v in sent.items() if k not in ("content", "editedAt")
    }
    assert got == [edited] * 3
    assert history["messages"] == [edited]


async def test_an_edit_keeps_no_earlier_version_in_storage(svc: RunningService) -> None:
    alice, bob = await _pair(svc)
    async with devices(svc, alice) as [a]:
        conversation = await open_conversation(svc, a, bob)
        sent = await _send(a, conversation, "the first words")
        await a.ok("editMessage", {"messageId": sent["id"], "content": "second thoughts"})
    async with svc.service.chat.engine.connect() as conn:
        contents = (
            (
                await conn.execute(
                    select(messages.c.content).where(messages.c.id == uuid.UUID(sent["id"]))
                )
            )
            .scalars()
            .all()
        )
    assert contents == ["second thoughts"]


async def test_only_the_author_can_edit_a_message(svc: RunningService) -> None:
    alice, bob = await _pair(svc)
    async with devices(svc, alice, bob) as [a, b]:
        conversation = await open_conversation(svc, a, bob)
        sent = await _send(a, conversation)
        reply = await b.call("editMessage", {"messageId": sent["id"], "content": "mine now"})
        await a.nothing("messageUpdated", wait=0.3)
    assert _code(reply) == "FORBIDDEN"


async def test_an_edit_after_the_edit_window_is_forbidden(svc: RunningService) -> None:
    alice, bob = await _pair(svc)
    async with devices(svc, alice) as [a]:
        conversation = await open_conversation(svc, a, bob)
        message_id, _ = new_message_id()
        old = datetime.now(UTC) - timedelta(seconds=svc.settings.edit_window_seconds + 60)
        async with svc.service.chat.engine.begin() as conn:
            await message_sql.insert_messages(
                conn, [NewMessage(message_id, uuid.UUID(conversation), alice, "old", old, None)]
            )
        recent = await _send(a, conversation)
        late = await a.call("editMessage", {"messageId": str(message_id), "content": "too late"})
        in_time = await a.call("editMessage", {"messageId": recent["id"], "content": "in time"})
    assert _code(late) == "FORBIDDEN"
    assert late["error"]["details"] == {"editWindowSeconds": 86_400}
    assert in_time["ok"] is True


async def test_edited_content_follows_the_rules_of_a_sent_one(svc: RunningService) -> None:
    alice, bob = await _pair(svc)
    async with devices(svc, alice) as [a]:
        conversation = await open_conversation(svc, a, bob)
        sent = await _send(a, conversation)
        codes = [
            _code(await a.call("editMessage", {"messageId": sent["id"], "content": content}))
            for content in ("", "   ", "\u200b", "x" * 2001, "a\x00b")
        ]
        codes.append(_code(await a.call("editMessage", {"messageId": "nope", "content": "x"})))
        codes.append(_code(await a.call("editMessage", {"messageId": sent["id"]})))
        codes.append(
            _code(await a.call("editMessage", {"messageId": sent["id"], "content": "x", "y": 1}))
        )
        longest = await a.call("editMessage", {"messageId": sent["id"], "content": "x" * 2000})
    assert codes == ["VALIDATION_FAILED"] * 8
    assert longest["ok"] is True


async def test_repeating_the_last_edit_changes_nothing_and_announces_nothing(
    svc: RunningService,
) -> None:
    alice, bob = await _pair(svc)
    async with devices(svc, alice, bob) as [a, b]:
        conversation = await open_conversation(svc, a, bob)
        sent = await _send(a, conversation)
        await b.next("newMessage")
        first = await a.ok("editMessage", {"messageId": sent["id"], "content": "fixed"})
        await b.next("messageUpdated")
        again = await a.ok("editMessage", {"messageId": sent["id"], "content": "fixed"})
        await b.nothing("messageUpdated", wait=0.4)
    assert again == first


# --- deleteMessage -----------------------------------------------------------------------------


async def test_a_delete_erases_content_and_reactions_and_leaves_a_tombstone_everywhere(
    svc: RunningService,
) -> None:
    alice, bob = await _pair(svc)
    async with devices(svc, alice, alice, bob) as [a1, a2, b]:
        conversation = await open_conversation(svc, a1, bob)
        sent = await _send(a1, conversation, "regrettable")
        await b.next("newMessage")
        await b.ok("setReaction", {"messageId": sent["id"], "emoji": "😮", "active": True})
        await a1.next("messageReaction")
        await a2.next("messageReaction")
        deleted = await a1.ok("deleteMessage", {"messageId": sent["id"]})
        events = [await d.next("messageDeleted") for d in (a2, b)]
        await a1.nothing("messageDeleted", wait=0.3)
        history = await b.ok("getMessageHistory", {"conversationId": conversation})
    assert deleted == {
        "id": sent["id"],
        "conversationId": conversation,
        "deletedAt": deleted["deletedAt"],
    }
    assert deleted["deletedAt"] is not None
    assert (
        events
        == [
            {
                "conversationId": conversation,
                "messageId": sent["id"],
                "deletedAt": deleted["deletedAt"],
            }
        ]
        * 2
    )
    [tombstone] = history["messages"]
    assert tombstone["content"] == "" and tombstone["deletedAt"] == deleted["deletedAt"]
    assert tombstone["reactions"] == {} and tombstone["attachments"] == []
    assert tombstone["id"] == sent["id"] and tombstone["createdAt"] == sent["createdAt"]
    message_id = uuid.UUID(sent["id"])
    async with svc.service.chat.engine.connect() as conn:
        content = (
            await conn.execute(select(messages.c.content).where(messages.c.id == message_id))
        ).scalar_one()
        reactions = (
            await conn.execute(
                select(func.count()).where(message_reactions.c.message_id == message_id)
            )
        ).scalar_one()
    assert content == "" and reactions == 0


async def test_deleting_twice_answers_the_same_and_announces_once(svc: RunningService) -> None:
    alice, bob = await _pair(svc)
    async with devices(svc, alice, bob) as [a, b]:
        conversation = await open_conversation(svc, a, bob)
        sent = await _send(a, conversation)
        await b.next("newMessage")
        first = await a.ok("deleteMessage", {"messageId": sent["id"]})
        await b.next("messageDeleted")
        second = await a.ok("deleteMessage", {"messageId": sent["id"]})
        await b.nothing("messageDeleted", wait=0.4)
    assert second == first


async def test_a_deleted_message_no_longer_counts_as_unread(svc: RunningService) -> None:
    alice, bob = await _pair(svc)
    async with devices(svc, alice, bob) as [a, b]:
        conversation = await open_conversation(svc, a, bob)
        kept = await _send(a, conversation, "kept")
        gone = await _send(a, conversation, "gone")
        before = (await b.ok("listConversations", {}))["conversations"][0]["unreadCount"]
        await a.ok("deleteMessage", {"messageId": gone["id"]})
        after = (await b.ok("listConversations", {}))["conversations"][0]["unreadCount"]
    assert kept["id"] != gone["id"]
    assert (before, after) == (2, 1)


async def test_only_the_author_can_delete_a_message(svc: RunningService) -> None:
    alice, bob = await _pair(svc)
    async with devices(svc, alice, bob) as [a, b]:
        conversation = await open_conversation(svc, a, bob)
        sent = await _send(a, conversation)
        reply = await b.call("deleteMessage", {"messageId": sent["id"]})
        history = await a.ok("getMessageHistory", {"conversationId": conversation})
    assert _code(reply) == "FORBIDDEN"
    assert history["messages"][0]["content"] == "hello"


async def test_a_deleted_message_can_be_neither_edited_nor_reacted_to(svc: RunningService) -> None:
    alice, bob = await _pair(svc)
    async with devices(svc, alice, bob) as [a, b]:
        conversation = await open_conversation(svc, a, bob)
        sent = await _send(a, conversation)
        await a.ok("deleteMessage", {"messageId": sent["id"]})
        edit = await a.call("editMessage", {"messageId": sent["id"], "content": "back"})
        react = await b.call(
            "setReaction", {"messageId": sent["id"], "emoji": "👍", "active": True}
        )
    assert _code(edit) == "FORBIDDEN" and _code(react) == "FORBIDDEN"


async def test_someone_outside_the_conversation_learns_nothing_about_its_messages(
    svc: RunningService,
) -> None:
    alice, bob = await _pair(svc)
    carol = unique("carol")
    async with devices(svc, alice, carol) as [a, c]:
        conversation = await open_conversation(svc, a, bob)
        sent = await _send(a, conversation)
        missing = str(uuid.uuid4())
        replies = [
            await c.call(event, {**payload, "messageId": message_id})
            for message_id in (sent["id"], missing)
            for event, payload in (
                ("editMessage", {"content": "x"}),
                ("deleteMessage", {}),
                ("setReaction", {"emoji": "👍", "active": True}),
            )
        ]
        own_missing = await a.call("deleteMessage", {"messageId": missing})
    assert [_code(r) for r in replies] == ["NOT_FOUND"] * 6
    # The same answer, word for word, whether the message exists or not.
    assert [r["error"] for r in replies[:3]] == [r["error"] for r in replies[3:]]
    assert _code(own_missing) == "NOT_FOUND"


# --- setReaction -------------------------------------------------------------------------------


async def test_any_participant_reacts_idempotently_and_each_change_is_announced_once(
    svc: RunningService,
) -> None:
    alice, bob = await _pair(svc)
    async with devices(svc, alice, bob, bob) as [a, b1, b2]:
        conversation = await open_conversation(svc, a, bob)
        sent = await _send(a, conversation)
        react = {"messageId": sent["id"], "emoji": "👍", "active": True}
        first = await b1.ok("setReaction", react)
        event = await a.next("messageReaction")
        assert await b2.next("messageReaction") == event
        again = await b1.ok("setReaction", react)
        await a.nothing("messageReaction", wait=0.3)
        own = await a.ok("setReaction", {**react, "emoji": "🎉"})
        await b1.next("messageReaction")
        both = await a.ok("setReaction", react)
        removed = await b1.ok("setReaction", {**react, "active": False})
        removed_again = await b1.ok("setReaction", {**react, "active": False})
        history = await b1.ok("getMessageHistory", {"conversationId": conversation})
    assert first == again == {"reactions": {"👍": [bob]}}
    assert event == {
        "conversationId": conversation,
        "messageId": sent["id"],
        "userId": bob,
        "emoji": "👍",
        "active": True,
        "reactions": {"👍": [bob]},
    }
    assert own == {"reactions": {"👍": [bob], "🎉": [alice]}}
    assert both == {"reactions": {"👍": [bob, alice], "🎉": [alice]}}
    assert removed == removed_again == {"reactions": {"👍": [alice], "🎉": [alice]}}
    assert history["messages"][0]["reactions"] == removed["reactions"]


async def test_a_message_holds_at_most_twenty_distinct_emoji(svc: RunningService) -> None:
    alice, bob = await _pair(svc)
    async with devices(svc, alice, bob) as [a, b]:
        conversation = await open_conversation(svc, a, bob)
        sent = await _send(a, conversation)
        emoji = [chr(0x1F600 + i) for i in range(21)]
        for e in emoji[:20]:
            await a.ok("setReaction", {"messageId": sent["id"], "emoji": e, "active": True})
        over = await b.call(
            "setReaction", {"messageId": sent["id"], "emoji": emoji[20], "active": True}
        )
        existing = await b.call(
            "setReaction", {"messageId": sent["id"], "emoji": emoji[0], "active": True}
        )
    assert _code(over) == "VALIDATION_FAILED"
    assert over["error"]["details"] == {"maxEmoji": 20}
    assert existing["ok"] is True and existing["data"]["reactions"][emoji[0]] == [alice, bob]
    assert len(existing["data"]["reactions"]) == 20


async def test_racing_reactions_never_take_a_message_past_twenty_emoji(
    svc: RunningService,
) -> None:
    alice, bob = await _pair(svc)
    async with devices(svc, alice, bob) as [a, b]:
        conversation = await open_conversation(svc, a, bob)
        sent = await _send(a, conversation)
        replies = await asyncio.gather(
            *(
                device.call(
                    "setReaction",
                    {"messageId": sent["id"], "emoji": chr(0x1F300 + i), "active": True},
                )
                for i, device in enumerate([a, b] * 15)
            )
        )
        history = await a.ok("getMessageHistory", {"conversationId": conversation})
    assert sum(r["ok"] for r in replies) == 20
    assert {_code(r) for r in replies if not r["ok"]} == {"VALIDATION_FAILED"}
    assert len(history["messages"][0]["reactions"]) == 20


async def test_an_edit_racing_a_delete_never_brings_the_content_back(svc: RunningService) -> None:
    alice, bob = await _pair(svc)
    async with devices(svc, alice, alice) as [a1, a2]:
        conversation = await open_conversation(svc, a1, bob)
        sent = [await _send(a1, conversation, f"m{i}") for i in range(5)]
        replies = await asyncio.gather(
            *(
                call
                for m in sent
                for call in (
                    a1.call("editMessage", {"messageId": m["id"], "content": "resurrected?"}),
                    a2.call("deleteMessage", {"messageId": m["id"]}),
                )
            )
        )
        history = await a1.ok("getMessageHistory", {"conversationId": conversation})
    edits, deletes = replies[0::2], replies[1::2]
    assert all(r["ok"] for r in deletes)
    assert all(r["ok"] or _code(r) == "FORBIDDEN" for r in edits)
    assert [(m["content"], m["deletedAt"] is not None) for m in history["messages"]] == [
        ("", True)
    ] * 5


@pytest.mark.parametrize(
    ("emoji", "accepted"),
    [
        ("👍", True),
        ("👨\u200d👩\u200d👧", True),  # a family: joined by zero-width joiners
        ("❤️", True),  # with a variation selector
        ("🇫🇷", True),
        ("+1", True),
        ("x" * 16, True),
        ("", False),
        ("x" * 17, False),
        ("👍 ", False),
        ("a\tb", False),
        ("\u00a0", False),
        ("\x07", False),
        ("a\u2028", False),
    ],
)
async def test_an_emoji_is_1_to_16_characters_without_whitespace_or_control_characters(
    svc: RunningService, emoji: str, accepted: bool
) -> None:
    alice, bob = await _pair(svc)
    async with devices(svc, alice) as [a]:
        conversation = await open_conversation(svc, a, bob)
        sent = await _send(a, conversation)
        reply = await a.call(
            "setReaction", {"messageId": sent["id"], "emoji": emoji, "active": True}
        )
        missing_active = await a.call("setReaction", {"messageId": sent["id"], "emoji": "👍"})
        stringly = await a.call(
            "setReaction", {"messageId": sent["id"], "emoji": "👍", "active": "true"}
        )
    assert reply["ok"] is accepted, reply
    if not accepted:
        assert _code(reply) == "VALIDATION_FAILED"
    assert _code(missing_active) == _code(stringly) == "VALIDATION_FAILED"


# --- sync and healing --------------------------------------------------------------------------


async def test_sync_since_returns_each_edited_deleted_or_reacted_message_once_in_change_order(
    svc: RunningService,
) -> None:
    alice, bob = await _pair(svc)
    async with devices(svc, alice, bob) as [a, b]:
        conversation = await open_conversation(svc, a, bob)
        sent = [await _send(a, conversation, f"m{i}") for i in range(4)]
        for _ in sent:
            await b.next("newMessage")
        start = b.sync_tokens[-1]
        await a.ok("editMessage", {"messageId": sent[2]["id"], "content": "m2 fixed"})
        await b.ok("setReaction", {"messageId": sent[0]["id"], "emoji": "👍", "active": True})
        await a.ok("editMessage", {"messageId": sent[2]["id"], "content": "m2 fixed again"})
        await a.ok("deleteMessage", {"messageId": sent[1]["id"]})
        await b.ok("setReaction", {"messageId": sent[3]["id"], "emoji": "👀", "active": True})
        await b.ok("setReaction", {"messageId": sent[3]["id"], "emoji": "👀", "active": False})
        changed, token = await _since_all(b, start)
        again, _ = await _since_all(b, token)
    assert [m["id"] for m in changed] == [sent[i]["id"] for i in (0, 2, 1, 3)]
    state = {m["id"]: m for m in changed}
    assert state[sent[0]["id"]]["reactions"] == {"👍": [bob]}
    assert state[sent[2]["id"]]["content"] == "m2 fixed again"
    assert state[sent[2]["id"]]["editedAt"] is not None
    deleted = state[sent[1]["id"]]
    assert deleted["content"] == "" and deleted["deletedAt"] is not None
    assert state[sent[3]["id"]]["reactions"] == {}
    assert again == []


async def test_every_change_event_carries_a_token_that_resumes_right_after_it(
    svc: RunningService,
) -> None:
    alice, bob = await _pair(svc)
    async with devices(svc, alice, bob) as [a, b]:
        conversation = await open_conversation(svc, a, bob)
        sent = await _send(a, conversation)
        await b.next("newMessage")
        await a.ok("editMessage", {"messageId": sent["id"], "content": "edited"})
        await b.next("messageUpdated")
        after_edit = b.sync_tokens[-1]
        await a.ok("setReaction", {"messageId": sent["id"], "emoji": "👍", "active": True})
        await b.next("messageReaction")
        after_reaction = b.sync_tokens[-1]
        await a.ok("deleteMessage", {"messageId": sent["id"]})
        await b.next("messageDeleted")
        after_delete = b.sync_tokens[-1]
        from_edit, _ = await _since_all(b, after_edit)
        from_reaction, _ = await _since_all(b, after_reaction)
        from_delete, _ = await _since_all(b, after_delete)
    assert len({after_edit, after_reaction, after_delete}) == 3
    assert [m["deletedAt"] is not None for m in from_edit] == [True]
    assert [m["deletedAt"] is not None for m in from_reaction] == [True]
    assert from_delete == []


async def test_a_change_whose_live_event_was_lost_is_healed_from_the_change_log(
    svc: RunningService,
) -> None:
    """The change committed but its fan-out never ran (the replica died between the two; here it
    is written straight to the store): the connected device still gets each event, in order."""
    alice, bob = await _pair(svc)
    async with devices(svc, alice, bob) as [a, b]:
        conversation = await open_conversation(svc, a, bob)
        sent = await _send(a, conversation, "before")
        await b.next("newMessage")
        message_id, conversation_id = uuid.UUID(sent["id"]), uuid.UUID(conversation)
        at = datetime.now(UTC)
        async with svc.service.chat.engine.begin() as conn:
            await change_store.replace_content(conn, message_id=message_id, content="after", at=at)
            await change_store.add_reaction(
                conn, message_id=message_id, emoji="🔥", user_id=alice, at=at
            )
            await store.append_changes(
                conn,
                [
                    LogEntry(conversation_id, message_id, "edited", alice, at),
                    LogEntry(conversation_id, message_id, "reacted", alice, at, "🔥"),
                ],
            )
        updated = await b.next("messageUpdated", timeout=20)
        reaction = await b.next("messageReaction", timeout=20)
        async with svc.service.chat.engine.begin() as conn:
            await change_store.erase(conn, message_id=message_id, at=at)
            await store.append_changes(
                conn, [LogEntry(conversation_id, message_id, "deleted", alice, at)]
            )
        deleted = await b.next("messageDeleted", timeout=20)
    assert updated["content"] == "after" and updated["reactions"] == {"🔥": [alice]}
    assert reaction["emoji"] == "🔥" and reaction["active"] is True and reaction["userId"] == alice
    assert deleted == {
        "conversationId": conversation,
        "messageId": sent["id"],
        "deletedAt": deleted["deletedAt"],
    }


# --- the new fields everywhere -----------------------------------------------------------------


async def test_every_message_carries_edited_at_deleted_at_reactions_and_attachments(
    svc: RunningService,
) -> None:
    alice, bob = await _pair(svc)
    async with devices(svc, alice, bob) as [a, b]:
        conversation = await open_conversation(svc, a, bob)
        start = (await b.ok("syncMessages", {}))["syncToken"]
        ack = await _send(a, conversation)
        live = await b.next("newMessage")
        history = (await b.ok("getMessageHistory", {"conversationId": conversation}))["messages"]
        synced = (await b.ok("syncMessages", {"since": start}))["messages"]
        after = (await b.ok("syncMessages", {}))["messages"]
        listed = (await b.ok("listConversations", {}))["conversations"]
    expected: dict[str, Any] = {
        "editedAt": None,
        "deletedAt": None,
        "reactions": {},
        "attachments": [],
    }
    for message in (ack, live, history[0], synced[0], after[-1], listed[0]["lastMessage"]):
        assert {k: message[k] for k in expected} == expected


async def test_a_history_page_shows_reactions_as_every_other_read_does(
    svc: RunningService,
) -> None:
    """History brings each message's reactions in its own statement on PostgreSQL; they read the
    same as sync's (emoji in the order first given, users in the order they reacted), deleted
    messages and messages nobody reacted to included."""
    alice, bob = await _pair(svc)
    async with devices(svc, alice, bob) as [a, b]:
        conversation = await open_conversation(svc, a, bob)
        start = (await b.ok("syncMessages", {}))["syncToken"]
        sent = [await _send(a, conversation, f"m{i}") for i in range(4)]
        for device, message, emoji in (
            (b, 0, "👍"), (a, 0, "🎉"), (a, 0, "👍"), (b, 0, "🎉"), (b, 1, "😮"),
            (a, 3, "👍"), (b, 3, "👍"),
        ):  # fmt: skip
            await device.ok(
                "setReaction", {"messageId": sent[message]["id"], "emoji": emoji, "active": True}
            )
        await a.ok("deleteMessage", {"messageId": sent[3]["id"]})
        history = (await b.ok("getMessageHistory", {"conversationId": conversation}))["messages"]
        synced, _ = await _since_all(b, start)
    shown = {m["id"]: m["reactions"] for m in history}
    assert shown == {m["id"]: m["reactions"] for m in synced if m["id"] in shown}
    assert list(shown[sent[0]["id"]].items()) == [("👍", [bob, alice]), ("🎉", [alice, bob])]
    assert shown[sent[1]["id"]] == {"😮": [bob]}
    assert shown[sent[2]["id"]] == {} and shown[sent[3]["id"]] == {}
