"""Reports of messages (``reportMessage``): who may report what, and what is kept.

Any participant of the message's conversation but its author may report it, once: a repeat
returns the first report. The report is stored in the same transaction as its webhook event
will be: ``Reports`` takes ``on_reported``, called inside that transaction with the stored report
and the message, where the outbox records ``message.reported`` (``reported_event`` builds its
data). No copy of the content is kept in the database (a deleted message's content must be gone
from it); the event carries the content as it was when reported, to the moderators' system.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from messaging import metrics
from messaging.errors import Forbidden, NotFound
from messaging.payloads import iso
from messaging.records import MessageRecord
from messaging.storage import messages as message_sql
from messaging.storage import reports as storage
from messaging.storage.reports import ReportRecord

ConnectionFactory = Callable[[], AbstractAsyncContextManager[AsyncConnection]]
# Called inside the report's transaction, once per stored report (not for a repeat).
OnReported = Callable[[AsyncConnection, ReportRecord, MessageRecord], Awaitable[None]]


async def _nothing(conn: AsyncConnection, report: ReportRecord, message: MessageRecord) -> None:
    return None


class Reports:
    def __init__(
        self, *, transaction: ConnectionFactory, on_reported: OnReported | None = None
    ) -> None:
        self._transaction = transaction
        self._on_reported = on_reported or _nothing

    async def report(
        self, user_id: str, *, message_id: uuid.UUID, reason: str, note: str | None
    ) -> ReportRecord:
        async with self._transaction() as conn:
            visible = await message_sql.visible_messages(
                conn, user_id=user_id, message_ids=[message_id]
            )
            if not visible:
                # Also for a message of someone else's conversation: its existence is not told.
                raise NotFound("no such message")
            message = visible[0]
            if message.author_id == user_id:
                raise Forbidden("you cannot report your own message")
            report, stored = await storage.add_report(
                conn,
                ReportRecord(
                    id=uuid.uuid4(),
                    message_id=message.id,
                    conversation_id=message.conversation_id,
                    reporter_id=user_id,
                    author_id=message.author_id,
                    reason=reason,
                    note=note,
                    created_at=datetime.now(UTC),
                ),
            )
            if stored:
                # The outbox's place: ``message.reported`` commits with the report or not at all.
                await self._on_reported(conn, report, message)
        if stored:
            metrics.REPORTS.labels(reason=reason).inc()
        return report


def reported_event(report: ReportRecord, message: MessageRecord) -> dict[str, Any]:
    """The data of the ``message.reported`` webhook event."""
    return {
        "reportId": str(report.id),
        "messageId": str(report.message_id),
        "conversationId": str(report.conversation_id),
        "reporterId": report.reporter_id,
        "authorId": report.author_id,
        "reason": report.reason,
        "note": report.note,
        "reportedAt": iso(report.created_at),
        "message": {
            "content": message.content,
            "createdAt": iso(message.created_at),
        },
    }
