"""Text a database cannot store, JSON cannot carry or a reader cannot see is refused up front.

On PostgreSQL a NUL character in a message used to reach the INSERT, which the database refused,
and group commit failed every other sender's message in the same batch with it; a lone surrogate
got no answer at all. These run against the real service on real PostgreSQL.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from messaging.proto.messaging.v1 import messaging_pb2 as pb
from messaging.proto.messaging.v1 import messaging_pb2_grpc as pb_grpc
from tests.support.service import RunningService, devices, open_conversation, unique

HOSTILE_CONTENT = {
    "nul": "hello\x00world",
    "only nul": "\x00",
    "lone high surrogate": "hi \ud800 there",
    "lone low surrogate": "\udfff",
    "other control character": "bell\x07",
    "zero-width spaces only": "\u200b\u200b\u200b",
    "joiners and marks only": "\u200d\u2060\ufeff\u200e",
    "hangul filler only": "\u3164\u3164",
    "braille blank and spaces": "\u2800 \u00a0\u3000",
}


async def _pair(svc: RunningService) -> tuple[str, str, str]:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with devices(svc, alice) as [a]:
        return alice, bob, await open_conversation(svc, a, bob)


def _refused(reply: Any) -> str:
    assert reply["ok"] is False, reply
    return str(reply["error"]["code"])


@pytest.mark.parametrize("kind", list(HOSTILE_CONTENT))
async def test_content_the_database_or_a_reader_cannot_take_is_validation_failed(
    pg_svc: RunningService, kind: str
) -> None:
    alice, _, conversation = await _pair(pg_svc)
    async with devices(pg_svc, alice) as [a]:
        reply = await a.call(
            "sendMessage", {"conversationId": conversation, "content": HOSTILE_CONTENT[kind]}
        )
        assert _refused(reply) == "VALIDATION_FAILED"
        assert reply["error"]["details"][0]["field"] == "content"
        # The socket is still fine, and text that merely contains such characters is kept.
        kept = await a.ok(
            "sendMessage", {"conversationId": conversation, "content": "a\u200bb\n\tc \u3164"}
        )
        assert kept["content"] == "a\u200bb\n\tc \u3164"


@pytest.mark.parametrize(
    ("event", "payload"),
    [
        ("sendMessage", {"content": "ok", "clientMessageId": "key\x00"}),
        ("sendMessage", {"content": "ok", "clientMessageId": "\ud800"}),
        ("sendMessage", {"content": "ok", "clientMessageId": "\u200b"}),
        ("sendMessage", {"content": "ok", "clientMessageId": "line\nbreak"}),
        ("createConversation", {"participantId": "bob\x00"}),
        ("createConversation", {"participantId": "\udc00bob"}),
        ("createConversation", {"participantId": "\u200b\u200c"}),
        ("getPresence", {"userIds": ["fine", "bad\x00"]}),
        ("getPresence", {"userIds": ["\ud83d"]}),
    ],
)
async def test_every_string_field_refuses_nul_surrogates_and_invisible_text(
    pg_svc: RunningService, event: str, payload: dict[str, Any]
) -> None:
    alice, _, conversation = await _pair(pg_svc)
    if event == "sendMessage":
        payload = {"conversationId": conversation, **payload}
    async with devices(pg_svc, alice) as [a]:
        assert _refused(await a.call(event, payload)) == "VALIDATION_FAILED"
        assert (await a.call("getPresence", {"userIds": ["x"]}))["ok"] is True


async def test_an_unknown_field_named_with_a_lone_surrogate_is_answered(
    pg_svc: RunningService,
) -> None:
    """The answer quotes the field's name: encoding it must not lose the ack."""
    alice, _, conversation = await _pair(pg_svc)
    async with devices(pg_svc, alice) as [a]:
        reply = await a.call(
            "sendMessage", {"conversationId": conversation, "content": "x", "\ud800": 1}
        )
        assert _refused(reply) == "VALIDATION_FAILED"


async def test_hostile_sends_in_flight_do_not_fail_bystanders_sends(
    pg_svc: RunningService,
) -> None:
    """Eight NUL sends racing a hundred bystander sends on one replica: every bystander's send is
    committed, every hostile one is refused as invalid."""
    attacker, _, hostile_conversation = await _pair(pg_svc)
    bystanders = [await _pair(pg_svc) for _ in range(20)]
    async with devices(pg_svc, attacker, *(user for user, _, _ in bystanders)) as [bad, *good]:

        async def hostile(i: int) -> Any:
            return await bad.call(
                "sendMessage", {"conversationId": hostile_conversation, "content": f"x\x00{i}"}
            )

        async def bystander(i: int) -> Any:
            device, (_, _, conversation) = good[i % len(good)], bystanders[i % len(good)]
            return await device.call(
                "sendMessage",
                {"conversationId": conversation, "content": f"m{i}", "clientMessageId": f"k{i}"},
                timeout=15,
            )

        replies = await asyncio.gather(
            *(hostile(i) for i in range(8)), *(bystander(i) for i in range(100))
        )
    assert [_refused(r) for r in replies[:8]] == ["VALIDATION_FAILED"] * 8
    failed = [r for r in replies[8:] if not r["ok"]]
    assert failed == []


async def test_grpc_create_conversation_refuses_a_participant_id_with_nul(
    pg_svc: RunningService,
) -> None:
    """The same rules hold on gRPC: a NUL would otherwise reach the INSERT."""
    alice, bob = unique("alice"), unique("bob")
    pg_svc.connect_users((alice, f"{bob}\x00"))
    async with grpc.aio.insecure_channel(pg_svc.grpc_target) as channel:
        stub = pb_grpc.MessagingServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CreateConversation(
                pb.CreateConversationRequest(participant_id=f"{bob}\x00"),
                metadata=(("authorization", f"Bearer {pg_svc.token(alice)}"),),
            )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
