"""Groups over gRPC: CreateConversation's group form, AddParticipants, LeaveConversation."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio

from messaging.proto.messaging.v1 import messaging_pb2 as pb
from messaging.proto.messaging.v1 import messaging_pb2_grpc as pb_grpc
from tests.support.service import RunningService, devices, unique


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


async def test_create_conversation_makes_a_group_with_kind_title_and_creator(
    svc: RunningService, stub: Any
) -> None:
    alice, bob, carol = unique("alice"), unique("bob"), unique("carol")
    svc.connect_users((alice, bob), (alice, carol))
    request = pb.CreateConversationRequest(
        participant_ids=[carol, bob], title="Ops", client_conversation_id="g1"
    )
    group = await stub.CreateConversation(request, metadata=auth(svc, alice))
    again = await stub.CreateConversation(request, metadata=auth(svc, alice))
    assert group.kind == pb.CONVERSATION_KIND_GROUP
    assert (group.title, group.created_by) == ("Ops", alice)
    assert list(group.participant_ids) == sorted([alice, bob, carol])
    assert again == group


async def test_a_direct_conversation_over_grpc_is_kind_direct_without_title_or_creator(
    svc: RunningService, stub: Any
) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    direct = await stub.CreateConversation(
        pb.CreateConversationRequest(participant_id=bob), metadata=auth(svc, alice)
    )
    assert (direct.kind, direct.title, direct.created_by) == (pb.CONVERSATION_KIND_DIRECT, "", "")


async def test_group_creation_errors_map_to_status_codes(svc: RunningService, stub: Any) -> None:
    alice, bob, stranger = unique("alice"), unique("bob"), unique("stranger")
    svc.connect_users((alice, bob))
    meta = auth(svc, alice)
    create = stub.CreateConversation
    assert (
        await _code(create(pb.CreateConversationRequest(participant_ids=[bob]), metadata=meta))
        == grpc.StatusCode.INVALID_ARGUMENT
    )  # no title
    assert (
        await _code(
            create(
                pb.CreateConversationRequest(participant_id=bob, participant_ids=[bob], title="T"),
                metadata=meta,
            )
        )
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        await _code(
            create(
                pb.CreateConversationRequest(participant_ids=[bob, stranger], title="T"),
                metadata=meta,
            )
        )
        == grpc.StatusCode.PERMISSION_DENIED
    )
    svc.graph.fail_with = grpc.StatusCode.UNAVAILABLE
    try:
        code = await _code(
            create(pb.CreateConversationRequest(participant_ids=[bob], title="T"), metadata=meta)
        )
    finally:
        svc.graph.fail_with = None
    assert code == grpc.StatusCode.UNAVAILABLE


async def test_add_participants_and_leave_over_grpc_reach_sockets(
    svc: RunningService, stub: Any
) -> None:
    alice, bob, carol = unique("alice"), unique("bob"), unique("carol")
    svc.connect_users((alice, bob), (alice, carol))
    group = await stub.CreateConversation(
        pb.CreateConversationRequest(participant_ids=[bob], title="T"), metadata=auth(svc, alice)
    )
    async with devices(svc, bob, carol) as [b, c]:
        added = (
            await stub.AddParticipants(
                pb.AddParticipantsRequest(conversation_id=group.id, user_ids=[carol]),
                metadata=auth(svc, alice),
            )
        ).conversation
        joined = [await d.next("conversationUpdated") for d in (b, c)]
        left = await stub.LeaveConversation(
            pb.LeaveConversationRequest(conversation_id=group.id), metadata=auth(svc, bob)
        )
        told = await c.next("conversationUpdated")
        gone = await b.next("conversationUpdated")
    assert list(added.participant_ids) == sorted([alice, bob, carol])
    assert all(e["change"] == {"type": "joined", "userIds": [carol], "by": alice} for e in joined)
    assert left == pb.LeaveConversationResponse()
    assert told["change"]["type"] == gone["change"]["type"] == "left"
    history = stub.GetMessageHistory(
        pb.GetMessageHistoryRequest(conversation_id=group.id), metadata=auth(svc, bob)
    )
    assert await _code(history) == grpc.StatusCode.NOT_FOUND
    again = stub.LeaveConversation(
        pb.LeaveConversationRequest(conversation_id=group.id), metadata=auth(svc, bob)
    )
    assert await _code(again) == grpc.StatusCode.NOT_FOUND


async def test_add_participants_errors_map_to_status_codes(svc: RunningService, stub: Any) -> None:
    alice, bob, stranger = unique("alice"), unique("bob"), unique("stranger")
    svc.connect_users((alice, bob))
    meta = auth(svc, alice)
    group = await stub.CreateConversation(
        pb.CreateConversationRequest(participant_ids=[bob], title="T"), metadata=meta
    )
    add = stub.AddParticipants
    cases = {
        grpc.StatusCode.INVALID_ARGUMENT: pb.AddParticipantsRequest(
            conversation_id="nope", user_ids=[bob]
        ),
        grpc.StatusCode.NOT_FOUND: pb.AddParticipantsRequest(
            conversation_id=str(uuid.uuid4()), user_ids=[bob]
        ),
        grpc.StatusCode.PERMISSION_DENIED: pb.AddParticipantsRequest(
            conversation_id=group.id, user_ids=[stranger]
        ),
    }
    for code, request in cases.items():
        assert await _code(add(request, metadata=meta)) == code
    empty = pb.AddParticipantsRequest(conversation_id=group.id)
    assert await _code(add(empty, metadata=meta)) == grpc.StatusCode.INVALID_ARGUMENT
    unauthenticated = add(pb.AddParticipantsRequest(conversation_id=group.id, user_ids=[bob]))
    assert await _code(unauthenticated) == grpc.StatusCode.UNAUTHENTICATED


async def test_a_joined_members_history_starts_when_it_joined(
    svc: RunningService, stub: Any
) -> None:
    alice, bob, carol = unique("alice"), unique("bob"), unique("carol")
    svc.connect_users((alice, bob), (alice, carol))
    async with devices(svc, alice) as [a]:
        group = await a.ok("createConversation", {"participantIds": [bob], "title": "T"})
        await a.ok("sendMessage", {"conversationId": group["id"], "content": "old"})
        await a.ok("addParticipants", {"conversationId": group["id"], "userIds": [carol]})
        new = await a.ok("sendMessage", {"conversationId": group["id"], "content": "new"})
    carols = await stub.GetMessageHistory(
        pb.GetMessageHistoryRequest(conversation_id=group["id"]), metadata=auth(svc, carol)
    )
    bobs = await stub.GetMessageHistory(
        pb.GetMessageHistoryRequest(conversation_id=group["id"]), metadata=auth(svc, bob)
    )
    assert [m.id for m in carols.messages] == [new["id"]]
    assert len(bobs.messages) == 2


async def test_list_conversations_shows_groups_with_their_members_and_title(
    svc: RunningService, stub: Any
) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    group = await stub.CreateConversation(
        pb.CreateConversationRequest(participant_ids=[bob], title="Listed"),
        metadata=auth(svc, alice),
    )
    listed = await stub.ListConversations(pb.ListConversationsRequest(), metadata=auth(svc, bob))
    [summary] = [s for s in listed.conversations if s.conversation.id == group.id]
    assert summary.conversation == group
