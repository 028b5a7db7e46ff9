"""The SQL of messages: the batch insert (one statement on PostgreSQL), status moves, a
conversation's history, and the reads of a user's change log (sync, delivery's healing).

Functions over an open connection; the caller (``messages.py``, ``commits.py``) owns the
transaction. The change log they append to and read is described in ``store.py``.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import Select, and_, bindparam, func, or_, select, true, tuple_, update
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.ext.asyncio import AsyncConnection

from messaging.records import (
    Change,
    LogEntry,
    MessageRecord,
    NewMessage,
)
from messaging.storage import message_changes as reaction_store
from messaging.store import MESSAGE_COLUMNS as _MESSAGE_COLUMNS
from messaging.store import DriverStatement, append_changes, driver_fetch
from messaging.store import dialect_insert as _insert
from messaging.store import message_from_row as _message
from messaging.tables import (
    message_reactions,
    messages,
    participants,
    user_changes,
    user_streams,
)

STATUS_ORDER = {"sent": 0, "delivered": 1, "read": 2}


async def insert_messages(
    conn: AsyncConnection, batch: Sequence[NewMessage], *, events: BatchEvents | None = None
) -> list[tuple[MessageRecord, bool]]:
    """Store a batch of new messages, each logged as "created" for every participant.

    ``events`` (webhooks, ``outbox.Outbox.message_events``) are written with them, only for the
    messages this call stored: on PostgreSQL in the same statement (one multi-row INSERT more in
    it), elsewhere in the caller's transaction.

    Returns, for each input in order, the stored message and whether this call stored it; a
    repeated ``(author_id, client_message_id)`` returns the original message instead (also when the
    repeat is inside the same batch). Either way the record carries its log positions, so a
    repeat can be delivered again to whoever missed the original.

    On PostgreSQL it is one statement (rows, counters and log together), so on a connection in
    autocommit mode the whole batch is one round trip and one implicit transaction; elsewhere
    the caller's transaction holds the statements.
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
        positions = await _insert_postgres(conn, unique, events)
    else:
        positions = await _insert_portable(conn, unique)
        if events is not None:
            await events.write(
                conn,
                inserted=set(positions),
                created_at={m.id: m.created_at for m in unique},
                now=datetime.now(UTC),
            )
    stored: dict[uuid.UUID, MessageRecord] = {}
    for item in unique:
        if item.id in positions:
            stored[item.id] = MessageRecord(
                id=item.id,
                conversation_id=item.conversation_id,
                author_id=item.author_id,
                content=item.content,
                status="sent",
                created_at=item.created_at,
                client_message_id=item.client_message_id,
                positions=tuple(sorted(positions[item.id].items())),
            )
    originals = await _originals(conn, [u for u in unique if u.id not in positions])

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


# Inserts the rows, bumps the counter of every participant of the inserted messages (in user
# order: the row locks are taken in that order, so concurrent batches cannot deadlock) and logs
# each message at the positions just below each counter's new value, in one statement.
_INSERT_BATCH_POSTGRES = """
WITH incoming AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::varchar[], $4::text[],
                         $5::timestamptz[], $6::varchar[]) WITH ORDINALITY
        AS r(id, conversation_id, author_id, content, created_at, client_message_id, ord)
), inserted AS (
    INSERT INTO messages (id, conversation_id, author_id, content, status, created_at,
                          client_message_id)
    SELECT id, conversation_id, author_id, content, 'sent', created_at, client_message_id
    FROM incoming ORDER BY ord
    ON CONFLICT (author_id, client_message_id) DO NOTHING
    RETURNING id, conversation_id, author_id, created_at
), targets AS (
    SELECT p.user_id, i.id, i.author_id, i.created_at,
           row_number() OVER (PARTITION BY p.user_id ORDER BY r.ord) AS nth,
           count(*) OVER (PARTITION BY p.user_id) AS n
    FROM inserted i
    JOIN incoming r ON r.id = i.id
    JOIN participants p ON p.conversation_id = i.conversation_id
), bumped AS (
    INSERT INTO user_streams AS s (user_id, position)
    SELECT DISTINCT user_id, n FROM targets ORDER BY user_id
    ON CONFLICT (user_id) DO UPDATE SET position = s.position + excluded.position
    RETURNING s.user_id, s.position
)
INSERT INTO user_changes (user_id, position, message_id, kind, actor_id, changed_at)
SELECT t.user_id, b.position - t.n + t.nth, t.id, 'created', t.author_id, t.created_at
FROM targets t JOIN bumped b ON b.user_id = t.user_id
RETURNING user_id, position, message_id
"""
_FINAL_INSERT = _INSERT_BATCH_POSTGRES.index("INSERT INTO user_changes")


class BatchEvents(Protocol):
    """What a batch of new messages writes besides itself, only for the messages it stored
    (webhook events: ``storage.outbox.MessageEvents``)."""

    @property
    def postgres_ctes(self) -> str:
        """CTEs for the batch statement (they may name its ``inserted`` and ``targets``; their
        parameters start at $7)."""
        ...

    def postgres_args(self) -> tuple[Any, ...]: ...

    async def write(
        self,
        conn: AsyncConnection,
        *,
        inserted: set[uuid.UUID],
        created_at: dict[uuid.UUID, datetime],
        now: datetime,
    ) -> None:
        """The same, on other backends, in the caller's transaction."""
        ...


@functools.cache
def _with_ctes(ctes: str) -> str:
    """The batch statement with more CTEs (webhook events) before its final INSERT."""
    head, tail = _INSERT_BATCH_POSTGRES[:_FINAL_INSERT], _INSERT_BATCH_POSTGRES[_FINAL_INSERT:]
    return head.rstrip() + ctes + tail


async def _insert_postgres(
    conn: AsyncConnection, unique: Sequence[NewMessage], events: BatchEvents | None = None
) -> dict[uuid.UUID, dict[str, int]]:
    statement = _INSERT_BATCH_POSTGRES
    args: tuple[Any, ...] = (
        [m.id for m in unique],
        [m.conversation_id for m in unique],
        [m.author_id for m in unique],
        [m.content for m in unique],
        [m.created_at for m in unique],
        [m.client_message_id for m in unique],
    )
    if events is not None:
        statement = _with_ctes(events.postgres_ctes)
        args += events.postgres_args()
    positions: dict[uuid.UUID, dict[str, int]] = {}
    for user_id, position, message_id in await driver_fetch(conn, statement, *args):
        positions.setdefault(message_id, {})[user_id] = position
    return positions


async def _insert_portable(
    conn: AsyncConnection, unique: Sequence[NewMessage]
) -> dict[uuid.UUID, dict[str, int]]:
    rows = [
        {
            "id": item.id,
            "conversation_id": item.conversation_id,
            "author_id": item.author_id,
            "content": item.content,
            "status": "sent",
            "created_at": item.created_at,
            "client_message_id": item.client_message_id,
        }
        for item in unique
    ]
    inserted = set(
        (
            await conn.execute(
                _insert(conn, messages)
                .values(rows)
                .on_conflict_do_nothing(
                    index_elements=[messages.c.author_id, messages.c.client_message_id]
                )
                .returning(messages.c.id)
            )
        ).scalars()
    )
    logged = await append_changes(
        conn,
        [
            LogEntry(m.conversation_id, m.id, "created", m.author_id, m.created_at)
            for m in unique
            if m.id in inserted
        ],
    )
    positions: dict[uuid.UUID, dict[str, int]] = {}
    for change in logged:
        positions.setdefault(change.message_id, {})[change.user_id] = change.position
    return positions


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
    records = [_message(row) for row in rows]
    positions = await created_positions(conn, [r.id for r in records])
    found = {}
    for record in records:
        assert record.client_message_id is not None
        key = (record.author_id, record.client_message_id)
        found[key] = replace(record, positions=positions.get(record.id, ()))
    return found


async def created_positions(
    conn: AsyncConnection, message_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, tuple[tuple[str, int], ...]]:
    """Where each message was logged as created, per participant."""
    if not message_ids:
        return {}
    rows = await conn.execute(
        select(user_changes.c.message_id, user_changes.c.user_id, user_changes.c.position)
        .where(user_changes.c.message_id.in_(message_ids), user_changes.c.kind == "created")
        .order_by(user_changes.c.user_id)
    )
    found: dict[uuid.UUID, list[tuple[str, int]]] = {}
    for row in rows:
        found.setdefault(row.message_id, []).append((row.user_id, row.position))
    return {k: tuple(v) for k, v in found.items()}


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
    at: datetime,
) -> list[Change]:
    """Move messages forward to ``status`` and log it; messages already there are left alone.

    The WHERE clause only admits lower statuses, and PostgreSQL re-checks it after waiting on a
    concurrent writer's row lock, so two racing updates can never move a status backwards. Each
    moved message is logged (kind ``status``, actor ``not_author``, the marker) for every
    participant, grouped by conversation and in id (creation) order.
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
        .returning(messages.c.id, messages.c.conversation_id)
    )
    moved = sorted((row.conversation_id, row.id) for row in rows)
    return await append_changes(conn, [LogEntry(c, m, status, not_author, at) for c, m in moved])


async def history_page(
    conn: AsyncConnection,
    *,
    conversation_id: uuid.UUID,
    limit: int,
    before: tuple[datetime, uuid.UUID] | None,
    not_before: datetime | None = None,
) -> list[MessageRecord]:
    """Newest first, strictly older than ``before`` (and not older than ``not_before``: when a
    group member joined); one range scan of the history index. With their reactions: on
    PostgreSQL in the same statement (one round trip for the page), elsewhere by a second query
    (``message_changes.with_reactions``)."""
    values: dict[str, Any] = {"conversation_id": conversation_id, "limit": limit}
    if not_before is not None:
        values["not_before"] = not_before
    if before is not None:
        values["before_at"], values["before_id"] = before
    shape = {"after_join": not_before is not None, "before": before is not None}
    if conn.dialect.driver == "asyncpg":
        statement = history_statement(**shape)
        records = await driver_fetch(conn, statement.sql, *statement.args(values))
        return [_message_of_record(r) for r in records]
    rows = await conn.execute(_history_query(**shape, reactions=False), values)
    return await reaction_store.with_reactions(conn, [_message(row) for row in rows])


def _message_of_record(r: Any) -> MessageRecord:
    """A row of the PostgreSQL page statement (``asyncpg.Record``), reactions aggregated."""
    return MessageRecord(
        id=r[0],
        conversation_id=r[1],
        author_id=r[2],
        content=r[3],
        status=r[4],
        created_at=r[5],
        client_message_id=r[6],
        edited_at=r[7],
        deleted_at=r[8],
        reactions=reaction_store.grouped(zip(r[9], r[10], strict=True)) if r[9] else (),
    )


@functools.cache
def history_statement(*, after_join: bool, before: bool) -> DriverStatement:
    """The PostgreSQL page statement: the message columns, then ``emojis`` and ``reactors``."""
    return DriverStatement.of(_history_query(after_join=after_join, before=before, reactions=True))


@functools.cache
def _history_query(*, after_join: bool, before: bool, reactions: bool) -> Select[Any]:
    """Built once per shape, so a page pays neither for building the statement nor for its
    cache key (SQLAlchemy memoizes the key on the statement object). ``reactions`` (PostgreSQL):
    each message's reactions aggregated beside it, in a lateral join over the page."""
    query = select(*_MESSAGE_COLUMNS).where(
        messages.c.conversation_id == bindparam("conversation_id")
    )
    if after_join:
        query = query.where(messages.c.created_at >= bindparam("not_before"))
    if before:
        query = query.where(
            tuple_(messages.c.created_at, messages.c.id)
            < tuple_(
                bindparam("before_at", type_=messages.c.created_at.type),
                bindparam("before_id", type_=messages.c.id.type),
            )
        )
    newest_first = (messages.c.created_at.desc(), messages.c.id.desc())
    query = query.order_by(*newest_first).limit(bindparam("limit"))
    if not reactions:
        return query
    page = query.subquery("page")
    given = (message_reactions.c.created_at, message_reactions.c.user_id)
    reacted = (
        select(
            func.array_agg(aggregate_order_by(message_reactions.c.emoji, *given)).label("emojis"),
            func.array_agg(aggregate_order_by(message_reactions.c.user_id, *given)).label(
                "reactors"
            ),
        )
        .where(message_reactions.c.message_id == page.c.id, page.c.deleted_at.is_(None))
        .lateral("reacted")
    )
    return (
        select(page, reacted.c.emojis, reacted.c.reactors)
        .select_from(page.outerjoin(reacted, true()))
        .order_by(page.c.created_at.desc(), page.c.id.desc())
    )


def _log_of(user_id: str) -> Any:
    return user_changes.c.user_id == user_id


def _readable_by(user_id: str) -> Any:
    """The message (of the outer query) is in a conversation ``user_id`` is a member of now, and
    was sent after it joined: a group member who left reads nothing of the group any more, not
    even by sync, and one who joined (again) reads from then on. Always true in a direct
    conversation (its participants never leave; ``joined_at`` is NULL)."""
    return (
        select(participants.c.user_id)
        .where(
            participants.c.conversation_id == messages.c.conversation_id,
            participants.c.user_id == user_id,
            or_(
                participants.c.joined_at.is_(None),
                participants.c.joined_at <= messages.c.created_at,
            ),
        )
        .exists()
    )


async def log_heads(conn: AsyncConnection, user_ids: Sequence[str]) -> dict[str, int]:
    """The last position of each user's log (users with no log yet are at 0)."""
    heads = dict.fromkeys(user_ids, 0)
    rows = await conn.execute(
        select(user_streams.c.user_id, user_streams.c.position).where(
            user_streams.c.user_id.in_(list(user_ids))
        )
    )
    heads.update({row.user_id: row.position for row in rows})
    return heads


async def created_position(
    conn: AsyncConnection, *, user_id: str, message_id: uuid.UUID
) -> int | None:
    """Where ``message_id`` was logged as created in ``user_id``'s log (None: not theirs)."""
    return (
        await conn.execute(
            select(user_changes.c.position).where(
                _log_of(user_id),
                user_changes.c.message_id == message_id,
                user_changes.c.kind == "created",
            )
        )
    ).scalar()


async def created_after(
    conn: AsyncConnection, *, user_id: str, after_pos: int, limit: int
) -> tuple[list[tuple[MessageRecord, int]], int]:
    """Messages created after a position of the user's log, in log order, with their positions;
    and the log's last position, read in the same statement (the same snapshot)."""
    head = (
        select(func.coalesce(func.max(user_streams.c.position), 0))
        .where(user_streams.c.user_id == user_id)
        .scalar_subquery()
    )
    rows = (
        await conn.execute(
            select(*_MESSAGE_COLUMNS, user_changes.c.position, head.label("head"))
            .join(messages, messages.c.id == user_changes.c.message_id)
            .where(
                _log_of(user_id),
                user_changes.c.position > after_pos,
                user_changes.c.kind == "created",
                _readable_by(user_id),
            )
            .order_by(user_changes.c.position)
            .limit(limit)
        )
    ).all()
    if not rows:
        return [], after_pos
    return [(_message(row), row.position) for row in rows], int(rows[0].head)


async def changed_since(
    conn: AsyncConnection, *, user_id: str, after_pos: int, limit: int
) -> list[tuple[MessageRecord, int]]:
    """The latest state of each message changed after a position, ordered by its last change.

    One statement, so one snapshot: the positions returned and the states read agree.
    """
    latest = (
        select(user_changes.c.message_id, func.max(user_changes.c.position).label("position"))
        .where(_log_of(user_id), user_changes.c.position > after_pos)
        .group_by(user_changes.c.message_id)
        .subquery()
    )
    rows = await conn.execute(
        select(*_MESSAGE_COLUMNS, latest.c.position)
        .join(latest, latest.c.message_id == messages.c.id)
        .where(_readable_by(user_id))
        .order_by(latest.c.position)
        .limit(limit)
    )
    return [(_message(row), row.position) for row in rows]


async def changes_after(
    conn: AsyncConnection, *, user_id: str, after_pos: int, limit: int
) -> list[tuple[Change, MessageRecord]]:
    """Every entry of the user's log after a position, with its message's current state."""
    rows = await conn.execute(
        select(
            *_MESSAGE_COLUMNS,
            user_changes.c.position,
            user_changes.c.kind,
            user_changes.c.actor_id,
            user_changes.c.changed_at,
            user_changes.c.emoji,
        )
        .join(messages, messages.c.id == user_changes.c.message_id)
        .where(_log_of(user_id), user_changes.c.position > after_pos)
        .order_by(user_changes.c.position)
        .limit(limit)
    )
    return [
        (
            Change(
                user_id,
                row.position,
                row.id,
                row.kind,
                row.actor_id,
                row.changed_at,
                row.conversation_id,
                row.emoji,
            ),
            _message(row),
        )
        for row in rows
    ]
