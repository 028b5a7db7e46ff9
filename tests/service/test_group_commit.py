"""Concurrent sends share transactions, each is answered after its own commit, and overload
is refused early with RATE_LIMITED instead of queueing without bound."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from sqlalchemy import event, func, select, text

from messaging import store
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


async def test_an_early_unlocked_batch_is_answered_only_after_its_flush(
    svc: RunningService,
) -> None:
    """PostgreSQL: the batch statement commits before its WAL flush (so the participants'
    counter rows are free for the other replicas' batches during the fsync), and the senders
    are answered only after the flush statement ran on the same connection."""
    if svc.backend != "postgres":
        pytest.skip("SQLite commits are never early")
    conversation, alice = await _conversation(svc)
    chat = svc.service.chat
    seen: list[str] = []
    answered_after: list[int] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    committer = GroupCommitter(chat._connection, unlock_early=True)
    event.listen(chat.engine.sync_engine, "before_cursor_execute", record)
    try:

        async def send() -> None:
            await committer.commit(_message(conversation, alice))
            answered_after.append(len(seen))

        await asyncio.gather(*(send() for _ in range(3)))
    finally:
        event.remove(chat.engine.sync_engine, "before_cursor_execute", record)
    batch = [i for i, s in enumerate(seen) if "set_config('synchronous_commit', 'off'" in s]
    flush = [i for i, s in enumerate(seen) if "pg_logical_emit_message" in s]
    assert batch and flush
    assert batch[0] < flush[0]
    assert min(answered_after) > flush[0]  # nobody was answered before the flush statement


async def test_the_early_unlock_applies_to_the_batch_statement_alone(
    svc: RunningService,
) -> None:
    """The asynchronous commit is local to the batch's transaction: the pooled connection's
    later transactions (everything else the service writes) still wait for their flush."""
    if svc.backend != "postgres":
        pytest.skip("SQLite commits are never early")
    conversation, alice = await _conversation(svc)
    async with svc.service.chat.engine.connect() as conn:
        await store.insert_messages(conn, [_message(conversation, alice)], unlock_early=True)
        inside = await conn.scalar(text("SHOW synchronous_commit"))
        await conn.commit()
        after = await conn.scalar(text("SHOW synchronous_commit"))
    assert (inside, after) == ("off", "on")


async def test_reads_that_hand_out_log_positions_wait_for_the_flush(
    svc: RunningService,
) -> None:
    """Sync pages and the healing delivery's reads name log positions: with early unlock they
    may have seen a batch that is not on disk yet, so they wait for the flush before answering
    (a token must never name a change that a crash of the database could take back)."""
    if svc.backend != "postgres":
        pytest.skip("SQLite commits are never early")
    _, alice = await _conversation(svc)
    chat = svc.service.chat
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(chat.engine.sync_engine, "before_cursor_execute", record)
    try:
        flushes = []
        for read in (
            lambda: chat.sync(alice, after=None, since=None, limit=10),
            lambda: chat.log_heads([alice]),
            lambda: chat.log_events(alice, 0),
        ):
            before = len(seen)
            await read()
            flushes.append(sum("pg_logical_emit_message" in s for s in seen[before:]))
    finally:
        event.remove(chat.engine.sync_engine, "before_cursor_execute", record)
    assert flushes == [1, 1, 1]


_WAL = "SELECT pg_wal_lsn_diff(pg_current_wal_{}_lsn(), '0/0')::bigint"


async def test_wait_durable_returns_only_once_an_early_batch_is_flushed(
    svc: RunningService,
) -> None:
    """The flush statement really waits for the WAL flush: after it, PostgreSQL's flushed WAL
    reaches past the early-unlocked batch's commit (without it, an early batch is usually not
    flushed yet; five in a row make a wait that does not flush all but certain to fail)."""
    if svc.backend != "postgres":
        pytest.skip("SQLite commits are never early")
    conversation, alice = await _conversation(svc)
    behind: list[bool] = []
    async with svc.service.chat._connection() as conn:
        for _ in range(5):
            await store.insert_messages(conn, [_message(conversation, alice)], unlock_early=True)
            written = await conn.scalar(text(_WAL.format("insert")))
            await store.wait_durable(conn)
            behind.append(await conn.scalar(text(_WAL.format("flush"))) < written)
    assert behind == [False] * 5
