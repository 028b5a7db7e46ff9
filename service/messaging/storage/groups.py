"""The SQL of group conversations: creating a group, its members, joining and leaving.

A group's row has no pair (``user_low``/``user_high`` are NULL): its members are the rows of
``participants``, each with when it joined. Leaving deletes the member's row, so every statement
that joins ``participants`` (delivery's change log, presence, the conversation list, visible
messages) stops counting the member at once, with no filter to forget.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from messaging.records import ConversationRecord
from messaging.tables import conversations, participants


def insert(conn: AsyncConnection, table: Any) -> Any:
    """An INSERT with ``on_conflict_do_nothing`` for whichever backend this connection uses."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


@dataclass(frozen=True, slots=True)
class Member:
    """A member's row: when it joined (None in a direct conversation) and its read position."""

    user_id: str
    joined_at: datetime | None
    read_through: tuple[datetime, uuid.UUID] | None


async def create_group(
    conn: AsyncConnection,
    *,
    conversation_id: uuid.UUID,
    title: str,
    created_by: str,
    client_conversation_id: str | None,
    members: Sequence[str],
    created_at: datetime,
) -> tuple[uuid.UUID, bool]:
    """Create the group with ``members`` (the creator included); True when this call made it.

    A repeated ``(created_by, client_conversation_id)`` collides on the unique constraint and
    returns the existing group's id instead (also when two repeats race).
    """
    statement = insert(conn, conversations).values(
        id=conversation_id,
        kind="group",
        title=title,
        created_by=created_by,
        client_conversation_id=client_conversation_id,
        created_at=created_at,
    )
    if client_conversation_id is not None:
        statement = statement.on_conflict_do_nothing(
            index_elements=[conversations.c.created_by, conversations.c.client_conversation_id]
        )
    inserted = await conn.execute(statement.returning(conversations.c.id))
    if inserted.first() is None:
        existing = (
            await conn.execute(
                select(conversations.c.id).where(
                    conversations.c.created_by == created_by,
                    conversations.c.client_conversation_id == client_conversation_id,
                )
            )
        ).scalar_one()
        return existing, False
    await conn.execute(
        participants.insert().values(
            [
                {"conversation_id": conversation_id, "user_id": user, "joined_at": created_at}
                for user in sorted(set(members))
            ]
        )
    )
    return conversation_id, True


async def lock_group(conn: AsyncConnection, conversation_id: uuid.UUID) -> str | None:
    """The conversation's kind, its row locked until commit on PostgreSQL (None: no such row).

    Membership changes of one group take this lock first, so two concurrent adds cannot both see
    room for the last member; SQLite has a single writer anyway.
    """
    query = select(conversations.c.kind).where(conversations.c.id == conversation_id)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    kind: str | None = (await conn.execute(query)).scalar()
    return kind


async def member(
    conn: AsyncConnection, conversation_id: uuid.UUID, user_id: str, *, lock: bool = False
) -> Member | None:
    """The member's row; ``lock`` holds it until commit on PostgreSQL (a markRead's position)."""
    query = select(
        participants.c.user_id,
        participants.c.joined_at,
        participants.c.read_through_at,
        participants.c.read_through_id,
    ).where(
        participants.c.conversation_id == conversation_id,
        participants.c.user_id == user_id,
    )
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = (await conn.execute(query)).first()
    if row is None:
        return None
    through = None
    if row.read_through_at is not None and row.read_through_id is not None:
        through = (row.read_through_at, row.read_through_id)
    return Member(row.user_id, row.joined_at, through)


async def member_ids(conn: AsyncConnection, conversation_id: uuid.UUID) -> list[str]:
    rows = await conn.execute(
        select(participants.c.user_id)
        .where(participants.c.conversation_id == conversation_id)
        .order_by(participants.c.user_id)
    )
    return list(rows.scalars())


async def add_members(
    conn: AsyncConnection, conversation_id: uuid.UUID, user_ids: Sequence[str], joined_at: datetime
) -> None:
    """Add members who are not members yet (one statement; existing rows are left alone)."""
    if not user_ids:
        return
    await conn.execute(
        insert(conn, participants)
        .values(
            [
                {"conversation_id": conversation_id, "user_id": user, "joined_at": joined_at}
                for user in sorted(set(user_ids))
            ]
        )
        .on_conflict_do_nothing(
            index_elements=[participants.c.conversation_id, participants.c.user_id]
        )
    )


async def remove_member(conn: AsyncConnection, conversation_id: uuid.UUID, user_id: str) -> bool:
    """Delete the member's row (with its read position); False if it was not a member."""
    result = await conn.execute(
        delete(participants)
        .where(
            participants.c.conversation_id == conversation_id,
            participants.c.user_id == user_id,
        )
        .returning(participants.c.user_id)
    )
    return result.first() is not None


def with_members(conversation: ConversationRecord, members: Sequence[str]) -> ConversationRecord:
    """The group record with its current members."""
    return ConversationRecord(
        id=conversation.id,
        participant_ids=tuple(sorted(members)),
        created_at=conversation.created_at,
        kind=conversation.kind,
        title=conversation.title,
        created_by=conversation.created_by,
    )


async def find_group(
    conn: AsyncConnection, *, created_by: str, client_conversation_id: str
) -> uuid.UUID | None:
    """The group this creator made with this idempotency key, if any."""
    found: uuid.UUID | None = (
        await conn.execute(
            select(conversations.c.id).where(
                conversations.c.created_by == created_by,
                conversations.c.client_conversation_id == client_conversation_id,
            )
        )
    ).scalar()
    return found
