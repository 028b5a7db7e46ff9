"""Group commit: the sends a process receives at the same time share one transaction.

A commit costs PostgreSQL a WAL flush and costs us a round of statements and the stream-position
row lock (see ``store.py``); one per message caps throughput and queues senders on the lock. Here
sends queue in memory while a transaction is in flight and the next transaction takes them all:
under light load a batch is one message and adds no delay, under heavy load batches grow on their
own. Every sender is answered only after the transaction holding its message committed.

The queue is bounded: past ``max_pending`` a send is refused with ``RATE_LIMITED`` at once
rather than waiting behind a backlog it would only make longer.

One sender's bad row must not fail the others' sends: when the database refuses a batch for its
data (a constraint, a value it cannot store) rather than for being unreachable, each message of
the batch is retried alone, so only the offending ones fail. Validation keeps such rows out in
the first place; this is what holds when something slips past it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager

from opentelemetry.trace import SpanContext
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection

from messaging import metrics, tracing
from messaging.errors import RateLimited
from messaging.records import MessageRecord, NewMessage
from messaging.storage import messages as message_sql
from messaging.storage.messages import BatchEvents

# Opens the connection batches are written on; each batch is committed before its senders are
# answered (on PostgreSQL in autocommit a batch is one statement, and the commit a no-op).
Connection = Callable[[], AbstractAsyncContextManager[AsyncConnection]]
Pending = tuple[NewMessage, "asyncio.Future[tuple[MessageRecord, bool]]"]
# The webhook events of a batch (``outbox.Outbox.message_events``), written in its statement.
Events = Callable[[Sequence[NewMessage]], BatchEvents | None]
_BATCH_SPAN = "messaging.group_commit"


def refused_for_its_data(exc: DBAPIError) -> bool:
    """The database answered and refused the statement (not: the connection is gone)."""
    return not exc.connection_invalidated and not isinstance(exc, OperationalError)


def _fail(batch: list[Pending], exc: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)


class GroupCommitter:
    def __init__(
        self,
        connection: Connection,
        *,
        max_batch: int = 256,
        max_pending: int = 5_000,
        linger_seconds: float = 0.0,
        events: Events | None = None,
    ) -> None:
        self._connection = connection
        self._events = events
        self._linger = linger_seconds
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._pending: list[Pending] = []
        self._worker: asyncio.Task[None] | None = None
        self._arrived = asyncio.Event()
        # id(message) -> its sender's span, while tracing (tracing.py): batches link to them.
        self._senders: dict[int, SpanContext | None] = {}

    async def commit(self, message: NewMessage) -> tuple[MessageRecord, bool]:
        """Store ``message``; returns it (or the original of a repeated clientMessageId)."""
        if len(self._pending) >= self._max_pending:
            raise RateLimited("the server is saturated; retry with the same clientMessageId")
        future: asyncio.Future[tuple[MessageRecord, bool]] = (
            asyncio.get_running_loop().create_future()
        )
        self._pending.append((message, future))
        self._arrived.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain(), name="group-commit")
        if not tracing.enabled():
            return await future
        self._senders[id(message)] = tracing.current()  # the batch's span links to it
        try:
            return await future
        finally:
            self._senders.pop(id(message), None)

    async def _drain(self) -> None:
        """Commit batches until the queue is empty, on one connection held for the whole run."""
        batch: list[Pending] = []
        try:
            async with self._connection() as conn:
                # In autocommit (PostgreSQL: a batch is one statement) the statement committed
                # itself; commit() would only cost a greenlet switch (and its stack) per batch.
                autocommit = (
                    conn.sync_connection is not None
                    and conn.sync_connection.get_execution_options().get("isolation_level")
                    == "AUTOCOMMIT"
                )
                while self._pending or await self._more_soon():
                    batch = self._pending[: self._max_batch]
                    del self._pending[: self._max_batch]
                    try:
                        results = await self._insert(conn, [m for m, _ in batch])
                        if not autocommit:
                            await conn.commit()
                    except DBAPIError as exc:
                        if len(batch) == 1 or not refused_for_its_data(exc):
                            raise
                        if not autocommit:
                            await conn.rollback()
                        await self._one_by_one(conn, batch, autocommit=autocommit)
                        batch = []
                        continue
                    metrics.GROUP_COMMIT_SIZE.observe(len(batch))
                    for (_, future), result in zip(batch, results, strict=True):
                        if not future.done():
                            future.set_result(result)
                    batch = []
        except asyncio.CancelledError as exc:
            _fail([*batch, *self._pending], exc)
            self._pending = []
            raise
        except Exception as exc:
            if batch:
                _fail(batch, exc)  # this batch broke; the ones queued behind it get a new run
            else:
                # No connection: everyone waiting for this run fails fast (and can retry).
                waiting, self._pending = self._pending, []
                _fail(waiting, exc)
        if self._pending:
            self._worker = asyncio.create_task(self._drain(), name="group-commit")

    async def _one_by_one(
        self, conn: AsyncConnection, batch: list[Pending], *, autocommit: bool
    ) -> None:
        """Commit each message of a refused batch alone: only the bad rows fail.

        A loss of the connection midway is not a bad row: it propagates, and the senders still
        unanswered fail with it (``_drain``'s handler).
        """
        metrics.GROUP_COMMIT_ISOLATED.inc()
        for index, (message, future) in enumerate(batch):
            try:
                [result] = await self._insert(conn, [message])
                if not autocommit:
                    await conn.commit()
            except DBAPIError as exc:
                if not refused_for_its_data(exc):
                    del batch[:index]
                    raise
                if not autocommit:
                    await conn.rollback()
                if not future.done():
                    future.set_exception(exc)
                continue
            metrics.GROUP_COMMIT_SIZE.observe(1)
            if not future.done():
                future.set_result(result)

    async def _insert(
        self, conn: AsyncConnection, messages: list[NewMessage]
    ) -> list[tuple[MessageRecord, bool]]:
        events = self._events(messages) if self._events is not None else None
        if not tracing.enabled():
            return await message_sql.insert_messages(conn, messages, events=events)
        senders = [self._senders.get(id(m)) for m in messages]
        # Its own trace (not a child of whichever sender woke the worker), linked to them all.
        with tracing.span(_BATCH_SPAN, attributes={"messaging.batch.size": len(messages)},
                          links=senders, parent=tracing.ROOT):  # fmt: skip
            return await message_sql.insert_messages(conn, messages, events=events)

    async def _more_soon(self) -> bool:
        """Keep the connection a moment for the next sends (saves a checkout and its ping)."""
        if not self._linger:
            return False
        self._arrived.clear()
        try:
            async with asyncio.timeout(self._linger):
                await self._arrived.wait()
        except TimeoutError:
            return False
        return bool(self._pending)

    async def wait_idle(self) -> None:
        """Until everything queued so far has been committed (or failed)."""
        while self._worker is not None and not self._worker.done():
            await asyncio.shield(self._worker)
