"""The SQL of per-member delivery and read state in groups, and of receipts.

A member's read state is a position (``participants.read_through_*``): markRead moves one row
whatever the group's size, and the messages it covers are found by range. Deliveries are rows
(markDelivered names at most 100 messages). A group message's ``status`` column holds the lowest
state over its other members (those who were members when it was sent), moved forward by the
same transaction that moved the last member, so every reader of messages (history, sync, the
conversation list) shows it without knowing about groups.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, exists, func, not_, or_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from messaging import store
from messaging.records import Change, LogEntry, Receipt
from messaging.storage.groups import insert
from messaging.tables import (
    UTCDateTime,
    message_deliveries,
    messages,
    participants,
    read_marks,
    user_changes,
)

Position = tuple[datetime, uuid.UUID]


def _position() -> Any:
    return tuple_(messages.c.created_at, messages.c.id)


def _read_through(member: Any) -> Any:
    table = participants if member is None else member
    return tuple_(table.c.read_through_at, table.c.read_through_id)


async def record_deliveries(
    conn: AsyncConnection, *, user_id: str, message_ids: Sequence[uuid.UUID], at: datetime
) -> set[uuid.UUID]:
    """Record that ``user_id`` received these group messages; returns the ones that are new.

    Messages the member already read through (its position) are left out: read stays read.
    """
    if not message_ids:
        return set()
    me = participants.alias("me")
    unread = (
        select(messages.c.id)
        .join(me, and_(me.c.conversation_id == messages.c.conversation_id, me.c.user_id == user_id))
        .where(
            messages.c.id.in_(list(message_ids)),
            or_(me.c.read_through_at.is_(None), _position() > _read_through(me)),
        )
    )
    candidates = list((await conn.execute(unread)).scalars())
    if not candidates:
        return set()
    inserted = await conn.execute(
        insert(conn, message_deliveries)
        .values([{"message_id": m, "user_id": user_id, "delivered_at": at} for m in candidates])
        .on_conflict_do_nothing(
            index_elements=[message_deliveries.c.message_id, message_deliveries.c.user_id]
        )
        .returning(message_deliveries.c.message_id)
    )
    return set(inserted.scalars())


def _others_pending(state: str) -> Any:
    """Some other member (one who was a member when the message was sent) is not yet at
    ``state`` for the message of the outer query."""
    other = participants.alias("other")
    condition = [
        other.c.conversation_id == messages.c.conversation_id,
        other.c.user_id != messages.c.author_id,
        or_(other.c.joined_at.is_(None), other.c.joined_at <= messages.c.created_at),
        or_(other.c.read_through_at.is_(None), _read_through(other) < _position()),
    ]
    if state == "delivered":
        condition.append(
            not_(
                exists().where(
                    message_deliveries.c.message_id == messages.c.id,
                    message_deliveries.c.user_id == other.c.user_id,
                )
            )
        )
    return exists().where(*condition)


async def promote_delivered(conn: AsyncConnection, message_ids: Sequence[uuid.UUID]) -> None:
    """Group messages every other member has received become ``delivered``."""
    if not message_ids:
        return
    await conn.execute(
        update(messages)
        .where(
            messages.c.id.in_(list(message_ids)),
            messages.c.status == "sent",
            not_(_others_pending("delivered")),
        )
        .values(status="delivered")
    )


async def move_read_position(
    conn: AsyncConnection, *, conversation_id: uuid.UUID, user_id: str, through: Position
) -> None:
    """Move the member's read position forward to ``through`` (never backwards)."""
    at, message_id = through
    await conn.execute(
        update(participants)
        .where(
            participants.c.conversation_id == conversation_id,
            participants.c.user_id == user_id,
            or_(
                participants.c.read_through_at.is_(None),
                _read_through(None) < tuple_(at, message_id),
            ),
        )
        .values(read_through_at=at, read_through_id=message_id)
    )


async def messages_between(
    conn: AsyncConnection,
    *,
    conversation_id: uuid.UUID,
    reader: str,
    after: Position | None,
    through: Position,
    joined_at: datetime | None,
) -> list[tuple[uuid.UUID, str]]:
    """Messages of others (id, author) from ``after`` to ``through``, oldest first."""
    conditions = [
        messages.c.conversation_id == conversation_id,
        messages.c.author_id != reader,
        _position() <= tuple_(*through),
    ]
    if after is not None:
        conditions.append(_position() > tuple_(*after))
    if joined_at is not None:
        conditions.append(messages.c.created_at >= joined_at)
    rows = await conn.execute(
        select(messages.c.id, messages.c.author_id)
        .where(*conditions)
        .order_by(messages.c.created_at, messages.c.id)
    )
    return [(row.id, row.author_id) for row in rows]


async def promote_read(
    conn: AsyncConnection,
    *,
    conversation_id: uuid.UUID,
    after: Position | None,
    through: Position,
) -> None:
    """Messages of the range that every other member has now read become ``read``."""
    conditions = [
        messages.c.conversation_id == conversation_id,
        messages.c.status != "read",
        _position() <= tuple_(*through),
        not_(_others_pending("read")),
    ]
    if after is not None:
        conditions.append(_position() > tuple_(*after))
    await conn.execute(update(messages).where(*conditions).values(status="read"))


async def append_read_mark(
    conn: AsyncConnection,
    *,
    conversation_id: uuid.UUID,
    user_id: str,
    through: Position,
    at: datetime,
) -> None:
    await conn.execute(
        read_marks.insert().values(
            conversation_id=conversation_id,
            user_id=user_id,
            through_at=through[0],
            through_id=through[1],
            read_at=at,
        )
    )


async def group_receipts(
    conn: AsyncConnection,
    *,
    conversation_id: uuid.UUID,
    message_id: uuid.UUID,
    author_id: str,
    created_at: datetime,
) -> list[Receipt]:
    """One receipt per current member other than the author who was a member when it was sent.

    Read is the first read mark at or past the message; a message read without a recorded
    delivery counts as delivered when it was read.
    """
    delivered = (
        select(message_deliveries.c.delivered_at)
        .where(
            message_deliveries.c.message_id == message_id,
            message_deliveries.c.user_id == participants.c.user_id,
        )
        .scalar_subquery()
    )
    read = (
        select(func.min(read_marks.c.read_at))
        .where(
            read_marks.c.conversation_id == conversation_id,
            read_marks.c.user_id == participants.c.user_id,
            tuple_(read_marks.c.through_at, read_marks.c.through_id)
            >= tuple_(created_at, message_id),
        )
        .scalar_subquery()
    )
    rows = await conn.execute(
        select(participants.c.user_id, delivered.label("delivered_at"), read.label("read_at"))
        .where(
            participants.c.conversation_id == conversation_id,
            participants.c.user_id != author_id,
            or_(participants.c.joined_at.is_(None), participants.c.joined_at <= created_at),
        )
        .order_by(participants.c.user_id)
    )
    receipts = []
    for row in rows:
        read_at = _as_datetime(conn, row.read_at)
        delivered_at = _as_datetime(conn, row.delivered_at) or read_at
        receipts.append(Receipt(row.user_id, delivered_at, read_at))
    return receipts


async def direct_receipts(
    conn: AsyncConnection, *, message_id: uuid.UUID, author_id: str, other_id: str
) -> list[Receipt]:
    """A direct message's receipt, from the author's change log (its status entries)."""
    rows = await conn.execute(
        select(user_changes.c.kind, func.min(user_changes.c.changed_at))
        .where(
            user_changes.c.user_id == author_id,
            user_changes.c.message_id == message_id,
            user_changes.c.actor_id == other_id,
            user_changes.c.kind.in_(("delivered", "read")),
        )
        .group_by(user_changes.c.kind)
    )
    at = {row[0]: _as_datetime(conn, row[1]) for row in rows}
    read_at = at.get("read")
    return [Receipt(other_id, at.get("delivered") or read_at, read_at)]


def _as_datetime(conn: AsyncConnection, value: object) -> datetime | None:
    """Aggregates come back untyped on SQLite."""
    if value is None:
        return None
    return UTCDateTime().process_result_value(value, conn.dialect)


async def log_for_users(
    conn: AsyncConnection, per_user: Mapping[str, Sequence[LogEntry]]
) -> list[Change]:
    """Append entries to the named users' logs (not to every participant's, as
    ``store.append_changes`` does): a member's receipt concerns the author and the member only.

    Counters are bumped in user order (the same lock order as every other writer).
    """
    changes = await store.log_for_users(conn, per_user)
    changes.sort(key=lambda c: (c.user_id, c.position))
    return changes


async def current_members(
    conn: AsyncConnection, conversation_id: uuid.UUID, user_ids: Sequence[str]
) -> set[str]:
    """Which of ``user_ids`` are members now (a receipt is not logged for one who left)."""
    if not user_ids:
        return set()
    rows = await conn.execute(
        select(participants.c.user_id).where(
            participants.c.conversation_id == conversation_id,
            participants.c.user_id.in_(list(set(user_ids))),
        )
    )
    return set(rows.scalars())


async def settle_after_leaving(
    conn: AsyncConnection,
    *,
    conversation_id: uuid.UUID,
    after: Position | None,
    joined_at: datetime | None,
) -> None:
    """A member left: messages it was the last one missing become ``read`` or ``delivered``.

    Only messages the member could still have held back are looked at: those after its read
    position, sent since it joined. Call after its participant row is deleted.
    """
    conditions = [messages.c.conversation_id == conversation_id, messages.c.status != "read"]
    if after is not None:
        conditions.append(_position() > tuple_(*after))
    if joined_at is not None:
        conditions.append(messages.c.created_at >= joined_at)
    await conn.execute(
        update(messages).where(*conditions, not_(_others_pending("read"))).values(status="read")
    )
    await conn.execute(
        update(messages)
        .where(*conditions, messages.c.status == "sent", not_(_others_pending("delivered")))
        .values(status="delivered")
    )
