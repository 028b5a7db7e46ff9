"""Recording webhook events: the one call a change makes inside its own transaction.

``Outbox.record(conn, type, data)`` writes the event for every configured endpoint that wants
that type, in the caller's transaction: if it commits, the event is in the outbox; if it rolls
back, so does the event. With no endpoint configured it writes nothing and costs nothing. New
messages go through ``message_events`` instead, so the group commit's one statement carries them
(see ``storage.messages.insert_messages``). ``webhooks.py`` sends what is recorded.

The payload builders below are the ``data`` of each type (docs/webhooks.md); features call
``record`` with one of them, or hand over the domain event itself where one exists
(``record_conversation_change``: the group rules' ``events.ConversationChanged``, encoded here).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from messaging.events import ConversationChanged
from messaging.payloads import conversation_json, iso, message_json
from messaging.records import ConversationRecord, MessageRecord, NewMessage
from messaging.settings import WEBHOOK_EVENT_TYPES, Settings
from messaging.storage import outbox as sql
from messaging.storage.outbox import MessageEvents, OutboxRow

# The pseudo-endpoint of ``MESSAGING_WEBHOOKS_CONSOLE``: events printed, not POSTed.
CONSOLE = "console:"
PREVIEW_CHARS = 100


@dataclass(frozen=True, slots=True)
class Endpoint:
    url: str
    key: bytes  # the HMAC key (empty for the console)
    events: frozenset[str]  # empty: every type

    def wants(self, event_type: str) -> bool:
        return not self.events or event_type in self.events


def endpoints_from(settings: Settings) -> list[Endpoint]:
    found = [Endpoint(h.url, h.key, frozenset(h.events)) for h in settings.webhooks]
    if settings.webhooks_console:
        found.append(Endpoint(CONSOLE, b"", frozenset()))
    return found


def body(event_type: str, data: dict[str, Any], at: datetime) -> str:
    """The JSON POSTed: ``{type, timestamp, data}`` (fixed when recorded, so every attempt
    sends and signs the same bytes)."""
    return orjson.dumps({"type": event_type, "timestamp": iso(at), "data": data}).decode()


class Outbox:
    """Which endpoint gets which event type, and the writing of events."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        notify_delay_seconds: float = 15.0,
        notify_preview: bool = True,
    ) -> None:
        self.endpoints = {e.url: e for e in endpoints}
        self.notify_delay = timedelta(seconds=notify_delay_seconds)
        self.notify_preview = notify_preview
        self._wanting = {t: [e.url for e in endpoints if e.wants(t)] for t in WEBHOOK_EVENT_TYPES}

    @classmethod
    def from_settings(cls, settings: Settings) -> Outbox:
        return cls(
            endpoints_from(settings),
            notify_delay_seconds=settings.webhook_notify_delay_seconds,
            notify_preview=settings.webhook_notify_preview,
        )

    def disable(self, url: str) -> None:
        """Stop writing events for ``url`` (it answered 410 Gone; ``webhooks.py`` tells)."""
        for urls in self._wanting.values():
            if url in urls:
                urls.remove(url)

    @property
    def enabled(self) -> bool:
        return bool(self.endpoints)

    def wants(self, event_type: str) -> bool:
        return bool(self._wanting.get(event_type))

    def rows(
        self, event_type: str, data: dict[str, Any], *, at: datetime | None = None
    ) -> list[OutboxRow]:
        if event_type not in self._wanting:
            raise ValueError(f"unknown webhook event type {event_type!r}")
        urls = self._wanting[event_type]
        if not urls:
            return []
        at = at or datetime.now(UTC)
        text = body(event_type, data, at)
        return [OutboxRow(uuid.uuid4(), url, event_type, text, at) for url in urls]

    async def record(
        self,
        conn: AsyncConnection,
        event_type: str,
        data: dict[str, Any],
        *,
        at: datetime | None = None,
    ) -> None:
        """Write ``event_type`` with ``data`` for every endpoint wanting it, in ``conn``'s
        transaction (call it inside the transaction of the change it reports)."""
        rows = self.rows(event_type, data, at=at)
        if rows:
            await sql.insert_rows(conn, rows, now=datetime.now(UTC))

    async def record_many(
        self,
        conn: AsyncConnection,
        events: Iterable[tuple[str, dict[str, Any]]],
        *,
        at: datetime | None = None,
    ) -> None:
        """Several events in one INSERT."""
        rows = [row for t, d in events for row in self.rows(t, d, at=at)]
        if rows:
            await sql.insert_rows(conn, rows, now=datetime.now(UTC))

    async def record_conversation_change(
        self, conn: AsyncConnection, event: ConversationChanged, *, at: datetime | None = None
    ) -> None:
        """A group's change as its webhook event (``conversation_change``), in ``conn``'s
        transaction: the event the group rules fan out after the commit is the one recorded."""
        event_type, data = conversation_change(event)
        await self.record(conn, event_type, data, at=at)

    def message_events(self, batch: Sequence[NewMessage]) -> MessageEvents | None:
        """The ``message.created`` rows (and notification checks) of a group-commit batch, for
        ``storage.messages.insert_messages`` to write with the messages; None when nothing is
        wanted."""
        notify = self.wants("notification.requested")
        if not self.wants("message.created") and not notify:
            return None
        rows = [
            (m.id, row)
            for m in batch
            for row in self.rows("message.created", message_created(_stored(m)), at=m.created_at)
        ]
        return MessageEvents(rows, self.notify_delay if notify else None)


def _stored(m: NewMessage) -> MessageRecord:
    return MessageRecord(
        id=m.id,
        conversation_id=m.conversation_id,
        author_id=m.author_id,
        content=m.content,
        status="sent",
        created_at=m.created_at,
        client_message_id=m.client_message_id,
    )


# --- payloads (the ``data`` of each type) -------------------------------------------------------


def message_created(message: MessageRecord) -> dict[str, Any]:
    """A Message, as the socket's ``newMessage`` carries it (without a syncToken)."""
    return message_json(message)


def message_updated(message: MessageRecord) -> dict[str, Any]:
    """The edited Message in its new state (with ``editedAt`` once Message carries it)."""
    return message_json(message)


def message_deleted(
    message: MessageRecord, *, deleted_by: str, deleted_at: datetime
) -> dict[str, Any]:
    return {
        "id": str(message.id),
        "conversationId": str(message.conversation_id),
        "authorId": message.author_id,
        "deletedBy": deleted_by,
        "deletedAt": iso(deleted_at),
    }


def message_read(
    *,
    conversation_id: uuid.UUID,
    user_id: str,
    message_ids: Sequence[uuid.UUID],
    read_at: datetime,
    up_to_message_id: uuid.UUID | None = None,
) -> dict[str, Any]:
    """``user_id`` read the conversation up to ``up_to_message_id``; ``messageIds`` are the
    messages whose status that moved to read (in a group: read by every other member)."""
    return {
        "conversationId": str(conversation_id),
        "userId": user_id,
        "upToMessageId": None if up_to_message_id is None else str(up_to_message_id),
        "messageIds": [str(i) for i in message_ids],
        "readAt": iso(read_at),
    }


def conversation_created(conversation: ConversationRecord) -> dict[str, Any]:
    """A Conversation, as ``createConversation`` answers it."""
    return conversation_json(conversation)


def conversation_updated(
    conversation: dict[str, Any], *, change: str, actor_id: str, user_ids: Sequence[str] = ()
) -> dict[str, Any]:
    """What the socket's ``conversationUpdated`` carries: the Conversation in its new state (its
    JSON) and the change (``joined``, ``left``; who changed it and whom it concerns)."""
    return {
        "conversation": conversation,
        "change": {"type": change, "userIds": sorted(user_ids), "by": actor_id},
    }


def conversation_change(event: ConversationChanged) -> tuple[str, dict[str, Any]]:
    """The webhook type and data of a group change: ``conversation.created`` (the Conversation),
    or ``conversation.updated`` (it in its new state and the change: joined, left)."""
    if event.change == "created":
        return "conversation.created", conversation_created(event.conversation)
    return "conversation.updated", conversation_updated(
        conversation_json(event.conversation),
        change=event.change,
        actor_id=event.by,
        user_ids=event.user_ids,
    )


def message_reported(
    *,
    report_id: uuid.UUID,
    message: MessageRecord,
    reporter_id: str,
    reason: str,
    reported_at: datetime,
    note: str | None = None,
) -> dict[str, Any]:
    """The shape of ``reports.reported_event`` (which the reports feature records)."""
    return {
        "reportId": str(report_id),
        "messageId": str(message.id),
        "conversationId": str(message.conversation_id),
        "reporterId": reporter_id,
        "authorId": message.author_id,
        "reason": reason,
        "note": note,
        "reportedAt": iso(reported_at),
        "message": {"content": message.content, "createdAt": iso(message.created_at)},
    }


def notification_requested(
    *,
    user_id: str,
    conversation_id: uuid.UUID,
    message_id: uuid.UUID,
    author_id: str,
    content: str,
    unread_count: int,
    preview: bool,
) -> dict[str, Any]:
    """The push-notification hook; ``preview`` is null when previews are turned off."""
    return {
        "userId": user_id,
        "conversationId": str(conversation_id),
        "messageId": str(message_id),
        "authorId": author_id,
        "preview": content[:PREVIEW_CHARS] if preview else None,
        "unreadCount": unread_count,
    }
