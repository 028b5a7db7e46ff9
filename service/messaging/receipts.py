"""Per-member delivery and read state in groups, and receipts (who received, who read).

In a direct conversation the message's own status is the recipient's state, as it always was
(``messages.py`` keeps that path). In a group each member has its own: a delivery row per message it
received, and a read position (the last message it read). A message's ``status`` is the lowest
over the members other than its author who were members when it was sent, so it reads "read" once
all of them have read it.

What is logged, so live delivery, ``syncMessages {since}`` and delivery's healing carry it:
``markDelivered`` logs each newly received message for its author and for the marker (one
``messageStatus`` each, naming the member). ``markRead`` moves a position, so it logs one entry per
author whose messages it covered (the newest of them: the member read everything of theirs up to
it) and one for the marker (the message it read up to). Rows written per call depend on the
messages named or authors covered, never on the group's size times the messages.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from messaging.errors import Forbidden, NotFound
from messaging.records import Change, LogEntry, MessageRecord, Receipt
from messaging.storage import conversations as conversation_sql
from messaging.storage import groups as group_sql
from messaging.storage import messages as message_sql
from messaging.storage import receipts as sql
from messaging.transactions import Database


async def mark_delivered(
    conn: AsyncConnection, *, user_id: str, messages: Sequence[MessageRecord], at: datetime
) -> list[Change]:
    """Record the caller's deliveries of group messages it may see (call in a transaction).

    A message sent before the caller joined is not one it may see: ``NOT_FOUND``, as for a
    message of a conversation it is not in.
    """
    joined: dict[uuid.UUID, datetime | None] = {}
    for conversation_id in {m.conversation_id for m in messages}:
        member = await group_sql.member(conn, conversation_id, user_id)
        joined[conversation_id] = None if member is None else member.joined_at
    hidden = [
        str(m.id)
        for m in messages
        if (at_join := joined.get(m.conversation_id)) is not None and m.created_at < at_join
    ]
    if hidden:
        raise NotFound("some messages do not exist or are not yours", details=hidden)
    new = await sql.record_deliveries(
        conn, user_id=user_id, message_ids=[m.id for m in messages], at=at
    )
    if not new:
        return []
    await sql.promote_delivered(conn, list(new))
    moved = sorted((m for m in messages if m.id in new), key=lambda m: (m.conversation_id, m.id))
    per_user: dict[str, list[LogEntry]] = {user_id: []}
    for conversation_id in {m.conversation_id for m in moved}:
        mine = [m for m in moved if m.conversation_id == conversation_id]
        present = await sql.current_members(conn, conversation_id, [m.author_id for m in mine])
        for message in mine:
            entry = LogEntry(conversation_id, message.id, "delivered", user_id, at)
            per_user[user_id].append(entry)
            if message.author_id in present:
                per_user.setdefault(message.author_id, []).append(entry)
    return await sql.log_for_users(conn, per_user)


async def mark_read(
    conn: AsyncConnection, *, user_id: str, target: MessageRecord, at: datetime
) -> tuple[int, list[Change]]:
    """Move the caller's read position up to ``target``; returns how many messages of others
    it covered, and the log entries (call in a transaction)."""
    conversation_id = target.conversation_id
    member = await group_sql.member(conn, conversation_id, user_id, lock=True)
    if member is None:
        raise NotFound("no such conversation")
    if member.joined_at is not None and target.created_at < member.joined_at:
        raise NotFound("no such message in this conversation")
    through = (target.created_at, target.id)
    after = member.read_through
    if after is not None and after >= through:
        return 0, []  # read stays read: the position never moves back
    covered = await sql.messages_between(
        conn,
        conversation_id=conversation_id,
        reader=user_id,
        after=after,
        through=through,
        joined_at=member.joined_at,
    )
    await sql.move_read_position(
        conn, conversation_id=conversation_id, user_id=user_id, through=through
    )
    await sql.append_read_mark(
        conn, conversation_id=conversation_id, user_id=user_id, through=through, at=at
    )
    if not covered:
        return 0, []
    await sql.promote_read(conn, conversation_id=conversation_id, after=after, through=through)
    newest: dict[str, uuid.UUID] = {}
    for message_id, author in covered:  # oldest first: the last one per author is its newest
        newest[author] = message_id
    present = await sql.current_members(conn, conversation_id, list(newest))
    per_user = {
        author: [LogEntry(conversation_id, message_id, "read", user_id, at)]
        for author, message_id in newest.items()
        if author in present
    }
    per_user[user_id] = [LogEntry(conversation_id, target.id, "read", user_id, at)]
    return len(covered), await sql.log_for_users(conn, per_user)


class Receipts:
    """getReceipts: the author asks who received and who read one of its messages."""

    def __init__(self, *, database: Database) -> None:
        self._database = database

    async def get(self, user_id: str, message_id: uuid.UUID) -> list[Receipt]:
        async with self._database.connection() as conn:
            message = await message_sql.get_message(conn, message_id)
            conversation = (
                None
                if message is None
                else await conversation_sql.get_conversation(conn, message.conversation_id)
            )
            if (
                message is None
                or conversation is None
                or user_id not in conversation.participant_ids
            ):
                raise NotFound("no such message")
            if message.author_id != user_id:
                raise Forbidden("only the author of a message can see its receipts")
            if conversation.kind == "group":
                return await sql.group_receipts(
                    conn,
                    conversation_id=conversation.id,
                    message_id=message.id,
                    author_id=user_id,
                    created_at=message.created_at,
                )
            [other] = [u for u in conversation.participant_ids if u != user_id]
            return await sql.direct_receipts(
                conn, message_id=message.id, author_id=user_id, other_id=other
            )
