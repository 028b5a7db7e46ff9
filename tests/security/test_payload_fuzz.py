"""Fuzzing every client event's payload: whatever a client sends, it gets a contract answer.

Hypothesis generates payloads for each event: the right keys with hostile values (NUL, lone
surrogates, invisible text, oversized strings, wrong types, deep nesting), arbitrary JSON, and
the wrong number of arguments. Against the real service on PostgreSQL, every answer must be the
ack envelope with a contract code, the socket must stay connected, and a bystander's sends must
still succeed afterwards.

Hypothesis drives a synchronous Socket.IO client in a worker thread, so the service (in this
test's event loop) keeps serving while the examples run.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
import socketio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from messaging.dev_connections import ConnectionGraph
from tests.support.service import (
    RunningService,
    devices,
    open_conversation,
    running_service,
    service_settings,
    unique,
)

CODES = {
    "VALIDATION_FAILED",
    "UNAUTHORIZED",
    "FORBIDDEN",
    "NOT_FOUND",
    "RATE_LIMITED",
    "UNAVAILABLE",
    "INTERNAL",
}
EVENTS = [
    "createConversation",
    "sendMessage",
    "markDelivered",
    "markRead",
    "typing",
    "getPresence",
    "syncMessages",
    "listConversations",
    "getMessageHistory",
    "editMessage",
    "deleteMessage",
    "setReaction",
]
EXAMPLES = 300

# Any character at all, surrogates included, and the ones known to hurt.
characters = st.characters(codec=None, exclude_categories=())
nasty = st.sampled_from(
    [
        "\x00",
        "a\x00b",
        "\ud800",
        "x\udfffy",
        "\u200b\u200b",
        "\u3164",
        "\ufeff",
        " \n\t ",
        "a" * 2001,
        "b" * 65,
        "\U0001f600" * 1000,
        "0" * 400,
        "",
    ]
)
text = st.one_of(st.text(characters, max_size=40), nasty)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    text,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(text, inner, max_size=5)),
    max_leaves=12,
)


def payloads(ids: dict[str, str]) -> dict[str, st.SearchStrategy[Any]]:
    """For each event, dicts with its keys, each either plausible or hostile."""
    uuid_text = st.one_of(
        st.just(ids["conversation"]),
        st.just(ids["message"]),
        st.uuids().map(str),
        text,
        json_values,
    )
    user_id = st.one_of(st.just(ids["friend"]), st.just(ids["me"]), text, json_values)
    some = st.one_of(json_values, text)

    def shaped(required: dict[str, Any], optional: dict[str, Any]) -> st.SearchStrategy[Any]:
        return st.fixed_dictionaries(required, optional=optional).flatmap(
            lambda d: (
                st.dictionaries(text, json_values, max_size=2).map(lambda e: {**e, **d})
                | st.just(d)
            )
        )

    return {
        "createConversation": shaped({"participantId": user_id}, {}),
        "sendMessage": shaped(
            {"conversationId": uuid_text, "content": st.one_of(text, some)},
            {"clientMessageId": st.one_of(text, some)},
        ),
        "markDelivered": shaped(
            {"messageIds": st.one_of(st.lists(uuid_text, max_size=120), some)}, {}
        ),
        "markRead": shaped({"conversationId": uuid_text, "upToMessageId": uuid_text}, {}),
        "typing": shaped(
            {"conversationId": uuid_text, "isTyping": st.one_of(st.booleans(), some)}, {}
        ),
        "getPresence": shaped({"userIds": st.one_of(st.lists(user_id, max_size=120), some)}, {}),
        "syncMessages": shaped(
            {},
            {
                "after": uuid_text,
                "limit": st.one_of(st.integers(min_value=-(2**70), max_value=2**70), some),
            },
        ),
        "listConversations": shaped(
            {}, {"limit": st.one_of(st.integers(-5, 200), some), "pageToken": st.one_of(text, some)}
        ),
        "getMessageHistory": shaped(
            {"conversationId": uuid_text},
            {"limit": st.one_of(st.integers(-5, 200), some), "pageToken": st.one_of(text, some)},
        ),
        "editMessage": shaped({"messageId": uuid_text, "content": st.one_of(text, some)}, {}),
        "deleteMessage": shaped({"messageId": uuid_text}, {}),
        "setReaction": shaped(
            {
                "messageId": uuid_text,
                "emoji": st.one_of(text, some),
                "active": st.one_of(st.booleans(), some),
            },
            {},
        ),
    }


def calls(ids: dict[str, str], events: list[str]) -> st.SearchStrategy[tuple[str, Any]]:
    """Calls of every event the service registers (those without a shaped strategy here get
    arbitrary objects), unknown events, and wrong argument counts."""
    by_event = payloads(ids)
    generic = st.dictionaries(text, json_values, max_size=6)
    shaped = st.sampled_from(events).flatmap(
        lambda event: by_event.get(event, generic).map(lambda payload: (event, payload))
    )
    anything = st.tuples(
        st.sampled_from([*events, "noSuchEvent", "sendmessage", "x" * 200]),
        st.one_of(
            json_values,
            st.tuples(json_values, json_values),  # two arguments instead of one
        ),
    )
    return st.one_of(shaped, shaped, anything)


def check_envelope(reply: Any) -> None:
    assert isinstance(reply, dict), reply
    assert type(reply.get("ok")) is bool, reply
    if reply["ok"]:
        assert "data" in reply, reply
        return
    error = reply["error"]
    assert error["code"] in CODES, reply
    assert isinstance(error["message"], str), reply
    assert "Traceback" not in str(reply), reply


@pytest_asyncio.fixture(scope="module")
async def open_svc(postgres_database: str) -> AsyncIterator[RunningService]:
    """The service with its rate limits off, so every example reaches validation."""
    settings = service_settings(postgres_database, rate_limits_enabled=False)
    async with running_service(settings, ConnectionGraph(), "postgres") as running:
        yield running


class _StdlibJsonPacket(socketio.packet.Packet):  # type: ignore[misc]
    """Packets encoded as any JSON encoder would (the service in this process sets its own
    codec on python-socketio's Packet class, which clients share): big integers, lone
    surrogates and all."""

    json = json


def fuzz(url: str, token: str, ids: dict[str, str], events: list[str]) -> int:
    """Run the examples over one socket; returns how many were sent."""
    client = socketio.SimpleClient(serializer=_StdlibJsonPacket)
    client.connect(url, auth={"token": token}, transports=["websocket"], wait_timeout=10)
    sent = [0]

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(calls(ids, events))
    def one(call: tuple[str, Any]) -> None:
        event, payload = call
        reply = client.call(event, payload, timeout=10)
        check_envelope(reply)
        assert client.connected, "the socket was closed"
        sent[0] += 1

    try:
        one()
    finally:
        client.disconnect()
    return sent[0]


async def test_every_event_answers_any_payload_with_the_contract_envelope(
    open_svc: RunningService,
) -> None:
    me, friend, bystander, other = (unique(n) for n in ("fuzzer", "friend", "by", "other"))
    open_svc.connect_users((me, friend), (bystander, other))
    async with devices(open_svc, me, bystander) as [mine, calm]:
        conversation = await open_conversation(open_svc, mine, friend)
        message = await mine.ok("sendMessage", {"conversationId": conversation, "content": "hi"})
        quiet = await open_conversation(open_svc, calm, other)
        ids = {"conversation": conversation, "message": message["id"], "me": me, "friend": friend}

        events = open_svc.service.sockets.events
        assert set(EVENTS) <= set(events)
        sent = await asyncio.to_thread(fuzz, open_svc.url, open_svc.token(me), ids, events)
        assert sent >= EXAMPLES // 2

        # The fuzzer's other socket and a bystander were never disturbed.
        assert mine.client.connected
        for i in range(5):
            await calm.ok("sendMessage", {"conversationId": quiet, "content": f"still here {i}"})
        await mine.ok(
            "sendMessage",
            {
                "conversationId": conversation,
                "content": "after",
                "clientMessageId": str(uuid.uuid4()),
            },
        )
