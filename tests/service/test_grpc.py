"""The gRPC API: history with cursors, conversation lists, creation, errors, health, reflection."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from sqlalchemy import text

from messaging.dev_connections import ConnectionGraph
from messaging.ids import new_message_id
from messaging.proto.messaging.v1 import messaging_pb2 as pb
from messaging.proto.messaging.v1 import messaging_pb2_grpc as pb_grpc
from messaging.records import NewMessage
from messaging.storage import messages as message_sql
from tests.support.service import (
    RunningService,
    devices,
    open_conversation,
    running_service,
    service_settings,
    unique,
)


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


async def _seed(svc: RunningService, conversation: str, author: str, n: int) -> list[str]:
    """Store ``n`` messages straight through the store, in batches (fast set-up)."""
    ids: list[str] = []
    for start in range(0, n, 250):
        batch = []
        for i in range(start, min(n, start + 250)):
            message_id, created_at = new_message_id()
            batch.append(
                NewMessage(message_id, uuid.UUID(conversation), author, f"m{i}", created_at, None)
            )
        async with svc.service.chat.engine.begin() as conn:
            await message_sql.insert_messages(conn, batch)
        ids.extend(str(m.id) for m in batch)
    return ids


async def test_walking_a_long_history_returns_each_message_once_newest_first_despite_new_sends(
    svc: RunningService, stub: pb_grpc.MessagingServiceAsyncStub
) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with devices(svc, alice) as [a]:
        conversation = await open_conversation(svc, a, bob)
        old = await _seed(svc, conversation, alice, 1000)
        walked: list[str] = []
        token = ""
        pages = 0
        sent_meanwhile: list[str] = []
        sending = asyncio.create_task(_keep_sending(a, conversation, sent_meanwhile))
        try:
            while True:
                reply = await stub.GetMessageHistory(
                    pb.GetMessageHistoryRequest(
                        conversation_id=conversation, page_size=37, page_token=token
                    ),
                    metadata=auth(svc, bob),
                )
                walked.extend(m.id for m in reply.messages)
                pages += 1
                token = reply.next_page_token
                if not token:
                    break
                await asyncio.sleep(0.01)  # let concurrent sends land between pages
        finally:
            sending.cancel()
        new_during_walk = walked[: len(walked) - len(old)]
    assert len(sent_meanwhile) > 10, "messages must be arriving while the history is walked"
    assert len(walked) == len(set(walked)), "a message appeared on two pages"
    assert walked[-len(old) :] == list(reversed(old)), "every old message, newest first"
    assert len(new_during_walk) <= 37  # only the first page can hold messages sent meanwhile
    assert pages >= 1000 // 37


async def _keep_sending(device: Any, conversation: str, sent: list[str]) -> None:
    while True:
        reply = await device.ok(
            "sendMessage", {"conversationId": conversation, "content": f"new {len(sent)}"}
        )
        sent.append(reply["id"])


async def test_history_pages_stay_correct_when_messages_share_a_timestamp(
    svc: RunningService, stub: pb_grpc.MessagingServiceAsyncStub
) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with devices(svc, alice) as [a]:
        conversation = await open_conversation(svc, a, bob)
    _, instant = new_message_id()
    batch = [
        NewMessage(new_message_id()[0], uuid.UUID(conversation), alice, f"t{i}", instant, None)
        for i in range(10)
    ]
    async with svc.service.chat.engine.begin() as conn:
        await message_sql.insert_messages(conn, batch)
    walked: list[str] = []
    token = ""
    while True:
        reply = await stub.GetMessageHistory(
            pb.GetMessageHistoryRequest(
                conversation_id=conversation, page_size=3, page_token=token
            ),
            metadata=auth(svc, alice),
        )
        walked.extend(m.id for m in reply.messages)
        if not (token := reply.next_page_token):
            break
    assert walked == sorted((str(m.id) for m in batch), reverse=True)


async def test_history_messages_carry_every_field(
    svc: RunningService, stub: pb_grpc.MessagingServiceAsyncStub
) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with devices(svc, alice, bob) as [a, b]:
        conversation = await open_conversation(svc, a, bob)
        sent = await a.ok(
            "sendMessage", {"conversationId": conversation, "content": "hi", "clientMessageId": "k"}
        )
        await b.ok("markDelivered", {"messageIds": [sent["id"]]})
    reply = await stub.GetMessageHistory(
        pb.GetMessageHistoryRequest(conversation_id=conversation), metadata=auth(svc, bob)
    )
    [message] = reply.messages
    assert message.id == sent["id"]
    assert message.conversation_id == conversation
    assert message.author_id == alice
    assert message.content == "hi"
    assert message.status == pb.MESSAGE_STATUS_DELIVERED
    assert message.client_message_id == "k"
    assert message.created_at.ToDatetime().isoformat()[:23] == sent["createdAt"][:23]
    assert reply.next_page_token == ""


async def test_list_conversations_orders_by_activity_with_last_message_and_unread_count(
    svc: RunningService, stub: pb_grpc.MessagingServiceAsyncStub
) -> None:
    me = unique("me")
    friends = [unique("friend") for _ in range(5)]
    svc.connect_users(*((me, f) for f in friends))
    async with devices(svc, me, *friends) as [mine, *theirs]:
        conversations = [await open_conversation(svc, mine, f) for f in friends]
        # Activity order, most recent last: friend 3 writes twice, then I write to friend 1.
        await theirs[3].ok("sendMessage", {"conversationId": conversations[3], "content": "a"})
        await theirs[3].ok("sendMessage", {"conversationId": conversations[3], "content": "b"})
        await mine.ok("sendMessage", {"conversationId": conversations[1], "content": "c"})
        summaries: list[pb.ConversationSummary] = []
        token = ""
        while True:
            reply = await stub.ListConversations(
                pb.ListConversationsRequest(page_size=2, page_token=token), metadata=auth(svc, me)
            )
            summaries.extend(reply.conversations)
            if not (token := reply.next_page_token):
                break
    order = [s.conversation.id for s in summaries]
    assert order[:2] == [conversations[1], conversations[3]]
    assert set(order[2:]) == {conversations[i] for i in (0, 2, 4)}
    assert order[2:] == [conversations[i] for i in (4, 2, 0)]  # newest created first
    by_id = {s.conversation.id: s for s in summaries}
    assert by_id[conversations[3]].unread_count == 2
    assert by_id[conversations[3]].last_message.content == "b"
    assert by_id[conversations[1]].unread_count == 0  # my own message is not unread for me
    assert by_id[conversations[1]].last_message.content == "c"
    assert not by_id[conversations[0]].HasField("last_message")


async def test_create_conversation_follows_the_socket_rules(
    svc: RunningService, stub: pb_grpc.MessagingServiceAsyncStub
) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    created = await stub.CreateConversation(
        pb.CreateConversationRequest(participant_id=bob), metadata=auth(svc, alice)
    )
    async with devices(svc, bob) as [b]:
        from_socket = await open_conversation(svc, b, alice)
    assert created.id == from_socket
    assert sorted(created.participant_ids) == sorted([alice, bob])
    stranger = pb.CreateConversationRequest(participant_id=unique("stranger"))
    assert await _code(stub.CreateConversation(stranger, metadata=auth(svc, alice))) == (
        grpc.StatusCode.PERMISSION_DENIED
    )


async def test_every_error_maps_to_its_status_code(
    svc: RunningService, stub: pb_grpc.MessagingServiceAsyncStub
) -> None:
    alice, bob, eve = unique("alice"), unique("bob"), unique("eve")
    svc.connect_users((alice, bob))
    async with devices(svc, alice) as [a]:
        conversation = await open_conversation(svc, a, bob)
        await _seed(svc, conversation, alice, 5)
    first = await stub.GetMessageHistory(
        pb.GetMessageHistoryRequest(conversation_id=conversation, page_size=2),
        metadata=auth(svc, alice),
    )
    tampered = first.next_page_token[:-2] + ("AA" if first.next_page_token[-2:] != "AA" else "BB")

    def history(**fields: Any) -> pb.GetMessageHistoryRequest:
        return pb.GetMessageHistoryRequest(**({"conversation_id": conversation} | fields))

    cases: list[tuple[Any, grpc.StatusCode]] = [
        (stub.GetMessageHistory(history()), grpc.StatusCode.UNAUTHENTICATED),
        (
            stub.GetMessageHistory(history(), metadata=[("authorization", "Bearer junk")]),
            grpc.StatusCode.UNAUTHENTICATED,
        ),
        (
            stub.GetMessageHistory(history(), metadata=[("authorization", svc.token(alice))]),
            grpc.StatusCode.UNAUTHENTICATED,  # no "Bearer " scheme
        ),
        (
            stub.GetMessageHistory(history(), metadata=auth(svc, eve)),
            grpc.StatusCode.PERMISSION_DENIED,
        ),
        (
            stub.GetMessageHistory(
                history(conversation_id=str(uuid.uuid4())), metadata=auth(svc, alice)
            ),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            stub.GetMessageHistory(history(conversation_id="nope"), metadata=auth(svc, alice)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            stub.GetMessageHistory(history(page_size=101), metadata=auth(svc, alice)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            stub.GetMessageHistory(history(page_size=-1), metadata=auth(svc, alice)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            stub.GetMessageHistory(history(page_token=tampered), metadata=auth(svc, alice)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            stub.GetMessageHistory(history(page_token="garbage!"), metadata=auth(svc, alice)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            stub.ListConversations(
                pb.ListConversationsRequest(page_token=first.next_page_token),
                metadata=auth(svc, alice),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,  # a history token is not a conversation-list token
        ),
        (
            stub.CreateConversation(
                pb.CreateConversationRequest(participant_id=""), metadata=auth(svc, alice)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ]
    for call, expected in cases:
        assert await _code(call) == expected
    svc.graph.fail_with = grpc.StatusCode.UNAVAILABLE
    try:
        down = stub.CreateConversation(
            pb.CreateConversationRequest(participant_id=bob), metadata=auth(svc, alice)
        )
        assert await _code(down) == grpc.StatusCode.UNAVAILABLE
    finally:
        svc.graph.fail_with = None


async def test_a_token_for_one_conversation_is_refused_for_another(
    svc: RunningService, stub: pb_grpc.MessagingServiceAsyncStub
) -> None:
    alice, bob, carol = unique("alice"), unique("bob"), unique("carol")
    svc.connect_users((alice, bob), (alice, carol))
    async with devices(svc, alice) as [a]:
        with_bob = await open_conversation(svc, a, bob)
        with_carol = await open_conversation(svc, a, carol)
    await _seed(svc, with_bob, alice, 3)
    await _seed(svc, with_carol, alice, 3)
    page = await stub.GetMessageHistory(
        pb.GetMessageHistoryRequest(conversation_id=with_bob, page_size=1),
        metadata=auth(svc, alice),
    )
    replay = stub.GetMessageHistory(
        pb.GetMessageHistoryRequest(conversation_id=with_carol, page_token=page.next_page_token),
        metadata=auth(svc, alice),
    )
    assert await _code(replay) == grpc.StatusCode.INVALID_ARGUMENT


async def test_health_is_serving_and_follows_readiness(svc: RunningService) -> None:
    async with grpc.aio.insecure_channel(svc.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "messaging.v1.MessagingService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        svc.service.readiness.draining = True
        try:
            await svc.service.check_readiness()
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        finally:
            svc.service.readiness.draining = False
            await svc.service.check_readiness()
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_messaging_service_and_describes_it(
    svc: RunningService,
) -> None:
    def ask() -> tuple[set[str], set[str]]:
        # grpc's reflection client is synchronous: run it off the loop that serves the call.
        with grpc.insecure_channel(svc.grpc_target) as channel:
            database = ProtoReflectionDescriptorDatabase(channel)
            services = set(database.get_services())
            described = database.FindFileContainingSymbol("messaging.v1.MessagingService")
            return services, {m.name for m in described.service[0].method}

    services, methods = await asyncio.to_thread(ask)
    assert {"messaging.v1.MessagingService", "grpc.health.v1.Health"} <= services
    assert methods >= {
        "GetMessageHistory",
        "ListConversations",
        "CreateConversation",
        "SendMessage",
        "EditMessage",
        "DeleteMessage",
        "SetReaction",
        "MarkRead",
        "AddParticipants",
        "LeaveConversation",
    }


async def test_history_is_served_by_the_conversation_created_at_index(
    pg_svc: RunningService,
) -> None:
    """PostgreSQL's plan for a deep history page is a range scan of the history index."""
    alice, bob = unique("alice"), unique("bob")
    pg_svc.connect_users((alice, bob))
    async with devices(pg_svc, alice) as [a]:
        conversation = await open_conversation(pg_svc, a, bob)
    ids = await _seed(pg_svc, conversation, alice, 2000)
    async with pg_svc.service.chat.engine.connect() as conn:
        await conn.execute(text("ANALYZE messages"))
        middle = await message_sql.get_message(conn, uuid.UUID(ids[1000]))
        assert middle is not None
        query = (
            "EXPLAIN (FORMAT TEXT) SELECT * FROM messages WHERE conversation_id = :c "
            "AND (created_at, id) < (:t, :i) ORDER BY created_at DESC, id DESC LIMIT 51"
        )
        plan = "\n".join(
            row[0]
            for row in await conn.execute(
                text(query), {"c": uuid.UUID(conversation), "t": middle.created_at, "i": middle.id}
            )
        )
    assert "Index Scan Backward using ix_messages_conversation_id_created_at" in plan, plan
    assert "Sort" not in plan, plan


async def test_stopping_the_server_lets_an_in_flight_call_finish(sqlite_database: str) -> None:
    """Shutdown is graceful: a call already running completes before the server goes away."""
    graph = ConnectionGraph()
    graph.connect("alice", "bob")
    settings = service_settings(sqlite_database, connections_timeout_seconds=5.0)
    async with running_service(settings, graph, "sqlite") as svc:
        graph.delay_seconds = 1.0  # the call will be waiting on the Connections service
        async with grpc.aio.insecure_channel(svc.grpc_target) as channel:
            stub = pb_grpc.MessagingServiceStub(channel)
            call = asyncio.ensure_future(
                stub.CreateConversation(
                    pb.CreateConversationRequest(participant_id="bob"),
                    metadata=auth(svc, "alice"),
                )
            )
            await asyncio.sleep(0.3)
            assert svc.service.grpc is not None
            await svc.service.grpc.stop(grace_seconds=5.0)
            conversation = await call
    assert sorted(conversation.participant_ids) == ["alice", "bob"]
