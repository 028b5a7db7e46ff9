"""Concurrent sends share transactions, each is answered after its own commit, and overload
is refused early with RATE_LIMITED instead of queueing without bound."""

from __future__ import annotations

import asyncio
import uuid

from sqlalchemy import func, select

from messaging.commits import GroupCommitter
from messaging.errors import RateLimited
from messaging.ids import new_message_id
from messaging.store import NewMessage
from messaging.tables import messages
from tests.support.service import RunningService, devices, open_conversation, unique


def _message(conversation: str, author: str, key: str | None = None) -> NewMessage:
    message_id, created_at = new_message_id()
    return NewMessage(message_id, uuid.UUID(conversation), author, "x", created_at, key)


async def _conversation(svc: RunningService) -> tuple[str, str]:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with devices(svc, alice) as [a]:
        return await open_conversation(svc, a, bob), alice


async def test_sends_arriving_together_commit_in_few_transactions(svc: RunningService) -> None:
    conversation, alice = await _conversation(svc)
    batches: list[int] = []
    chat = svc.service.chat

    class Counting(GroupCommitter):
        async def _drain(self) -> None:
            batches.append(len(self._pending))
            await super()._drain()

    committer = Counting(chat._connection)
    results = await asyncio.gather(
        *(committer.commit(_message(conversation, alice)) for _ in range(50))
    )
    assert all(stored for _, stored in results)
    assert len(batches) == 1 and batches[0] == 50  # one transaction for fifty senders
    async with chat.engine.connect() as conn:
        count = await conn.scalar(
            select(func.count()).where(messages.c.conversation_id == uuid.UUID(conversation))
        )
    assert count == 50


async def test_duplicates_inside_one_batch_are_stored_once(svc: RunningService) -> None:
    conversation, alice = await _conversation(svc)
    committer = GroupCommitter(svc.service.chat._connection)
    results = await asyncio.gather(
        *(committer.commit(_message(conversation, alice, key="same")) for _ in range(5))
    )
    assert len({record.id for record, _ in results}) == 1
    assert [stored for _, stored in results].count(True) == 1


async def test_a_saturated_queue_refuses_with_rate_limited(svc: RunningService) -> None:
    conversation, alice = await _conversation(svc)
    committer = GroupCommitter(svc.service.chat._connection, max_pending=5)
    outcomes = await asyncio.gather(
        *(committer.commit(_message(conversation, alice)) for _ in range(8)),
        return_exceptions=True,
    )
    refused = [o for o in outcomes if isinstance(o, RateLimited)]
    assert len(refused) == 3
    assert refused[0].to_ack()["error"]["code"] == "RATE_LIMITED"
    assert sum(1 for o in outcomes if isinstance(o, tuple)) == 5


async def test_a_batch_refused_for_one_rows_data_fails_only_that_rows_sender(
    svc: RunningService,
) -> None:
    """What the database refuses in one message (a missing conversation; on PostgreSQL a NUL
    character, which validation normally keeps out) fails that send, not its batch-mates."""
    conversation, alice = await _conversation(svc)
    committer = GroupCommitter(svc.service.chat._connection)
    bad = [_message(str(uuid.uuid4()), alice)]  # violates the foreign key
    if svc.backend == "postgres":
        message_id, created_at = new_message_id()
        nul = NewMessage(message_id, uuid.UUID(conversation), alice, "a\x00b", created_at, None)
        bad.append(nul)
    good = [_message(conversation, alice) for _ in range(20)]
    outcomes = await asyncio.gather(
        *(committer.commit(m) for m in [*good[:10], *bad, *good[10:]]), return_exceptions=True
    )
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(refused) == len(bad)
    stored = [o for o in outcomes if isinstance(o, tuple)]
    assert {record.id for record, _ in stored} == {m.id for m in good}
    record, was_stored = await committer.commit(_message(conversation, alice))
    assert was_stored and record.conversation_id == uuid.UUID(conversation)
