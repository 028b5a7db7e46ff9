"""The SQL of conversations: opening a pair's conversation once, reading one, the conversation list
(most recently active first, with last messages and unread counts), who shares a conversation.

Functions over an open connection; the caller (``conversations.py``) owns the transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from messaging.records import (
    ConversationRecord,
    ConversationSummary,
    MessageRecord,
)
from messaging.store import MESSAGE_COLUMNS as _MESSAGE_COLUMNS
from messaging.store import dialect_insert as _insert
from messaging.store import message_from_row as _message
from messaging.tables import (
    UTCDateTime,
    conversations,
    messages,
    participants,
)


def _conversation(row: Any, members: Sequence[str] = ()) -> ConversationRecord:
    """A direct conversation from its row; a group from its row and its ``members``."""
    if row.kind == "group":
        return ConversationRecord(
            id=row.id,
            participant_ids=tuple(sorted(members)),
            created_at=row.created_at,
            kind="group",
            title=row.title,
            created_by=row.created_by,
        )
    return ConversationRecord(
        id=row.id, participant_ids=(row.user_low, row.user_high), created_at=row.created_at
    )


async def _members_of(
    conn: AsyncConnection, conversation_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[str]]:
    """The current members of each conversation (for groups: the pair is not in the row)."""
    if not conversation_ids:
        return {}
    found: dict[uuid.UUID, list[str]] = {}
    rows = await conn.execute(
        select(participants.c.conversation_id, participants.c.user_id).where(
            participants.c.conversation_id.in_(list(conversation_ids))
        )
    )
    for row in rows:
        found.setdefault(row.conversation_id, []).append(row.user_id)
    return found


async def get_or_create_conversation(
    conn: AsyncConnection,
    *,
    conversation_id: uuid.UUID,
    user_a: str,
    user_b: str,
    created_at: datetime,
) -> tuple[ConversationRecord, bool]:
    """The pair's conversation, created if it does not exist; True when this call created it."""
    low, high = sorted((user_a, user_b))
    inserted = await conn.execute(
        _insert(conn, conversations)
        .values(id=conversation_id, user_low=low, user_high=high, created_at=created_at)
        .on_conflict_do_nothing(
            index_elements=[conversations.c.user_low, conversations.c.user_high]
        )
        .returning(conversations.c.id)
    )
    if inserted.first() is not None:
        await conn.execute(
            _insert(conn, participants).values(
                [
                    {"conversation_id": conversation_id, "user_id": low},
                    {"conversation_id": conversation_id, "user_id": high},
                ]
            )
        )
        return ConversationRecord(conversation_id, (low, high), created_at), True
    row = (
        await conn.execute(
            select(conversations).where(
                conversations.c.user_low == low, conversations.c.user_high == high
            )
        )
    ).one()
    return _conversation(row), False


async def get_conversation(
    conn: AsyncConnection, conversation_id: uuid.UUID
) -> ConversationRecord | None:
    row = (
        await conn.execute(select(conversations).where(conversations.c.id == conversation_id))
    ).first()
    if row is None:
        return None
    if row.kind == "group":
        members = await _members_of(conn, [row.id])
        return _conversation(row, members.get(row.id, ()))
    return _conversation(row)


async def users_sharing_a_conversation(
    conn: AsyncConnection, *, user_id: str, candidates: Iterable[str]
) -> set[str]:
    """Which of ``candidates`` share at least one conversation with ``user_id``."""
    mine = participants.alias("mine")
    theirs = participants.alias("theirs")
    rows = await conn.execute(
        select(theirs.c.user_id)
        .distinct()
        .join(mine, mine.c.conversation_id == theirs.c.conversation_id)
        .where(mine.c.user_id == user_id, theirs.c.user_id.in_(list(candidates)))
    )
    return {row.user_id for row in rows}


async def list_conversations(
    conn: AsyncConnection,
    *,
    user_id: str,
    limit: int,
    before: tuple[datetime, uuid.UUID] | None,
) -> list[ConversationSummary]:
    """The user's conversations, most recently active first, keyset-paginated on activity."""
    last_at = (
        select(func.max(messages.c.created_at))
        .where(messages.c.conversation_id == conversations.c.id)
        .scalar_subquery()
    )
    activity = func.coalesce(last_at, conversations.c.created_at).label("activity_at")
    query = (
        select(conversations, activity)
        .join(participants, participants.c.conversation_id == conversations.c.id)
        .where(participants.c.user_id == user_id)
    )
    if before is not None:
        query = query.where(tuple_(activity, conversations.c.id) < tuple_(*before))
    query = query.order_by(activity.desc(), conversations.c.id.desc()).limit(limit)
    rows = (await conn.execute(query)).all()
    if not rows:
        return []
    ids = [row.id for row in rows]
    last_messages = await _last_messages(conn, ids)
    direct = [row.id for row in rows if row.kind != "group"]
    groups = [row.id for row in rows if row.kind == "group"]
    unread = await _unread_counts(conn, user_id=user_id, conversation_ids=direct)
    if groups:
        unread.update(await _group_unread_counts(conn, user_id=user_id, conversation_ids=groups))
    members = await _members_of(conn, groups)
    summaries = []
    for row in rows:
        activity_at = row.activity_at
        if isinstance(activity_at, str):  # SQLite returns the coalesced value untyped
            activity_at = UTCDateTime().process_result_value(activity_at, conn.dialect)
        summaries.append(
            ConversationSummary(
                conversation=_conversation(row, members.get(row.id, ())),
                last_message=last_messages.get(row.id),
                unread_count=unread.get(row.id, 0),
                activity_at=activity_at,
            )
        )
    return summaries


async def _last_messages(
    conn: AsyncConnection, conversation_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, MessageRecord]:
    ranked = (
        select(
            *_MESSAGE_COLUMNS,
            func.row_number()
            .over(
                partition_by=messages.c.conversation_id,
                order_by=(messages.c.created_at.desc(), messages.c.id.desc()),
            )
            .label("rank"),
        )
        .where(messages.c.conversation_id.in_(conversation_ids))
        .subquery()
    )
    rows = await conn.execute(select(ranked).where(ranked.c.rank == 1))
    return {row.conversation_id: _message(row) for row in rows}


async def unread_counts(
    conn: AsyncConnection,
    *,
    user_id: str,
    direct: Sequence[uuid.UUID] = (),
    groups: Sequence[uuid.UUID] = (),
) -> dict[uuid.UUID, int]:
    """The user's unread messages in each conversation, counted as ``listConversations`` does
    (for the webhooks' ``notification.requested``)."""
    counts = await _unread_counts(conn, user_id=user_id, conversation_ids=direct) if direct else {}
    if groups:
        counts.update(await _group_unread_counts(conn, user_id=user_id, conversation_ids=groups))
    return counts


async def _unread_counts(
    conn: AsyncConnection, *, user_id: str, conversation_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, int]:
    rows = await conn.execute(
        select(messages.c.conversation_id, func.count())
        .where(
            messages.c.conversation_id.in_(conversation_ids),
            messages.c.author_id != user_id,
            messages.c.status != "read",
            messages.c.deleted_at.is_(None),  # a deleted message is nothing left to read
        )
        .group_by(messages.c.conversation_id)
    )
    return {row[0]: int(row[1]) for row in rows}


async def _group_unread_counts(
    conn: AsyncConnection, *, user_id: str, conversation_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, int]:
    """Per member: messages of others since the member joined and after its read position."""
    me = participants.alias("me")
    position = tuple_(messages.c.created_at, messages.c.id)
    rows = await conn.execute(
        select(messages.c.conversation_id, func.count())
        .join(
            me,
            and_(me.c.conversation_id == messages.c.conversation_id, me.c.user_id == user_id),
        )
        .where(
            messages.c.conversation_id.in_(conversation_ids),
            messages.c.author_id != user_id,
            messages.c.deleted_at.is_(None),
            or_(me.c.joined_at.is_(None), messages.c.created_at >= me.c.joined_at),
            or_(
                me.c.read_through_at.is_(None),
                position > tuple_(me.c.read_through_at, me.c.read_through_id),
            ),
        )
        .group_by(messages.c.conversation_id)
    )
    return {row[0]: int(row[1]) for row in rows}
