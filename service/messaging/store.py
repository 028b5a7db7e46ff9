"""Every SQL statement of the service, as plain functions over an open connection.

The caller owns the transaction (``async with engine.begin() as conn``), so logic in ``chat.py``
decides what commits together. Statements are written with SQLAlchemy Core and run unchanged on
PostgreSQL and SQLite.

Change logs: every change to a message (created, a status moved) is appended to the log of each
participant of its conversation (``user_changes``), at the next position of that user's counter
(``user_streams``). The counter row is updated in the same transaction and its row lock is held
until commit, so a user's positions become visible in order: once a reader sees position N of a
user's log, nothing below N can still commit. A sync token is such a position, so a client that
resumes from it never skips a change that committed late. Writers of different users never wait
for each other (no cluster-wide lock or row); writers that touch several users lock their counter
rows in user order, so two of them cannot deadlock.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import and_, func, or_, select, text, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from messaging.tables import (
    UTCDateTime,
    conversations,
    messages,
    participants,
    user_changes,
    user_streams,
)

STATUS_ORDER = {"sent": 0, "delivered": 1, "read": 2}


@dataclass(frozen=True, slots=True)
class AttachmentView:
    """An attachment as one read of its message shows it: with a freshly signed download URL
    (``attachments.Attachments.fill`` makes these; ``payloads`` and ``grpc_api`` render them)."""

    id: uuid.UUID
    file_name: str
    content_type: str
    size_bytes: int
    url: str
    url_expires_at: datetime


@dataclass(frozen=True, slots=True)
class MessageRecord:
    id: uuid.UUID
    conversation_id: uuid.UUID
    author_id: str
    content: str
    status: str
    created_at: datetime
    client_message_id: str | None
    # The message's position in each participant's change log, when this call just wrote it.
    positions: tuple[tuple[str, int], ...] = ()
    # Schema 0003: when it was last edited, when it was deleted (a tombstone: content ""), and
    # its reactions as (emoji, user ids) in the order they were first given. Reads fill the
    # reactions in with ``storage.message_changes.with_reactions``.
    edited_at: datetime | None = None
    deleted_at: datetime | None = None
    reactions: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # Filled in by ``attachments.Attachments.fill`` right before the message is shown.
    attachments: tuple[AttachmentView, ...] = ()


@dataclass(frozen=True, slots=True)
class ConversationRecord:
    id: uuid.UUID
    # Sorted. A direct conversation's pair never changes; a group's members do, so a group's
    # record is a snapshot (``groups.py`` reads membership from the database for every rule).
    participant_ids: tuple[str, ...]
    created_at: datetime
    kind: str = "direct"
    title: str | None = None
    # The group's creator; None for direct conversations (a pair has no owner: either side's
    # createConversation returns the same conversation).
    created_by: str | None = None


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


_MESSAGE_COLUMNS = (
    messages.c.id,
    messages.c.conversation_id,
    messages.c.author_id,
    messages.c.content,
    messages.c.status,
    messages.c.created_at,
    messages.c.client_message_id,
    messages.c.edited_at,
    messages.c.deleted_at,
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
        edited_at=row.edited_at,
        deleted_at=row.deleted_at,
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


def _insert(conn: AsyncConnection, table: Any) -> Any:
    """An INSERT with ``on_conflict_do_nothing`` for whichever backend this connection uses."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


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


# --- messages --------------------------------------------------------------------------------


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
    result = await conn.exec_driver_sql(statement, args)
    positions: dict[uuid.UUID, dict[str, int]] = {}
    for row in result:
        positions.setdefault(row.message_id, {})[row.user_id] = row.position
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


@dataclass(frozen=True, slots=True)
class LogEntry:
    """A change to log for every participant of ``conversation_id``."""

    conversation_id: uuid.UUID
    message_id: uuid.UUID
    kind: str
    actor_id: str | None
    changed_at: datetime
    emoji: str | None = None  # of a "reacted"/"unreacted" entry


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of a user's change log."""

    user_id: str
    position: int
    message_id: uuid.UUID
    kind: str
    actor_id: str | None
    changed_at: datetime
    conversation_id: uuid.UUID
    emoji: str | None = None


async def append_changes(conn: AsyncConnection, entries: Sequence[LogEntry]) -> list[Change]:
    """Log ``entries`` for every participant, in the order given; call inside a transaction.

    Each user's share is contiguous and in input order, so one event per user can announce a run
    of changes with the range of positions it covers.
    """
    if not entries:
        return []
    conversation_ids = list({e.conversation_id for e in entries})
    members: dict[uuid.UUID, list[tuple[str, datetime | None]]] = {}
    for row in await conn.execute(
        select(
            participants.c.conversation_id, participants.c.user_id, participants.c.joined_at
        ).where(participants.c.conversation_id.in_(conversation_ids))
    ):
        members.setdefault(row.conversation_id, []).append((row.user_id, row.joined_at))
    # A group member who joined after a message never saw it, so is told nothing of its changes.
    created: dict[uuid.UUID, datetime] = {}
    if any(
        joined is not None for joined_members in members.values() for _, joined in joined_members
    ):
        created = {
            row.id: row.created_at
            for row in await conn.execute(
                select(messages.c.id, messages.c.created_at).where(
                    messages.c.id.in_({e.message_id for e in entries})
                )
            )
        }
    per_user: dict[str, list[LogEntry]] = {}
    for entry in entries:
        for user_id, joined in members.get(entry.conversation_id, ()):
            if joined is not None and created[entry.message_id] < joined:
                continue
            per_user.setdefault(user_id, []).append(entry)
    return await log_for_users(conn, per_user)


async def log_for_users(
    conn: AsyncConnection, per_user: Mapping[str, Sequence[LogEntry]]
) -> list[Change]:
    """Append each user's entries to that user's log, in the order given; inside a transaction.

    The counters move in user order (every writer locks them in that order, so none deadlock),
    and each user's share is contiguous, so one event can announce a run of its positions.
    """
    per_user = {u: list(e) for u, e in per_user.items() if e}
    if not per_user:
        return []
    statement = _insert(conn, user_streams).values(
        [{"user_id": u, "position": len(per_user[u])} for u in sorted(per_user)]
    )
    bumped = await conn.execute(
        statement.on_conflict_do_update(
            index_elements=[user_streams.c.user_id],
            set_={"position": user_streams.c.position + statement.excluded.position},
        ).returning(user_streams.c.user_id, user_streams.c.position)
    )
    changes: list[Change] = []
    for row in bumped:
        mine = per_user[row.user_id]
        start = row.position - len(mine) + 1
        changes.extend(
            Change(
                row.user_id,
                start + i,
                e.message_id,
                e.kind,
                e.actor_id,
                e.changed_at,
                e.conversation_id,
                e.emoji,
            )
            for i, e in enumerate(mine)
        )
    await conn.execute(
        user_changes.insert().values(
            [
                {
                    "user_id": c.user_id,
                    "position": c.position,
                    "message_id": c.message_id,
                    "kind": c.kind,
                    "actor_id": c.actor_id,
                    "changed_at": c.changed_at,
                    "emoji": c.emoji,
                }
                for c in changes
            ]
        )
    )
    return changes


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
    group member joined); one range scan of the history index."""
    query = select(*_MESSAGE_COLUMNS).where(messages.c.conversation_id == conversation_id)
    if not_before is not None:
        query = query.where(messages.c.created_at >= not_before)
    if before is not None:
        query = query.where(tuple_(messages.c.created_at, messages.c.id) < tuple_(*before))
    query = query.order_by(messages.c.created_at.desc(), messages.c.id.desc()).limit(limit)
    return [_message(row) for row in await conn.execute(query)]


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


async def ping(conn: AsyncConnection) -> None:
    await conn.execute(text("SELECT 1"))


# For the feature modules under ``storage/``: the columns a MessageRecord is read from, the row
# mapping, and the backend's INSERT (with its on-conflict clauses).
MESSAGE_COLUMNS = _MESSAGE_COLUMNS
message_from_row = _message
dialect_insert = _insert
