"""Group conversations: who may create one, add members, leave; and what members are told.

The first-degree-connection rule holds at the door instead of on every message: whoever brings
someone into a group (its creator, or a member adding people) must be connected to each of them,
and, once the blocking rules exist, neither may block the other. Inside the group, membership is
the rule for sending, reading and typing. A member who left is not a member (its row is gone): it
gets ``NOT_FOUND`` for the group, nothing more is delivered to it, and it no longer counts for a
message's status. A member who joins sees messages from the moment it joined.

Connection checks for a batch of new members run concurrently, in one round of Connections calls
(each cached like the per-message check), and fail closed: one error refuses the whole change.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from collections.abc import Set as AbstractSet
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from messaging.connections import ConnectionsChecker
from messaging.errors import Forbidden, NotFound, ValidationFailed
from messaging.events import ConversationChanged
from messaging.outbox import Outbox
from messaging.publishing import Publisher
from messaging.records import ConversationRecord
from messaging.storage import conversations as conversation_sql
from messaging.storage import groups as sql
from messaging.storage import receipts as receipt_sql
from messaging.storage.groups import Member
from messaging.transactions import Database

log = logging.getLogger(__name__)

# Who among ``others`` blocks ``user_id`` or is blocked by it, in one query
# (``Blocks.either_blocks``; passed in so the group rules need not know the cache).
BlockCheck = Callable[[str, Sequence[str]], Awaitable[AbstractSet[str]]]


class Groups:
    def __init__(
        self,
        *,
        database: Database,
        connections: ConnectionsChecker,
        publisher: Publisher,
        max_members: int,
        blocked: BlockCheck,
        events: Outbox | None = None,
    ) -> None:
        self._database = database
        # Webhook events, recorded in each change's transaction (none configured: a no-op);
        # the outbox encodes each change's domain event (``Outbox.record_conversation_change``).
        self._events = events or Outbox([])
        self._connections = connections
        self._publisher = publisher
        self._max_members = max_members
        self._blocked = blocked

    # --- the rule at the door -------------------------------------------------------------------

    async def admit(self, by: str, newcomers: Sequence[str]) -> None:
        """``by`` may bring ``newcomers`` in: connected to each, and no block between them.

        One concurrent round of Connections calls; any error fails the whole change closed
        (``UNAVAILABLE``), any stranger refuses it (``FORBIDDEN``, naming them).
        """
        if not newcomers:
            return
        answers = await asyncio.gather(
            *(self._connections.is_connected(by, user) for user in newcomers),
            return_exceptions=True,
        )
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
        strangers = {u for u, connected in zip(newcomers, answers, strict=True) if not connected}
        # A block either way keeps a user out, as it keeps them out of a direct conversation;
        # it is refused in the words of "not a connection", so a blocked user learns nothing.
        strangers |= await self._blocked(by, [u for u in newcomers if u not in strangers])
        if strangers:
            raise Forbidden(
                "you can only add your first-degree connections to a group",
                details=sorted(strangers),
            )

    def _check_size(self, members: int) -> None:
        if members > self._max_members:
            raise ValidationFailed(
                f"a group has at most {self._max_members} members", details={"members": members}
            )

    # --- the operations -------------------------------------------------------------------------

    async def create(
        self,
        user_id: str,
        *,
        participant_ids: Sequence[str],
        title: str,
        client_conversation_id: str | None,
        origin_sid: str | None = None,
    ) -> ConversationRecord:
        """A new group of the caller and ``participant_ids``; a repeated
        ``client_conversation_id`` of the same creator returns the same group, unchanged."""
        others = list(dict.fromkeys(participant_ids))
        if user_id in others:
            raise ValidationFailed("list the other members: you are in the group already")
        self._check_size(len(others) + 1)
        if client_conversation_id is not None:
            async with self._database.connection() as conn:
                existing = await sql.find_group(
                    conn, created_by=user_id, client_conversation_id=client_conversation_id
                )
                if existing is not None:
                    return await self._visible(conn, user_id, existing)
        await self.admit(user_id, others)
        now = datetime.now(UTC)
        async with self._database.transaction() as conn:
            conversation_id, created = await sql.create_group(
                conn,
                conversation_id=uuid.uuid4(),
                title=title,
                created_by=user_id,
                client_conversation_id=client_conversation_id,
                members=[user_id, *others],
                created_at=now,
            )
            conversation = await self._visible(conn, user_id, conversation_id)
            change = ConversationChanged(conversation, "created", tuple(others), user_id)
            if created:
                await self._events.record_conversation_change(conn, change, at=now)
        if created:
            await self._announce(
                change, recipients=conversation.participant_ids, origin_sid=origin_sid
            )
        return conversation

    async def add_participants(
        self,
        user_id: str,
        *,
        conversation_id: uuid.UUID,
        user_ids: Sequence[str],
        origin_sid: str | None = None,
    ) -> ConversationRecord:
        """Add the caller's connections; those already members are left as they are."""
        wanted = list(dict.fromkeys(user_ids))
        async with self._database.connection() as conn:
            before = await self._group_of(conn, user_id, conversation_id)
        newcomers = [u for u in wanted if u not in before.participant_ids]
        if not newcomers:
            return before
        self._check_size(len(before.participant_ids) + len(newcomers))
        await self.admit(user_id, newcomers)
        async with self._database.transaction() as conn:
            await sql.lock_group(conn, conversation_id)
            current = await self._group_of(conn, user_id, conversation_id)
            joining = [u for u in newcomers if u not in current.participant_ids]
            self._check_size(len(current.participant_ids) + len(joining))
            await sql.add_members(conn, conversation_id, joining, datetime.now(UTC))
            after = sql.with_members(current, [*current.participant_ids, *joining])
            change = ConversationChanged(after, "joined", tuple(joining), user_id)
            if joining:
                await self._events.record_conversation_change(conn, change)
        if joining:
            await self._announce(change, recipients=after.participant_ids, origin_sid=origin_sid)
        return after

    async def leave(
        self, user_id: str, *, conversation_id: uuid.UUID, origin_sid: str | None = None
    ) -> None:
        async with self._database.transaction() as conn:
            await sql.lock_group(conn, conversation_id)
            current = await self._group_of(conn, user_id, conversation_id)
            leaving = await sql.member(conn, conversation_id, user_id)
            await sql.remove_member(conn, conversation_id, user_id)
            if leaving is not None:
                # It no longer counts for a message's status: what only it held back moves on.
                await receipt_sql.settle_after_leaving(
                    conn,
                    conversation_id=conversation_id,
                    after=leaving.read_through,
                    joined_at=leaving.joined_at,
                )
            after = sql.with_members(current, [u for u in current.participant_ids if u != user_id])
            change = ConversationChanged(after, "left", (user_id,), user_id)
            await self._events.record_conversation_change(conn, change)
        # The member who left is told on all its devices (the others drop the group from view).
        await self._announce(
            change, recipients=[*after.participant_ids, user_id], origin_sid=origin_sid
        )

    # --- membership, for the rules of messages --------------------------------------------------

    async def require_member(self, user_id: str, conversation_id: uuid.UUID) -> Member:
        """The caller's membership of a group; ``NOT_FOUND`` for anyone else (also one who
        left: a group's existence is not told to non-members)."""
        async with self._database.connection() as conn:
            found = await sql.member(conn, conversation_id, user_id)
        if found is None:
            raise NotFound("no such conversation")
        return found

    async def member_ids(self, conversation_id: uuid.UUID) -> list[str]:
        async with self._database.connection() as conn:
            return await sql.member_ids(conn, conversation_id)

    async def _visible(
        self, conn: AsyncConnection, user_id: str, conversation_id: uuid.UUID
    ) -> ConversationRecord:
        conversation = await conversation_sql.get_conversation(conn, conversation_id)
        if conversation is None or user_id not in conversation.participant_ids:
            raise NotFound("no such conversation")
        return conversation

    async def _group_of(
        self, conn: AsyncConnection, user_id: str, conversation_id: uuid.UUID
    ) -> ConversationRecord:
        conversation = await conversation_sql.get_conversation(conn, conversation_id)
        if conversation is None:
            raise NotFound("no such conversation")
        if conversation.kind != "group":
            if user_id not in conversation.participant_ids:
                raise Forbidden("you are not a participant of this conversation")
            raise ValidationFailed("only a group's membership can change")
        if user_id not in conversation.participant_ids:
            raise NotFound("no such conversation")
        return conversation

    async def _announce(
        self,
        change: ConversationChanged,
        *,
        recipients: Sequence[str],
        origin_sid: str | None,
    ) -> None:
        """Fan the change out (the same event its transaction recorded for the webhooks)."""
        # A failed fan-out is logged, not raised: the change is committed; clients see it in
        # listConversations.
        await self._publisher.to_users(list(recipients), change, skip_sid=origin_sid)
