"""The SQL of message reports (``messaging.reports`` decides who may report what).

Plain functions over an open connection; the caller owns the transaction.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from messaging.tables import reports


@dataclass(frozen=True, slots=True)
class ReportRecord:
    id: uuid.UUID
    message_id: uuid.UUID
    conversation_id: uuid.UUID
    reporter_id: str
    author_id: str
    reason: str
    note: str | None
    created_at: datetime


def _insert(conn: AsyncConnection, table: Any) -> Any:
    """An INSERT with ``on_conflict_do_nothing`` for whichever backend this connection uses."""
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(table)


def _report(row: Any) -> ReportRecord:
    return ReportRecord(
        id=row.id,
        message_id=row.message_id,
        conversation_id=row.conversation_id,
        reporter_id=row.reporter_id,
        author_id=row.author_id,
        reason=row.reason,
        note=row.note,
        created_at=row.created_at,
    )


async def add_report(conn: AsyncConnection, report: ReportRecord) -> tuple[ReportRecord, bool]:
    """Store the report; a second report of the same message by the same user returns the first
    (True when this call stored it)."""
    inserted = await conn.execute(
        _insert(conn, reports)
        .values(
            id=report.id,
            message_id=report.message_id,
            conversation_id=report.conversation_id,
            reporter_id=report.reporter_id,
            author_id=report.author_id,
            reason=report.reason,
            note=report.note,
            created_at=report.created_at,
        )
        .on_conflict_do_nothing(index_elements=[reports.c.message_id, reports.c.reporter_id])
        .returning(reports.c.id)
    )
    if inserted.first() is not None:
        return report, True
    row = (
        await conn.execute(
            select(reports).where(
                reports.c.message_id == report.message_id,
                reports.c.reporter_id == report.reporter_id,
            )
        )
    ).one()
    return _report(row), False


async def get_report(conn: AsyncConnection, report_id: uuid.UUID) -> ReportRecord | None:
    row = (await conn.execute(select(reports).where(reports.c.id == report_id))).first()
    return None if row is None else _report(row)
