"""How a message is rendered for gRPC: timestamps exactly as protobuf's own conversion gives
them, and the optional fields present only when the message has them."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

from messaging.grpc_api import _timestamp, message_pb
from messaging.proto.messaging.v1 import messaging_pb2 as pb
from messaging.records import MessageRecord


def test_a_timestamp_is_what_protobufs_own_conversion_gives() -> None:
    rng = random.Random(7)
    start = datetime(1970, 1, 1, tzinfo=UTC)
    for _ in range(5_000):
        at = start + timedelta(microseconds=rng.randrange(0, 10**17))
        expected = Timestamp()
        expected.FromDatetime(at)
        assert _timestamp(at) == expected, at


def _message(**fields: object) -> MessageRecord:
    values: dict[str, object] = {
        "id": uuid.uuid4(),
        "conversation_id": uuid.uuid4(),
        "author_id": "alice",
        "content": "hi",
        "status": "read",
        "created_at": datetime(2026, 12, 2, 21, 30, 0, 123456, tzinfo=UTC),
        "client_message_id": None,
        "edited_at": None,
        "deleted_at": None,
    }
    values.update(fields)
    return MessageRecord(**values)  # type: ignore[arg-type]


def test_a_plain_message_has_no_edit_deletion_or_reactions() -> None:
    record = _message()
    rendered = message_pb(record)
    assert rendered.id == str(record.id) and rendered.status == pb.MESSAGE_STATUS_READ
    assert rendered.created_at.ToDatetime(tzinfo=UTC) == record.created_at
    assert not rendered.HasField("edited_at") and not rendered.HasField("deleted_at")
    assert rendered.client_message_id == "" and list(rendered.reactions) == []


def test_an_edited_deleted_reacted_message_carries_all_of_it() -> None:
    edited = datetime(2026, 12, 2, 22, 0, tzinfo=UTC)
    record = _message(
        client_message_id="c-1",
        edited_at=edited,
        deleted_at=edited + timedelta(seconds=1),
        reactions=(("+1", ("bob", "carol")), ("heart", ("bob",))),
    )
    rendered = message_pb(record)
    assert rendered.client_message_id == "c-1"
    assert rendered.edited_at.ToDatetime(tzinfo=UTC) == edited
    assert rendered.deleted_at.ToDatetime(tzinfo=UTC) == edited + timedelta(seconds=1)
    assert [(r.emoji, list(r.user_ids)) for r in rendered.reactions] == [
        ("+1", ["bob", "carol"]),
        ("heart", ["bob"]),
    ]
