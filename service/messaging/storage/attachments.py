"""The SQL of attachments: uploads, attaching them to a message, erasing and sweeping them.

Plain functions over an open connection; the caller owns the transaction. The rules (who may
attach what, what a reader sees) are in ``messaging/attachments.py``.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, Select, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from messaging.store import DriverStatement, driver_fetch, one_of_ids
from messaging.tables import attachments, messages


@dataclass(frozen=True, slots=True)
class Upload:
    id: uuid.UUID
    conversation_id: uuid.UUID
    owner_id: str
    file_name: str
    content_type: str
    size_bytes: int
    object_key: str
    created_at: datetime
    message_id: uuid.UUID | None
    doomed_at: datetime | None


_COLUMNS = (
    attachments.c.id,
    attachments.c.conversation_id,
    attachments.c.owner_id,
    attachments.c.file_name,
    attachments.c.content_type,
    attachments.c.size_bytes,
    attachments.c.object_key,
    attachments.c.created_at,
    attachments.c.message_id,
    attachments.c.doomed_at,
)


def _upload(row: Any) -> Upload:
    """A row of ``_COLUMNS`` (an SQLAlchemy row or an ``asyncpg.Record``): in field order."""
    return Upload(*row)


async def insert_upload(conn: AsyncConnection, upload: Upload) -> None:
    await conn.execute(
        attachments.insert().values(
            id=upload.id,
            conversation_id=upload.conversation_id,
            owner_id=upload.owner_id,
            file_name=upload.file_name,
            content_type=upload.content_type,
            size_bytes=upload.size_bytes,
            object_key=upload.object_key,
            created_at=upload.created_at,
        )
    )


async def uploads_by_id(conn: AsyncConnection, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Upload]:
    rows = await conn.execute(select(*_COLUMNS).where(attachments.c.id.in_(list(ids))))
    return {row.id: _upload(row) for row in rows}


async def attach(
    conn: AsyncConnection,
    *,
    message_id: uuid.UUID,
    owner_id: str,
    conversation_id: uuid.UUID,
    ids: Sequence[uuid.UUID],
    created_after: datetime,
) -> int:
    """Attach unattached uploads of ``owner_id`` for the conversation, in the given order.

    Returns how many rows were attached: fewer than ``len(ids)`` means one was attached by a
    racing send, or swept, since it was checked, and the caller must roll back.
    """
    attached = 0
    for ordinal, upload_id in enumerate(ids):
        result = await conn.execute(
            update(attachments)
            .where(
                attachments.c.id == upload_id,
                attachments.c.owner_id == owner_id,
                attachments.c.conversation_id == conversation_id,
                attachments.c.message_id.is_(None),
                attachments.c.doomed_at.is_(None),
                attachments.c.created_at > created_after,
            )
            .values(message_id=message_id, ordinal=ordinal)
        )
        attached += result.rowcount
    return attached


async def of_messages(
    conn: AsyncConnection, message_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[Upload]]:
    """The attachments of each message, in the order they were attached."""
    if not message_ids:
        return {}
    values = {"ids": list(message_ids)}
    rows: Iterable[Any]
    if conn.dialect.driver == "asyncpg":  # every history page asks: the hot read's path
        statement = _of_messages_statement()
        rows = await driver_fetch(conn, statement.sql, *statement.args(values))
    else:
        rows = await conn.execute(_of_messages_query(postgres=False), values)
    found: dict[uuid.UUID, list[Upload]] = {}
    for row in rows:
        upload = _upload(row)
        found.setdefault(cast(uuid.UUID, upload.message_id), []).append(upload)
    return found


@functools.cache
def _of_messages_query(*, postgres: bool) -> Select[Any]:
    """Built once."""
    column = attachments.c.message_id
    match = one_of_ids(column, "ids", postgres=postgres)
    return select(*_COLUMNS).where(match).order_by(column, attachments.c.ordinal)


@functools.cache
def _of_messages_statement() -> DriverStatement:
    return DriverStatement.of(_of_messages_query(postgres=True))


async def doom_of_messages(
    conn: AsyncConnection, message_ids: Sequence[uuid.UUID], *, at: datetime
) -> list[uuid.UUID]:
    """Detach the messages' attachments and blank their names; their objects go next."""
    rows = await conn.execute(
        update(attachments)
        .where(attachments.c.message_id.in_(list(message_ids)))
        .values(message_id=None, file_name="", doomed_at=at)
        .returning(attachments.c.id)
    )
    return list(rows.scalars())


async def sweepable(
    conn: AsyncConnection,
    *,
    ids: Sequence[uuid.UUID] | None = None,
    unattached_before: datetime | None = None,
    limit: int,
) -> list[Upload]:
    """Rows whose objects may go: doomed ones, and unattached ones created before the cutoff."""
    condition: ColumnElement[bool] = attachments.c.doomed_at.is_not(None)
    if unattached_before is not None:
        condition = or_(
            condition,
            (attachments.c.message_id.is_(None)) & (attachments.c.created_at < unattached_before),
        )
    query = select(*_COLUMNS).where(condition)
    if ids is not None:
        query = query.where(attachments.c.id.in_(list(ids)))
    rows = await conn.execute(query.order_by(attachments.c.created_at).limit(limit))
    return [_upload(row) for row in rows]


async def delete_swept(
    conn: AsyncConnection, ids: Sequence[uuid.UUID], *, unattached_before: datetime
) -> int:
    """Delete the rows whose objects were deleted, if they are still doomed or unattached.

    The condition is checked again: a row is never removed from under a message.
    """
    result = await conn.execute(
        delete(attachments).where(
            attachments.c.id.in_(list(ids)),
            attachments.c.message_id.is_(None),
            or_(
                attachments.c.doomed_at.is_not(None),
                attachments.c.created_at < unattached_before,
            ),
        )
    )
    return int(result.rowcount)


async def message_exists(conn: AsyncConnection, *, author_id: str, client_message_id: str) -> bool:
    """Whether a send with this clientMessageId is a repeat (its uploads are already attached)."""
    found = await conn.scalar(
        select(messages.c.id).where(
            messages.c.author_id == author_id, messages.c.client_message_id == client_message_id
        )
    )
    return found is not None
