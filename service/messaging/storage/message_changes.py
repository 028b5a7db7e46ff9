"""SQL of edits, deletes and reactions (``message_changes.py`` holds their rules).

A message's row is locked (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite has one writer) by
every change to it, so an edit racing a delete, or two reactions racing for the last of the
per-message emoji slots, are decided one after the other on the row as it then is.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from messaging.records import MessageRecord
from messaging.store import MESSAGE_COLUMNS, dialect_insert, message_from_row, one_of_ids
from messaging.tables import message_reactions, messages, participants

Reactions = tuple[tuple[str, tuple[str, ...]], ...]


async def lock_visible_message(
    conn: AsyncConnection, *, message_id: uuid.UUID, user_id: str
) -> MessageRecord | None:
    """The message, row-locked until the transaction ends, if ``user_id`` takes part in its
    conversation; None otherwise (a stranger learns nothing about whether it exists)."""
    row = (
        await conn.execute(
            select(*MESSAGE_COLUMNS)
            .join(
                participants,
                and_(
                    participants.c.conversation_id == messages.c.conversation_id,
                    participants.c.user_id == user_id,
                ),
            )
            .where(
                messages.c.id == message_id,
                # A group member who joined later never saw the messages from before.
                or_(
                    participants.c.joined_at.is_(None),
                    messages.c.created_at >= participants.c.joined_at,
                ),
            )
            .with_for_update(of=messages)
        )
    ).first()
    return None if row is None else message_from_row(row)


async def replace_content(
    conn: AsyncConnection, *, message_id: uuid.UUID, content: str, at: datetime
) -> MessageRecord:
    """Overwrite the content in place: no earlier version is kept anywhere."""
    row = (
        await conn.execute(
            update(messages)
            .where(messages.c.id == message_id)
            .values(content=content, edited_at=at)
            .returning(*MESSAGE_COLUMNS)
        )
    ).one()
    return message_from_row(row)


async def erase(conn: AsyncConnection, *, message_id: uuid.UUID, at: datetime) -> MessageRecord:
    """Make the message a tombstone: its content and its reactions are removed from storage
    (the row keeps its id, conversation, author, time and status, so history and sync stay
    consistent)."""
    await conn.execute(
        delete(message_reactions).where(message_reactions.c.message_id == message_id)
    )
    row = (
        await conn.execute(
            update(messages)
            .where(messages.c.id == message_id)
            .values(content="", deleted_at=at)
            .returning(*MESSAGE_COLUMNS)
        )
    ).one()
    return message_from_row(row)


async def distinct_emoji(conn: AsyncConnection, message_id: uuid.UUID) -> set[str]:
    rows = await conn.execute(
        select(message_reactions.c.emoji)
        .distinct()
        .where(message_reactions.c.message_id == message_id)
    )
    return {row.emoji for row in rows}


async def add_reaction(
    conn: AsyncConnection, *, message_id: uuid.UUID, emoji: str, user_id: str, at: datetime
) -> bool:
    """True when this call added it (False: the user had already reacted so)."""
    inserted = await conn.execute(
        dialect_insert(conn, message_reactions)
        .values(message_id=message_id, emoji=emoji, user_id=user_id, created_at=at)
        .on_conflict_do_nothing()
        .returning(message_reactions.c.user_id)
    )
    return inserted.first() is not None


async def remove_reaction(
    conn: AsyncConnection, *, message_id: uuid.UUID, emoji: str, user_id: str
) -> bool:
    """True when this call removed it (False: there was no such reaction)."""
    removed = await conn.execute(
        delete(message_reactions)
        .where(
            message_reactions.c.message_id == message_id,
            message_reactions.c.emoji == emoji,
            message_reactions.c.user_id == user_id,
        )
        .returning(message_reactions.c.user_id)
    )
    return removed.first() is not None


async def reactions_of(
    conn: AsyncConnection, message_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, Reactions]:
    """Each message's reactions: emoji in the order first given, users in the order they
    reacted. One query for a whole page (it uses the primary key's ``message_id`` prefix)."""
    if not message_ids:
        return {}
    query = _reactions_query(postgres=conn.dialect.name == "postgresql")
    rows = await conn.execute(query, {"ids": list(set(message_ids))})
    given: dict[uuid.UUID, list[tuple[str, str]]] = {}
    for row in rows:
        given.setdefault(row.message_id, []).append((row.emoji, row.user_id))
    return {message: grouped(pairs) for message, pairs in given.items()}


def grouped(given: Iterable[tuple[str, str]]) -> Reactions:
    """(emoji, users) in the order each emoji was first given, users in the order they reacted,
    from one message's (emoji, user) reactions in the order they were given."""
    by_emoji: dict[str, list[str]] = {}
    for emoji, user in given:
        by_emoji.setdefault(emoji, []).append(user)
    return tuple((emoji, tuple(users)) for emoji, users in by_emoji.items())


@functools.cache
def _reactions_query(*, postgres: bool) -> Select[Any]:
    """Built once."""
    column = message_reactions.c.message_id
    return (
        select(column, message_reactions.c.emoji, message_reactions.c.user_id)
        .where(one_of_ids(column, "ids", postgres=postgres))
        .order_by(message_reactions.c.created_at, message_reactions.c.user_id)
    )


async def with_reactions(
    conn: AsyncConnection, records: Sequence[MessageRecord]
) -> list[MessageRecord]:
    """``records`` with their reactions filled in (deleted messages have none)."""
    wanted = [r.id for r in records if r.deleted_at is None]
    found = await reactions_of(conn, wanted)
    if not found:
        return list(records)
    return [replace(r, reactions=found[r.id]) if r.id in found else r for r in records]
