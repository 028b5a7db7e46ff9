"""Every SQL statement of the service, as plain functions over an open connection.

The caller owns the transaction (``async with engine.begin() as conn``), so logic in ``chat.py``
decides what commits together. Statements are written with SQLAlchemy Core and run unchanged on
PostgreSQL and SQLite.

Stream positions: ``syncMessages`` walks messages in ``stream_pos`` order, and a client must never
see position N+1 before position N has committed (else it syncs past N and misses it forever).
``insert_messages`` takes positions from the one-row ``message_stream`` table with an UPDATE, whose
row lock is held until commit: the next writer gets its positions only after this one committed or
rolled back, so positions are handed out in commit order with nothing in flight below them (the
guarantee Synapse gets from tracking in-flight stream ids).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, select, text, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from messaging.tables import (
    UTCDateTime,
    conversations,
    message_stream,
    messages,
    participants,
)

STATUS_ORDER = {"sent": 0, "delivered": 1, "read": 2}


@dataclass(frozen=True, slots=True)
class MessageRecord:
    id: uuid.UUID
    conversation_id: uuid.UUID
    author_id: str
    content: str
    status: str
    created_at: datetime
    client_message_id: str | None
    stream_pos: int


@dataclass(frozen=True, slots=True)
class ConversationRecord:
    id: uuid.UUID
    participant_ids: tuple[str, str]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class NewMessage:
    id: uuid.UUID
    conversation_id: uuid.UUID
    author_id: str
    content: str
    created_at: datetime
    client_message_id: str | None


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    conversation: ConversationRecord
    last_message: MessageRecord | None
    unread_count: int
    activity_at: datetime


@dataclass(frozen=True, slots=True)
class StatusChange:
    message_id: uuid.UUID
    conversation_id: uuid.UUID
    author_id: str


_MESSAGE_COLUMNS = (
    messages.c.id,
    messages.c.conversation_id,
    messages.c.author_id,
    messages.c.content,
    messages.c.status,
    messages.c.created_at,
    messages.c.client_message_id,
    messages.c.stream_pos,
)


def _message(row: Any) -> MessageRecord:
    return MessageRecord(
        id=row.id,
        conversation_id=row.conversation_id,
        author_id=row.author_id,
        content=row.content,
        status=row.status,
        created_at=row.created_at,
        client_message_id=row.client_message_id,
        stream_pos=row.stream_pos,
    )


def _conversation(row: Any) -> ConversationRecord:
    return ConversationRecord(
        id=row.id, participant_ids=(row.user_low, row.user_high), created_at=row.created_at
    )


def _insert(conn: AsyncConnection, table: Any) -> Any:
    """An INSERT with ``on_conflict_do_nothing`` for whichever backend this connection uses."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


async def ensure_stream_row(conn: AsyncConnection) -> None:
    """The ``message_stream`` row exists from the first migration; this guards hand-made schemas."""
    await conn.execute(
        _insert(conn, message_stream)
        .values(id=1, position=0)
        .on_conflict_do_nothing(index_elements=[message_stream.c.id])
    )


# --- conversations ---------------------------------------------------------------------------


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
    return None if row is None else _conversation(row)


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
    unread = await _unread_counts(conn, user_id=user_id, conversation_ids=ids)
    summaries = []
    for row in rows:
        activity_at = row.activity_at
        if isinstance(activity_at, str):  # SQLite returns the coalesced value untyped
            activity_at = UTCDateTime().process_result_value(activity_at, conn.dialect)
        summaries.append(
            ConversationSummary(
                conversation=_conversation(row),
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


async def _unread_counts(
    conn: AsyncConnection, *, user_id: str, conversation_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, int]:
    rows = await conn.execute(
        select(messages.c.conversation_id, func.count())
        .where(
            messages.c.conversation_id.in_(conversation_ids),
            messages.c.author_id != user_id,
            messages.c.status != "read",
        )
        .group_by(messages.c.conversation_id)
    )
    return {row[0]: int(row[1]) for row in rows}


# --- messages --------------------------------------------------------------------------------


async def insert_messages(
    conn: AsyncConnection, batch: Sequence[NewMessage]
) -> list[tuple[MessageRecord, bool]]:
    """Store a batch of new messages.

    Returns, for each input in order, the stored message and whether this call stored it; a
    repeated ``(author_id, client_message_id)`` returns the original message instead (also when the
    repeat is inside the same batch).

    On PostgreSQL it is one statement (position and rows together), so on a connection in
    autocommit mode the whole batch is one round trip and one implicit transaction; elsewhere
    the caller's transaction holds the two statements.
    """
    first_of_key: dict[tuple[str, str], int] = {}
    unique: list[NewMessage] = []
    for item in batch:
        if item.client_message_id is not None:
            key = (item.author_id, item.client_message_id)
            if key in first_of_key:
                continue
            first_of_key[key] = len(unique)
        unique.append(item)

    if conn.dialect.name == "postgresql":
        start, inserted_ids = await _insert_postgres(conn, unique)
    else:
        start, inserted_ids = await _insert_portable(conn, unique)
    stored: dict[uuid.UUID, MessageRecord] = {}
    for offset, item in enumerate(unique):
        if item.id in inserted_ids:
            stored[item.id] = MessageRecord(
                id=item.id,
                conversation_id=item.conversation_id,
                author_id=item.author_id,
                content=item.content,
                status="sent",
                created_at=item.created_at,
                client_message_id=item.client_message_id,
                stream_pos=start + offset,
            )
    originals = await _originals(conn, [u for u in unique if u.id not in inserted_ids])

    results: list[tuple[MessageRecord, bool]] = []
    for item in batch:
        if item.id in stored:
            results.append((stored[item.id], True))
            continue
        assert item.client_message_id is not None  # only keyed messages can be repeats
        key = (item.author_id, item.client_message_id)
        first = unique[first_of_key[key]]
        # A repeat of an earlier message of this batch, or of one stored before it.
        results.append((stored.get(first.id) or originals[key], False))
    return results


# Takes the batch's positions and inserts its rows in one statement: the UPDATE's row lock is
# taken first (the INSERT reads its result) and held until the statement's transaction ends.
_INSERT_BATCH_POSTGRES = """
WITH counter AS (
    UPDATE message_stream SET position = position + $7 WHERE id = 1 RETURNING position
), incoming AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::varchar[], $4::text[],
                         $5::timestamptz[], $6::varchar[]) WITH ORDINALITY
        AS r(id, conversation_id, author_id, content, created_at, client_message_id, ord)
)
INSERT INTO messages (id, conversation_id, author_id, content, status, created_at,
                      client_message_id, stream_pos)
SELECT r.id, r.conversation_id, r.author_id, r.content, 'sent', r.created_at,
       r.client_message_id, counter.position - $7 + r.ord
FROM incoming r, counter
ON CONFLICT (author_id, client_message_id) DO NOTHING
RETURNING id, stream_pos
"""


async def _insert_postgres(
    conn: AsyncConnection, unique: Sequence[NewMessage]
) -> tuple[int, set[uuid.UUID]]:
    result = await conn.exec_driver_sql(
        _INSERT_BATCH_POSTGRES,
        (
            [m.id for m in unique],
            [m.conversation_id for m in unique],
            [m.author_id for m in unique],
            [m.content for m in unique],
            [m.created_at for m in unique],
            [m.client_message_id for m in unique],
            len(unique),
        ),
    )
    positions: dict[uuid.UUID, int] = {row.id: row.stream_pos for row in result}
    if not positions:
        # Every row was a repeat; the positions were still taken (gaps are harmless).
        return 0, set()
    # Positions follow input order: recover the batch's first one from any inserted row.
    index = {m.id: i for i, m in enumerate(unique)}
    some_id, some_pos = next(iter(positions.items()))
    return some_pos - index[some_id], set(positions)


async def _insert_portable(
    conn: AsyncConnection, unique: Sequence[NewMessage]
) -> tuple[int, set[uuid.UUID]]:
    end = (
        await conn.execute(
            update(message_stream)
            .where(message_stream.c.id == 1)
            .values(position=message_stream.c.position + len(unique))
            .returning(message_stream.c.position)
        )
    ).scalar_one()
    start = end - len(unique) + 1
    rows = [
        {
            "id": item.id,
            "conversation_id": item.conversation_id,
            "author_id": item.author_id,
            "content": item.content,
            "status": "sent",
            "created_at": item.created_at,
            "client_message_id": item.client_message_id,
            "stream_pos": start + offset,
        }
        for offset, item in enumerate(unique)
    ]
    inserted = await conn.execute(
        _insert(conn, messages)
        .values(rows)
        .on_conflict_do_nothing(index_elements=[messages.c.author_id, messages.c.client_message_id])
        .returning(messages.c.id)
    )
    return start, set(inserted.scalars())


async def _originals(
    conn: AsyncConnection, duplicates: Sequence[NewMessage]
) -> dict[tuple[str, str], MessageRecord]:
    if not duplicates:
        return {}
    keys = [(d.author_id, d.client_message_id) for d in duplicates]
    rows = await conn.execute(
        select(*_MESSAGE_COLUMNS).where(
            tuple_(messages.c.author_id, messages.c.client_message_id).in_(keys)
        )
    )
    found = {}
    for row in rows:
        record = _message(row)
        assert record.client_message_id is not None
        found[(record.author_id, record.client_message_id)] = record
    return found


async def get_message(conn: AsyncConnection, message_id: uuid.UUID) -> MessageRecord | None:
    row = (await conn.execute(select(*_MESSAGE_COLUMNS).where(messages.c.id == message_id))).first()
    return None if row is None else _message(row)


async def visible_messages(
    conn: AsyncConnection, *, user_id: str, message_ids: Sequence[uuid.UUID]
) -> list[MessageRecord]:
    """Those of ``message_ids`` that sit in a conversation ``user_id`` takes part in."""
    rows = await conn.execute(
        select(*_MESSAGE_COLUMNS)
        .join(
            participants,
            and_(
                participants.c.conversation_id == messages.c.conversation_id,
                participants.c.user_id == user_id,
            ),
        )
        .where(messages.c.id.in_(message_ids))
    )
    return [_message(row) for row in rows]


async def advance_status(
    conn: AsyncConnection,
    *,
    status: str,
    message_ids: Sequence[uuid.UUID] | None = None,
    conversation_id: uuid.UUID | None = None,
    not_author: str,
    up_to: tuple[datetime, uuid.UUID] | None = None,
) -> list[StatusChange]:
    """Move messages forward to ``status``; messages already there or beyond are left alone.

    The WHERE clause only admits lower statuses, and PostgreSQL re-checks it after waiting on a
    concurrent writer's row lock, so two racing updates can never move a status backwards.
    """
    lower = [s for s, rank in STATUS_ORDER.items() if rank < STATUS_ORDER[status]]
    conditions = [messages.c.status.in_(lower), messages.c.author_id != not_author]
    if message_ids is not None:
        conditions.append(messages.c.id.in_(message_ids))
    if conversation_id is not None:
        conditions.append(messages.c.conversation_id == conversation_id)
    if up_to is not None:
        conditions.append(tuple_(messages.c.created_at, messages.c.id) <= tuple_(*up_to))
    rows = await conn.execute(
        update(messages)
        .where(*conditions)
        .values(status=status)
        .returning(messages.c.id, messages.c.conversation_id, messages.c.author_id)
    )
    return [StatusChange(row.id, row.conversation_id, row.author_id) for row in rows]


async def history_page(
    conn: AsyncConnection,
    *,
    conversation_id: uuid.UUID,
    limit: int,
    before: tuple[datetime, uuid.UUID] | None,
) -> list[MessageRecord]:
    """Newest first, strictly older than ``before``; one range scan of the history index."""
    query = select(*_MESSAGE_COLUMNS).where(messages.c.conversation_id == conversation_id)
    if before is not None:
        query = query.where(tuple_(messages.c.created_at, messages.c.id) < tuple_(*before))
    query = query.order_by(messages.c.created_at.desc(), messages.c.id.desc()).limit(limit)
    return [_message(row) for row in await conn.execute(query)]


async def messages_after(
    conn: AsyncConnection, *, user_id: str, after_pos: int, limit: int
) -> list[MessageRecord]:
    """Messages of every conversation of ``user_id`` past a stream position, oldest first."""
    mine = select(participants.c.conversation_id).where(participants.c.user_id == user_id)
    rows = await conn.execute(
        select(*_MESSAGE_COLUMNS)
        .where(messages.c.conversation_id.in_(mine), messages.c.stream_pos > after_pos)
        .order_by(messages.c.stream_pos)
        .limit(limit)
    )
    return [_message(row) for row in rows]


async def ping(conn: AsyncConnection) -> None:
    await conn.execute(text("SELECT 1"))
