"""syncMessages: a client that was away catches up with every message, in order, with no gaps."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime, timedelta

from messaging.ids import new_message_id, uuid7_at
from messaging.records import NewMessage
from messaging.storage import messages as message_sql
from tests.support.service import Device, RunningService, devices, open_conversation, unique


async def _sync_all(device: Device, after: str | None = None, limit: int = 100) -> list[dict]:  # type: ignore[type-arg]
    """Walk syncMessages page by page from ``after`` until hasMore is false."""
    collected: list[dict] = []  # type: ignore[type-arg]
    while True:
        payload: dict[str, object] = {"limit": limit}
        if after is not None:
            payload["after"] = after
        page = await device.ok("syncMessages", payload)
        collected.extend(page["messages"])
        if page["messages"]:
            after = page["messages"][-1]["id"]
        if not page["hasMore"]:
            return collected


async def test_a_client_that_was_offline_gets_every_missed_message_in_order(
    svc: RunningService,
) -> None:
    alice, bob, carol = unique("alice"), unique("bob"), unique("carol")
    svc.connect_users((alice, bob), (carol, bob))
    async with devices(svc, alice, carol, bob) as [a, c, b]:
        with_alice = await open_conversation(svc, a, bob)
        with_carol = await open_conversation(svc, c, bob)
        seen = await a.ok("sendMessage", {"conversationId": with_alice, "content": "before"})
        await b.next("newMessage")
        await b.disconnect()
        sent = []
        for i in range(7):
            device, conversation = (a, with_alice) if i % 2 else (c, with_carol)
            reply = await device.ok(
                "sendMessage", {"conversationId": conversation, "content": f"{i}"}
            )
            sent.append(reply["id"])
    async with devices(svc, bob) as [b]:
        missed = await _sync_all(b, after=seen["id"], limit=3)
        everything = await _sync_all(b)
    assert [m["id"] for m in missed] == sent
    assert [m["id"] for m in everything] == [seen["id"], *sent]


async def test_has_more_pages_through_a_backlog_exactly_once(svc: RunningService) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with devices(svc, alice, bob) as [a, b]:
        conversation = await open_conversation(svc, a, bob)
        ids = [
            (await a.ok("sendMessage", {"conversationId": conversation, "content": str(i)}))["id"]
            for i in range(12)
        ]
        first = await b.ok("syncMessages", {"limit": 5})
        assert first["hasMore"] is True and len(first["messages"]) == 5
        walked = await _sync_all(b, limit=5)
        last = await b.ok("syncMessages", {"after": ids[-1]})
    assert [m["id"] for m in walked] == ids
    assert last == {"messages": [], "hasMore": False}


async def test_sync_after_a_message_that_is_not_yours_is_not_found(svc: RunningService) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with devices(svc, alice, unique("eve")) as [a, e]:
        conversation = await open_conversation(svc, a, bob)
        sent = await a.ok("sendMessage", {"conversationId": conversation, "content": "private"})
        theirs = await e.call("syncMessages", {"after": sent["id"]})
        unknown = await e.call("syncMessages", {"after": str(uuid.uuid4())})
        bad = [
            await e.call("syncMessages", p)
            for p in ({"limit": 0}, {"limit": 501}, {"limit": "10"}, {"after": "nope"})
        ]
    assert theirs["error"]["code"] == "NOT_FOUND"
    assert unknown["error"]["code"] == "NOT_FOUND"
    assert {r["error"]["code"] for r in bad} == {"VALIDATION_FAILED"}


async def test_a_message_whose_id_sorts_earlier_but_commits_later_is_not_skipped(
    svc: RunningService,
) -> None:
    """Two sends race: the one created first (smaller UUIDv7) commits second.

    A client that synced right after the first commit holds the later id as its position; its
    next sync must still return the earlier-id message, because positions follow commit order.
    """
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with devices(svc, alice, bob) as [a, b]:
        conversation = uuid.UUID(await open_conversation(svc, a, bob))
        now = datetime.now(UTC)
        slow = NewMessage(
            uuid7_at(int(now.timestamp() * 1000)), conversation, alice, "slow", now, None
        )
        later = now + timedelta(milliseconds=5)
        fast = NewMessage(
            uuid7_at(int(later.timestamp() * 1000)), conversation, alice, "fast", later, None
        )
        assert slow.id < fast.id
        async with svc.service.chat.engine.begin() as conn:
            await message_sql.insert_messages(conn, [fast])
        synced = await b.ok("syncMessages", {})
        assert [m["content"] for m in synced["messages"]] == ["fast"]
        async with svc.service.chat.engine.begin() as conn:
            await message_sql.insert_messages(conn, [slow])
        caught_up = await b.ok("syncMessages", {"after": str(fast.id)})
    assert [m["content"] for m in caught_up["messages"]] == ["slow"]


async def test_a_later_position_is_invisible_until_every_earlier_one_has_committed(
    pg_svc: RunningService,
) -> None:
    """PostgreSQL, two writers: the second waits for the first's commit to get its position.

    (SQLite needs no such test: its single pooled connection runs one writer at a time.)
    """
    svc = pg_svc
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    engine = svc.service.chat.engine
    async with devices(svc, alice, bob) as [a, b]:
        conversation = uuid.UUID(await open_conversation(svc, a, bob))

        def message(content: str) -> NewMessage:
            message_id, created_at = new_message_id()
            return NewMessage(message_id, conversation, alice, content, created_at, None)

        first_tx = await engine.connect()
        transaction = await first_tx.begin()
        await message_sql.insert_messages(first_tx, [message("first")])

        async def second() -> None:
            async with engine.begin() as conn:
                await message_sql.insert_messages(conn, [message("second")])

        racing = asyncio.create_task(second())
        await asyncio.sleep(0.3)
        assert not racing.done(), "the second writer must wait for the first to commit"
        assert (await b.ok("syncMessages", {}))["messages"] == []
        await transaction.commit()
        await first_tx.close()
        await racing
        contents = [m["content"] for m in (await b.ok("syncMessages", {}))["messages"]]
    assert contents == ["first", "second"]


async def test_incremental_sync_during_a_storm_of_concurrent_sends_misses_nothing(
    svc: RunningService,
) -> None:
    """Many senders commit concurrently while a reader keeps syncing from its last position."""
    bob = unique("bob")
    senders = [unique("sender") for _ in range(6)]
    svc.connect_users(*((s, bob) for s in senders))
    async with devices(svc, bob, *senders) as [b, *devs]:
        conversations = [await open_conversation(svc, d, bob) for d in devs]
        acked: list[str] = []
        done = asyncio.Event()

        async def send(device: Device, conversation: str) -> None:
            for i in range(25):
                reply = await device.ok(
                    "sendMessage", {"conversationId": conversation, "content": str(i)}
                )
                acked.append(reply["id"])
                await asyncio.sleep(random.random() / 200)

        received: list[str] = []
        after: str | None = None

        async def read() -> None:
            nonlocal after
            while True:
                finished = done.is_set()
                reply = await b.call(
                    "syncMessages", {"limit": 7} | ({"after": after} if after else {})
                )
                if not reply["ok"]:
                    # A reader this eager meets the per-user sync budget on a slow machine; it
                    # waits as the contract tells every client to, and must still miss nothing.
                    assert reply["error"]["code"] == "RATE_LIMITED", reply
                    await asyncio.sleep(reply["error"]["details"]["retryAfterMs"] / 1000)
                    continue
                page = reply["data"]
                received.extend(m["id"] for m in page["messages"])
                if page["messages"]:
                    after = page["messages"][-1]["id"]
                if finished and not page["hasMore"]:
                    return
                await asyncio.sleep(0.005)

        reader = asyncio.create_task(read())
        await asyncio.gather(*(send(d, c) for d, c in zip(devs, conversations, strict=True)))
        done.set()
        await reader
    assert len(received) == len(set(received)), "a message was synced twice"
    assert set(received) == set(acked), "an acknowledged message was never synced"
