"""The records the service's layers hand each other: plain frozen dataclasses, no I/O.

The storage functions (``store.py``, ``storage/``) read and write them, the rules pass them on,
and the transports render them (``payloads.py`` as JSON, ``grpc_api.py`` as protobuf). They live
apart from the SQL so that a transport can name a message without importing the database layer
(the ``.importlinter`` contract "Transports and fan-out write no SQL").
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime


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


@dataclass(frozen=True, slots=True)
class Receipt:
    user_id: str
    delivered_at: datetime | None
    read_at: datetime | None
