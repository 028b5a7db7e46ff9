"""Messages: sending, delivered and read, a device's catch-up, a conversation's history, the log.

The rules over ``storage/messages.py``. A message is acknowledged only after its transaction
committed (a batch of the group committer, ``commits.py``, or, when it names uploads, a
transaction of its own: ``AttachmentRules.commit_message``); it is fanned out after that, and a
failed fan-out never fails the send (PostgreSQL is the source of truth: devices heal from their
change log, or catch up with ``syncMessages``). Every change is appended to each participant's
change log in the same transaction, so what a device is told live and what it reads by sync agree.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from messaging import metrics, outbox, pages, receipts
from messaging.attachments import AttachmentRules
from messaging.blocking import Blocks
from messaging.commits import GroupCommitter
from messaging.connections import ConnectionsChecker
from messaging.conversations import Conversations
from messaging.cursor import decode_sync_token, encode_sync_token
from messaging.errors import Forbidden, NotFound, ValidationFailed
from messaging.events import (
    LogEvent,
    MessageDeleted,
    MessageEdited,
    MessageEvent,
    MessageSent,
    ReactionChanged,
    StatusChanged,
)
from messaging.groups import Groups
from messaging.ids import new_message_id
from messaging.publishing import Publisher
from messaging.records import Change, MessageRecord, NewMessage
from messaging.storage import messages as sql
from messaging.transactions import Database
from messaging.views import MessageViews

HEAL_PAGE = 200


@dataclass(frozen=True, slots=True)
class SyncPage:
    messages: list[MessageRecord]
    has_more: bool
    sync_token: str | None  # None for ``after``: that walk skips older messages' changes


class Messages:
    """The message rules, behind ``Conversations.conversation_for``."""

    def __init__(
        self,
        *,
        database: Database,
        conversations: Conversations,
        groups: Groups,
        connections: ConnectionsChecker,
        blocks: Blocks,
        publisher: Publisher,
        views: MessageViews,
        cursor_key: bytes,
        attachments: AttachmentRules,
        events: outbox.Outbox | None = None,
    ) -> None:
        self._database = database
        self._conversations = conversations
        self._groups = groups
        self._views = views
        # Webhook events, written in the transaction of each change (none configured: a no-op).
        self._outbox = events or outbox.Outbox([])
        # A message naming uploads commits through the attachment rules (attachments.py).
        self._attachments = attachments
        self._connections = connections
        self._blocks = blocks
        self._publisher = publisher
        self._cursor_key = cursor_key
        # On PostgreSQL the committer keeps its connection between close batches; SQLite has one
        # connection, which readers need too.
        linger = 0.05 if database.engine.dialect.name == "postgresql" else 0.0
        self._committer = GroupCommitter(
            database.connection,
            linger_seconds=linger,
            events=self._outbox.message_events if self._outbox.enabled else None,
        )

    async def wait_idle(self) -> None:
        """Until the group committer has nothing pending."""
        await self._committer.wait_idle()

    async def send_message(
        self,
        user_id: str,
        *,
        conversation_id: uuid.UUID,
        content: str,
        client_message_id: str | None,
        origin_sid: str | None = None,
        attachment_ids: Sequence[uuid.UUID] = (),
    ) -> MessageRecord:
        """Store a message and deliver it; a repeated clientMessageId returns the original."""
        received = time.perf_counter()
        try:
            conversation, other = await self._conversations.conversation_for(
                user_id, conversation_id
            )
            # In a group, membership is the rule (connections and blocks were checked when
            # members joined); in a direct conversation both are checked on every message.
            if conversation.kind != "group":
                await self._blocks.check_may_message(user_id, other)
            if conversation.kind != "group" and not await self._connections.is_connected(
                user_id, other
            ):
                raise Forbidden("you can only message your first-degree connections")
            message_id, created_at = new_message_id()
            new = NewMessage(
                id=message_id,
                conversation_id=conversation_id,
                author_id=user_id,
                content=content,
                created_at=created_at,
                client_message_id=client_message_id,
            )
            if attachment_ids:
                message, stored = await self._attachments.commit_message(new, attachment_ids)
            else:
                message, stored = await self._committer.commit(new)
        except Exception as exc:
            metrics.MESSAGES_SENT.labels(outcome=getattr(exc, "code", "INTERNAL")).inc()
            raise
        committed_at = time.time()
        metrics.SEND_TO_COMMIT.observe(time.perf_counter() - received)
        (metrics.MESSAGES_STORED if stored else metrics.MESSAGES_DUPLICATE).inc()
        # A repeat is delivered again: the original's sender may have crashed between its commit
        # and its fan-out. Devices that already have it drop it by its log position.
        event = MessageSent(message)
        await self._publisher.logged(
            [LogEvent(user, position, position, event) for user, position in message.positions],
            skip_sid=origin_sid,
            committed_at=committed_at if stored else None,
        )
        return message

    async def mark_delivered(
        self, user_id: str, message_ids: Sequence[uuid.UUID], *, origin_sid: str | None = None
    ) -> int:
        wanted = list(dict.fromkeys(message_ids))
        async with self._database.transaction() as conn:
            visible = await sql.visible_messages(conn, user_id=user_id, message_ids=wanted)
            found = {m.id for m in visible}
            missing = [str(i) for i in wanted if i not in found]
            if missing:
                raise NotFound("some messages do not exist or are not yours", details=missing)
            own = [str(m.id) for m in visible if m.author_id == user_id]
            if own:
                raise Forbidden("only a recipient can mark a message delivered", details=own)
            at = datetime.now(UTC)
            groups = await self._conversations.groups_among(
                conn, {m.conversation_id for m in visible}
            )
            in_groups = [m for m in visible if m.conversation_id in groups]
            direct = [i for i in wanted if i not in {m.id for m in in_groups}]
            changes: list[Change] = []
            if direct:
                changes = await sql.advance_status(
                    conn, status="delivered", message_ids=direct, not_author=user_id, at=at
                )
            if in_groups:
                changes += await receipts.mark_delivered(
                    conn, user_id=user_id, messages=in_groups, at=at
                )
        return await self._announce_status(changes, origin_sid)

    async def mark_read(
        self,
        user_id: str,
        *,
        conversation_id: uuid.UUID,
        up_to_message_id: uuid.UUID,
        origin_sid: str | None = None,
    ) -> int:
        conversation, _ = await self._conversations.conversation_for(user_id, conversation_id)
        async with self._database.transaction() as conn:
            target = await sql.get_message(conn, up_to_message_id)
            if target is None or target.conversation_id != conversation_id:
                raise NotFound("no such message in this conversation")
            read_at = datetime.now(UTC)
            if conversation.kind == "group":
                # A read position per member (receipts.py): one row moves, whatever the size.
                covered, changes = await receipts.mark_read(
                    conn, user_id=user_id, target=target, at=read_at
                )
            else:
                covered = None
                changes = await sql.advance_status(
                    conn,
                    status="read",
                    conversation_id=conversation_id,
                    not_author=user_id,
                    up_to=(target.created_at, target.id),
                    at=read_at,
                )
            if changes or covered:
                await self._outbox.record(
                    conn,
                    "message.read",
                    outbox.message_read(
                        conversation_id=conversation_id,
                        user_id=user_id,
                        message_ids=list(dict.fromkeys(c.message_id for c in changes)),
                        up_to_message_id=target.id,
                        read_at=read_at,
                    ),
                    at=read_at,
                )
        announced = await self._announce_status(changes, origin_sid)
        return announced if covered is None else covered

    async def _announce_status(self, changes: Sequence[Change], origin_sid: str | None) -> int:
        """Tell every participant's devices which messages moved; returns how many moved.

        Authors learn their messages were delivered or read, the marker's other devices what it
        marked; each event covers one conversation's run of the recipient's log.
        """
        await self._publisher.logged(self._status_events(changes), skip_sid=origin_sid)
        return len({c.message_id for c in changes})

    def _status_events(self, changes: Sequence[Change]) -> list[LogEvent]:
        """One messageStatus per run of a user's log entries with the same conversation, status
        and marker (a run is contiguous: see ``store.append_changes``)."""
        events: list[LogEvent] = []
        run: list[Change] = []

        def flush() -> None:
            if not run:
                return
            head, tail = run[0], run[-1]
            event = StatusChanged(
                conversation_id=head.conversation_id,
                message_ids=tuple(c.message_id for c in run),
                status=head.kind,
                user_id=head.actor_id,
                at=head.changed_at,
            )
            events.append(LogEvent(head.user_id, head.position, tail.position, event))
            run.clear()

        for change in changes:
            if run:
                last = run[-1]
                if (
                    change.user_id != last.user_id
                    or change.position != last.position + 1
                    or change.conversation_id != last.conversation_id
                    or change.kind != last.kind
                    or change.actor_id != last.actor_id
                    or change.changed_at != last.changed_at
                ):
                    flush()
            run.append(change)
        flush()
        return events

    async def log_heads(self, user_ids: Sequence[str]) -> dict[str, int]:
        async with self._database.connection() as conn:
            return await sql.log_heads(conn, user_ids)

    async def log_events(self, user_id: str, after: int) -> list[LogEvent]:
        """The events a device of ``user_id`` missed after ``after``, as they were sent live
        (a message with its current state; status runs as one messageStatus each)."""
        async with self._database.connection() as conn:
            rows = await sql.changes_after(conn, user_id=user_id, after_pos=after, limit=HEAL_PAGE)
            filled = await self._views.fill(conn, [m for _, m in rows])
        events: list[LogEvent] = []
        statuses: list[Change] = []
        for (change, _), message in zip(rows, filled, strict=True):
            if change.kind in ("delivered", "read"):
                statuses.append(change)
                continue
            events.extend(self._status_events(statuses))
            statuses = []
            event = _change_event(change, message)
            events.append(LogEvent(user_id, change.position, change.position, event))
        events.extend(self._status_events(statuses))
        return events

    async def sync(
        self, user_id: str, *, after: uuid.UUID | None, since: str | None, limit: int
    ) -> SyncPage:
        """Catch-up for a device.

        ``since`` (a sync token): the latest state of every message changed after it, in change
        order, and the token to resume from. ``after`` (a message id): messages created after it,
        in commit order. Neither: every message, in commit order, with a token.
        """
        if after is not None and since is not None:
            raise ValidationFailed("give `after` or `since`, not both")
        async with self._database.connection() as conn:
            if since is not None:
                position = decode_sync_token(self._cursor_key, since, user_id=user_id)
                rows = await sql.changed_since(
                    conn, user_id=user_id, after_pos=position, limit=limit + 1
                )
                head = 0
            else:
                position = 0
                if after is not None:
                    found = await sql.created_position(conn, user_id=user_id, message_id=after)
                    if found is None:
                        raise NotFound("`after` is not a message of yours")
                    position = found
                rows, head = await sql.created_after(
                    conn, user_id=user_id, after_pos=position, limit=limit + 1
                )
            page, has_more = rows[:limit], len(rows) > limit
            shown = await self._views.fill(conn, [m for m, _ in page])
        token = None
        if since is not None:
            last = page[-1][1] if page else position
            token = encode_sync_token(self._cursor_key, user_id=user_id, position=last)
        elif after is None:
            # From the start: every change at or below the last creation returned concerns a
            # message of this page (nothing changes before it is created), read in the same
            # snapshot; with nothing more to page, that holds up to the log's head.
            last = head if not has_more else page[-1][1]
            token = encode_sync_token(self._cursor_key, user_id=user_id, position=last)
        return SyncPage(shown, has_more, token)

    async def history(
        self, user_id: str, *, conversation_id: uuid.UUID, page_size: int, page_token: str
    ) -> pages.Page[MessageRecord]:
        """A page of a conversation's messages, newest first."""
        limit = pages.page_size(page_size)
        conversation, _ = await self._conversations.conversation_for(user_id, conversation_id)
        joined_at = None
        if conversation.kind == "group":  # a member sees messages from the moment it joined
            joined_at = (await self._groups.require_member(user_id, conversation_id)).joined_at
        cursor = pages.PageCursor(self._cursor_key, kind="history", scope=str(conversation_id))
        before = cursor.decode(page_token)

        async def read(conn: AsyncConnection) -> list[MessageRecord]:
            rows = await sql.history_page(
                conn,
                conversation_id=conversation_id,
                limit=limit + 1,
                before=before,
                not_before=joined_at,
            )
            return await self._views.fill(conn, rows, reactions=False)  # the page has them

        rows = await self._database.read("history", read)
        return cursor.page(rows, limit, lambda m: (m.created_at, m.id))

    def logged(self, changes: Sequence[Change], event: MessageEvent) -> list[LogEvent]:
        """One ``event`` per log entry just written (``Publisher`` adds each user's token)."""
        return [LogEvent(c.user_id, c.position, c.position, event) for c in changes]

    async def deliver_logged(self, events: Sequence[LogEvent], *, skip_sid: str | None) -> None:
        """Fan logged events out like every other change (a failure never fails the request)."""
        await self._publisher.logged(events, skip_sid=skip_sid)


def _change_event(change: Change, message: MessageRecord) -> MessageEvent:
    """The live event a log entry was delivered as (a message in its current state)."""
    if change.kind == "edited":
        return MessageEdited(message)
    if change.kind == "deleted" and message.deleted_at is not None:
        return MessageDeleted(message)
    if change.kind in ("reacted", "unreacted") and change.emoji is not None:
        return ReactionChanged(
            message,
            user_id=change.actor_id or "",
            emoji=change.emoji,
            active=change.kind == "reacted",
        )
    return MessageSent(message)
