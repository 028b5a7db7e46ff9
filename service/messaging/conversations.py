"""Conversations: who may open one, who takes part in one, the conversation list, typing, presence.

The rules over ``storage/conversations.py``. A direct conversation is between first-degree
connections who do not block each other, the same conversation for the same pair whoever opens
it; a group's rules are ``groups.py``'s (membership is read from the database, never from the
cache). ``conversation_for`` is the door every rule about a conversation's messages goes through
(``messages.py``): ``NOT_FOUND`` for a conversation that does not exist or a group one is not in,
``FORBIDDEN`` for a direct conversation of others.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from messaging import outbox, pages
from messaging.blocking import Blocks
from messaging.connections import ConnectionsChecker
from messaging.conversation_cache import ConversationCache
from messaging.errors import Forbidden, NotFound, ValidationFailed
from messaging.events import Typing
from messaging.groups import Groups
from messaging.presence import Presence, PresenceInfo
from messaging.publishing import Publisher
from messaging.records import ConversationRecord, ConversationSummary
from messaging.storage import conversations as sql
from messaging.transactions import Database
from messaging.views import MessageViews


class Conversations:
    """The conversation rules over a database, the Connections service and the blocks."""

    def __init__(
        self,
        *,
        database: Database,
        connections: ConnectionsChecker,
        blocks: Blocks,
        groups: Groups,
        presence: Presence,
        publisher: Publisher,
        views: MessageViews,
        cache: ConversationCache,
        cursor_key: bytes,
        events: outbox.Outbox | None = None,
    ) -> None:
        self._database = database
        # Webhook events, written in the transaction of each change (none configured: a no-op).
        self._outbox = events or outbox.Outbox([])
        self._connections = connections
        self._blocks = blocks
        self._groups = groups
        self._presence = presence
        self._publisher = publisher
        self._views = views
        self._cache = cache
        self._cursor_key = cursor_key

    async def create_conversation(self, user_id: str, other_user_id: str) -> ConversationRecord:
        if other_user_id == user_id:
            raise ValidationFailed("cannot open a conversation with yourself")
        await self._blocks.check_may_message(user_id, other_user_id)
        if not await self._connections.is_connected(user_id, other_user_id):
            raise Forbidden("you can only message your first-degree connections")
        async with self._database.transaction() as conn:
            conversation, created = await sql.get_or_create_conversation(
                conn,
                conversation_id=uuid.uuid4(),
                user_a=user_id,
                user_b=other_user_id,
                created_at=datetime.now(UTC),
            )
            if created:
                await self._outbox.record(
                    conn,
                    "conversation.created",
                    outbox.conversation_created(conversation),
                    at=conversation.created_at,
                )
        self._cache.remember(conversation)
        return conversation

    async def conversation_for(
        self, user_id: str, conversation_id: uuid.UUID
    ) -> tuple[ConversationRecord, str]:
        """The conversation and its other participant, if ``user_id`` takes part in it.

        For a group, the other participant is "" and membership is read from the database
        (members change; the cached record is a snapshot): ``NOT_FOUND`` for non-members.
        """
        conversation = self._cache.get(conversation_id)
        if conversation is None:
            async with self._database.connection() as conn:
                conversation = await sql.get_conversation(conn, conversation_id)
            if conversation is None:
                raise NotFound("no such conversation")
            self._cache.remember(conversation)
        if conversation.kind == "group":
            await self._groups.require_member(user_id, conversation_id)
            return conversation, ""
        if user_id not in conversation.participant_ids:
            raise Forbidden("you are not a participant of this conversation")
        low, high = conversation.participant_ids
        return conversation, high if user_id == low else low

    async def groups_among(
        self, conn: AsyncConnection, conversation_ids: set[uuid.UUID]
    ) -> set[uuid.UUID]:
        """Which of these conversations are groups (a conversation's kind never changes)."""
        for conversation_id in self._cache.unknown(conversation_ids):
            conversation = await sql.get_conversation(conn, conversation_id)
            if conversation is not None:
                self._cache.remember(conversation)
        return {
            c
            for c in conversation_ids
            if (known := self._cache.get(c)) is not None and known.kind == "group"
        }

    async def list_conversations(
        self, user_id: str, *, page_size: int, page_token: str
    ) -> pages.Page[ConversationSummary]:
        limit = pages.page_size(page_size)
        cursor = pages.PageCursor(self._cursor_key, kind="conversations", scope=user_id)
        before = cursor.decode(page_token)

        async def read(conn: AsyncConnection) -> list[ConversationSummary]:
            rows = await sql.list_conversations(
                conn, user_id=user_id, limit=limit + 1, before=before
            )
            return await self._fill_summaries(conn, rows)

        rows = await self._database.read("conversations", read)
        return cursor.page(rows, limit, lambda s: (s.activity_at, s.conversation.id))

    async def _fill_summaries(
        self, conn: AsyncConnection, rows: list[ConversationSummary]
    ) -> list[ConversationSummary]:
        last = [s.last_message for s in rows if s.last_message is not None]
        filled = {m.id: m for m in await self._views.fill(conn, last)}
        return [
            replace(s, last_message=filled[s.last_message.id]) if s.last_message else s
            for s in rows
        ]

    async def typing(
        self,
        user_id: str,
        *,
        conversation_id: uuid.UUID,
        is_typing: bool,
        origin_sid: str | None = None,
    ) -> None:
        conversation, other = await self.conversation_for(user_id, conversation_id)
        users = [other, user_id]
        if conversation.kind == "group":
            users = await self._groups.member_ids(conversation_id)
        # Between a blocked pair typing goes nowhere, either way (the ack is the same: nothing
        # is told).
        hidden = await self._blocks.either_blocks(user_id, [u for u in users if u != user_id])
        await self._publisher.to_users(
            [u for u in users if u not in hidden],
            Typing(conversation_id, user_id, is_typing),
            skip_sid=origin_sid,
        )

    async def presence(self, user_id: str, user_ids: Sequence[str]) -> dict[str, PresenceInfo]:
        """Presence of the users the caller shares a conversation with; others are left out, and
        so are users the caller blocks or is blocked by (as if unknown)."""
        async with self._database.connection() as conn:
            shared = await sql.users_sharing_a_conversation(
                conn, user_id=user_id, candidates=user_ids
            )
        if shared:
            shared -= await self._blocks.either_blocks(user_id, shared)
        return await self._presence.lookup(u for u in user_ids if u in shared)
