"""Blocking: blockUser / unblockUser / listBlocked, and what a block forbids while it holds.

While A blocks B neither can open a conversation with the other or send into their direct
conversation (nothing stored), typing goes nowhere between them and presence leaves them out
both ways; B is told nothing a non-connection is not told.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import Any

import grpc
import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection

from messaging.blocking import Blocks
from messaging.dev_connections import ConnectionGraph
from messaging.errors import Unavailable
from messaging.proto.messaging.v1 import messaging_pb2 as pb
from messaging.proto.messaging.v1 import messaging_pb2_grpc as pb_grpc
from messaging.transactions import Database
from tests.support.servers import free_port
from tests.support.service import (
    Device,
    RunningService,
    devices,
    open_conversation,
    running_service,
    service_settings,
    unique,
)


def send(conversation: str, content: str = "hi") -> dict[str, Any]:
    return {"conversationId": conversation, "content": content}


@contextmanager
def statements(svc: RunningService) -> Iterator[list[str]]:
    """The SQL statements the service runs inside the block."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    engine = svc.service.chat.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


async def history(device: Device, conversation: str) -> list[str]:
    synced = await device.ok("syncMessages", {})
    return [m["content"] for m in synced["messages"] if m["conversationId"] == conversation]


# --- the events ----------------------------------------------------------------------------------


async def test_blocking_and_unblocking_are_idempotent_and_listed_newest_first(
    svc: RunningService,
) -> None:
    alice, bob, carol = unique("alice"), unique("bob"), unique("carol")
    async with devices(svc, alice, alice) as [a, other_device]:
        assert await a.ok("listBlocked", {}) == {"userIds": []}
        assert await a.ok("blockUser", {"userId": bob}) == {}
        assert await a.ok("blockUser", {"userId": bob}) == {}
        assert await a.ok("blockUser", {"userId": carol}) == {}
        both = await other_device.ok("listBlocked", {})
        assert await a.ok("unblockUser", {"userId": bob}) == {}
        assert await a.ok("unblockUser", {"userId": bob}) == {}
        after = await a.ok("listBlocked", {})
    assert both == {"userIds": [carol, bob]}
    assert after == {"userIds": [carol]}


async def test_list_blocked_shows_whom_i_block_never_who_blocks_me(svc: RunningService) -> None:
    alice, bob = unique("alice"), unique("bob")
    async with devices(svc, alice, bob) as [a, b]:
        await a.ok("blockUser", {"userId": bob})
        assert await b.ok("listBlocked", {}) == {"userIds": []}
        assert await a.ok("listBlocked", {}) == {"userIds": [bob]}


async def test_blocking_yourself_is_a_validation_error(svc: RunningService) -> None:
    alice = unique("alice")
    async with devices(svc, alice) as [a]:
        block = await a.call("blockUser", {"userId": alice})
        unblock = await a.call("unblockUser", {"userId": alice})
        listed = await a.ok("listBlocked", {})
    assert block["error"]["code"] == "VALIDATION_FAILED"
    assert unblock["error"]["code"] == "VALIDATION_FAILED"
    assert listed == {"userIds": []}


async def test_bad_block_payloads_are_validation_errors(svc: RunningService) -> None:
    async with devices(svc, unique()) as [d]:
        payloads: list[Any] = [
            {},
            {"userId": ""},
            {"userId": "   "},
            {"userId": "x" * 129},
            {"userId": 7},
            {"userId": "bad\x00id"},
            {"userId": "bob", "extra": True},
            ["bob"],
        ]
        for event_name in ("blockUser", "unblockUser"):
            for payload in payloads:
                reply = await d.call(event_name, payload)
                assert reply["error"]["code"] == "VALIDATION_FAILED", (event_name, payload)
        listed = await d.call("listBlocked", {"userId": "bob"})
        assert listed["error"]["code"] == "VALIDATION_FAILED"
        assert await d.ok("listBlocked", {}) == {"userIds": []}


async def test_a_user_blocks_at_most_the_configured_number_of_users(
    database_url: str, backend: str
) -> None:
    settings = service_settings(database_url, max_blocked_per_user=2)
    async with running_service(settings, ConnectionGraph(), backend) as svc:
        alice, bob, carol, dave = unique("alice"), unique("bob"), unique("carol"), unique("dave")
        async with devices(svc, alice) as [a]:
            await a.ok("blockUser", {"userId": bob})
            await a.ok("blockUser", {"userId": carol})
            refused = await a.call("blockUser", {"userId": dave})
            again = await a.call("blockUser", {"userId": carol})  # already blocked: still fine
            await a.ok("unblockUser", {"userId": bob})
            room = await a.call("blockUser", {"userId": dave})
            listed = await a.ok("listBlocked", {})
    assert refused["ok"] is False
    assert refused["error"]["code"] == "VALIDATION_FAILED"
    assert refused["error"]["details"] == {"maxBlocked": 2}
    assert again == {"ok": True, "data": {}}
    assert room == {"ok": True, "data": {}}
    assert sorted(listed["userIds"]) == sorted([carol, dave])


def test_the_blocking_settings_refuse_nonsense() -> None:
    nonsense: list[tuple[str, object]] = [
        ("max_blocked_per_user", 0),
        ("max_blocked_per_user", -1),
        ("max_blocked_per_user", 10**9),
        ("blocks_cache_ttl_seconds", -1),
        ("blocks_cache_size", -5),
        ("blocks_invalidation_timeout_seconds", 0),
        ("blocks_invalidation_timeout_seconds", 3600),
    ]
    for name, value in nonsense:
        with pytest.raises(ValueError):
            service_settings("sqlite+aiosqlite://", **{name: value})


# --- what a block forbids ------------------------------------------------------------------------


async def test_a_blocked_user_cannot_open_a_conversation_with_the_blocker(
    svc: RunningService,
) -> None:
    alice, bob, stranger = unique("alice"), unique("bob"), unique("stranger")
    svc.connect_users((alice, bob))
    async with devices(svc, alice, bob) as [a, b]:
        await a.ok("blockUser", {"userId": bob})
        refused = await b.call("createConversation", {"participantId": alice})
        not_a_connection = await b.call("createConversation", {"participantId": stranger})
        mine = await a.call("createConversation", {"participantId": bob})
        await a.ok("unblockUser", {"userId": bob})
        opened = await b.ok("createConversation", {"participantId": alice})
    assert refused["error"]["code"] == "FORBIDDEN"
    # Word for word what a user who is not a connection hears: the block is not revealed.
    assert refused == not_a_connection
    assert mine["error"]["code"] == "FORBIDDEN"
    assert "unblock" in mine["error"]["message"]
    assert set(opened["participantIds"]) == {alice, bob}


async def test_a_blocked_user_cannot_send_into_the_direct_conversation_and_nothing_is_stored(
    svc: RunningService,
) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with devices(svc, alice, bob) as [a, b]:
        conversation = await open_conversation(svc, a, bob)
        # The pair's answer is cached now: the block below must hold at once all the same.
        await b.ok("sendMessage", send(conversation, "before"))
        assert (await a.next("newMessage"))["content"] == "before"
        await a.ok("blockUser", {"userId": bob})
        refused = await b.call(
            "sendMessage", {**send(conversation, "after"), "clientMessageId": "c-1"}
        )
        await a.nothing("newMessage")
        stored = await history(a, conversation)
        stored_for_bob = await history(b, conversation)
    assert refused["ok"] is False
    assert refused["error"]["code"] == "FORBIDDEN"
    assert stored == stored_for_bob == ["before"]


async def test_a_blocked_users_refused_send_says_no_more_than_a_non_connections(
    svc: RunningService,
) -> None:
    alice, bob, carol = unique("alice"), unique("bob"), unique("carol")
    svc.connect_users((alice, bob), (carol, bob))
    async with devices(svc, alice, bob, carol) as [a, b, _]:
        blocked = await open_conversation(svc, b, alice)
        unconnected = await open_conversation(svc, b, carol)
        await a.ok("blockUser", {"userId": bob})
        svc.graph.disconnect(carol, bob)
        by_block = await b.call("sendMessage", send(blocked))
        by_graph = await b.call("sendMessage", send(unconnected))
    assert by_block["error"]["code"] == "FORBIDDEN"
    assert by_block == by_graph


async def test_the_blocker_cannot_send_to_the_user_it_blocks_until_it_unblocks(
    svc: RunningService,
) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with devices(svc, alice, bob) as [a, b]:
        conversation = await open_conversation(svc, a, bob)
        await a.ok("blockUser", {"userId": bob})
        refused = await a.call("sendMessage", send(conversation, "while blocking"))
        await b.nothing("newMessage")
        await a.ok("unblockUser", {"userId": bob})
        sent = await a.ok("sendMessage", send(conversation, "after unblocking"))
        received = await b.next("newMessage")
        replied = await b.ok("sendMessage", send(conversation, "reply"))
    assert refused["error"]["code"] == "FORBIDDEN"
    assert "unblock" in refused["error"]["message"]
    assert received == sent
    assert replied["content"] == "reply"


async def test_typing_is_not_delivered_between_a_blocked_pair_either_way(
    svc: RunningService,
) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with devices(svc, alice, bob, bob) as [a, b, b2]:
        conversation = await open_conversation(svc, a, bob)
        await b.ok("typing", {"conversationId": conversation, "isTyping": True})
        assert (await a.next("typing"))["userId"] == bob
        assert (await b2.next("typing"))["userId"] == bob
        await a.ok("blockUser", {"userId": bob})
        from_blocked = await b.call("typing", {"conversationId": conversation, "isTyping": True})
        from_blocker = await a.call("typing", {"conversationId": conversation, "isTyping": True})
        await a.nothing("typing")
        await b.nothing("typing")
        # The typist's own other devices still hear it (they are the same person).
        assert (await b2.next("typing"))["userId"] == bob
    assert from_blocked == {"ok": True, "data": {}}  # the same ack as ever: nothing is told
    assert from_blocker == {"ok": True, "data": {}}


async def test_presence_between_a_blocked_pair_is_left_out_both_ways(svc: RunningService) -> None:
    alice, bob, carol = unique("alice"), unique("bob"), unique("carol")
    svc.connect_users((alice, bob), (bob, carol))
    async with devices(svc, alice, bob, carol) as [a, b, c]:
        await open_conversation(svc, a, bob)
        await open_conversation(svc, b, carol)
        before = await b.ok("getPresence", {"userIds": [alice, carol]})
        await a.ok("blockUser", {"userId": bob})
        blocked_asks = await b.ok("getPresence", {"userIds": [alice, carol]})
        blocker_asks = await a.ok("getPresence", {"userIds": [bob]})
        stranger = await c.ok("getPresence", {"userIds": [alice]})
        await a.ok("unblockUser", {"userId": bob})
        after = await b.ok("getPresence", {"userIds": [alice]})
    assert set(before["presence"]) == {alice, carol}
    assert set(blocked_asks["presence"]) == {carol}
    assert blocker_asks == {"presence": {}}
    assert blocker_asks == stranger  # as if unknown: what a stranger gets
    assert after["presence"][alice]["online"] is True


async def test_a_block_between_two_users_leaves_their_other_conversations_alone(
    svc: RunningService,
) -> None:
    alice, bob, carol = unique("alice"), unique("bob"), unique("carol")
    svc.connect_users((alice, bob), (bob, carol))
    async with devices(svc, alice, bob, carol) as [a, b, c]:
        await open_conversation(svc, a, bob)
        with_carol = await open_conversation(svc, b, carol)
        await a.ok("blockUser", {"userId": bob})
        sent = await b.ok("sendMessage", send(with_carol, "still fine"))
        assert await c.next("newMessage") == sent
        await b.ok("typing", {"conversationId": with_carol, "isTyping": True})
        assert (await c.next("typing"))["userId"] == bob


async def test_blocks_hold_on_grpc_create_conversation(svc: RunningService) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with devices(svc, alice) as [a]:
        await a.ok("blockUser", {"userId": bob})
        async with grpc.aio.insecure_channel(svc.grpc_target) as channel:
            stub = pb_grpc.MessagingServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.CreateConversation(
                    pb.CreateConversationRequest(participant_id=alice),
                    metadata=[("authorization", f"Bearer {svc.token(bob)}")],
                )
            await a.ok("unblockUser", {"userId": bob})
            created = await stub.CreateConversation(
                pb.CreateConversationRequest(participant_id=alice),
                metadata=[("authorization", f"Bearer {svc.token(bob)}")],
            )
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert raised.value.details() == "you can only message your first-degree connections"
    assert sorted(created.participant_ids) == sorted([alice, bob])


# --- the check the groups rules call -------------------------------------------------------------


async def test_either_blocks_answers_for_a_set_of_users_in_one_query(svc: RunningService) -> None:
    alice, bob, carol, dave, erin = (unique(n) for n in ("alice", "bob", "carol", "dave", "erin"))
    async with devices(svc, alice, dave) as [a, d]:
        await a.ok("blockUser", {"userId": bob})
        await d.ok("blockUser", {"userId": alice})
    blocks = svc.service.chat.blocks
    with statements(svc) as cold:
        found = await blocks.either_blocks(alice, [bob, carol, dave, erin, alice])
    with statements(svc) as warm:
        again = await blocks.either_blocks(alice, [bob, carol, dave, erin])
    assert found == again == {bob, dave}
    assert len(cold) == 1
    assert warm == []  # cached, like the Connections check


async def test_a_block_is_checked_against_the_cache_after_the_first_send(
    svc: RunningService,
) -> None:
    """The per-send check costs no query once the pair's answer is cached."""
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with devices(svc, alice, bob) as [a, b]:
        conversation = await open_conversation(svc, a, bob)
        await b.ok("sendMessage", send(conversation, "first"))
        with statements(svc) as seen:
            await b.ok("sendMessage", send(conversation, "second"))
    assert not any("blocks" in s for s in seen), seen


async def test_an_unknown_message_id_in_a_blocked_conversation_is_still_not_found(
    svc: RunningService,
) -> None:
    """A block does not change what a missing conversation answers."""
    alice, bob = unique("alice"), unique("bob")
    async with devices(svc, alice, bob) as [a, b]:
        await a.ok("blockUser", {"userId": bob})
        reply = await b.call("sendMessage", send(str(uuid.uuid4())))
    assert reply["error"]["code"] == "NOT_FOUND"


async def test_an_answer_read_before_a_block_is_never_cached_after_it(svc: RunningService) -> None:
    """A check that read "no block" while a block was being committed must not cache that
    answer once the block's invalidation has passed: the next check reads again."""
    alice, bob = unique("alice"), unique("bob")
    chat = svc.service.chat
    race = {"armed": True}

    @contextlib.asynccontextmanager
    async def connection_then_a_block() -> AsyncIterator[AsyncConnection]:
        async with chat.database.connection() as conn:
            yield conn
        if race.pop("armed", False):
            # The check has read "no block"; before it can cache that, the block commits.
            await blocks.block(alice, bob)

    class ConnectionThenABlock(Database):
        def connection(self) -> AbstractAsyncContextManager[AsyncConnection]:
            return connection_then_a_block()

    blocks = Blocks(
        database=ConnectionThenABlock(chat.engine),
        delivery=svc.service.delivery,
        replica_id=unique("replica"),
        cache_ttl_seconds=3600,
        cache_size=100,
        max_blocked=10,
        invalidation_timeout_seconds=1,
    )
    first = await blocks.relation(bob, alice)
    second = await blocks.relation(bob, alice)
    assert not first.any  # read before the block committed
    assert second.blocked_by_other and not second.blocks_other


async def test_with_the_database_unreachable_blocking_and_reports_are_unavailable() -> None:
    """Every failure is typed: a block that cannot be read or written is UNAVAILABLE (never
    allowed on a guess: the check fails closed, like the Connections check)."""
    nowhere = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/messaging"
    async with running_service(service_settings(nowhere), ConnectionGraph(), "postgres") as svc:
        alice, bob = unique("alice"), unique("bob")
        async with devices(svc, alice) as [a]:
            replies = [
                await a.call("blockUser", {"userId": bob}),
                await a.call("unblockUser", {"userId": bob}),
                await a.call("listBlocked", {}),
                await a.call("reportMessage", {"messageId": str(uuid.uuid4()), "reason": "spam"}),
            ]
            assert a.client.connected
        with pytest.raises(Unavailable):
            await svc.service.chat.blocks.either_blocks(alice, [bob])
    assert [r["error"]["code"] for r in replies] == ["UNAVAILABLE"] * 4
