"""What happened, as the rules tell it: domain events, plain frozen dataclasses, no I/O.

The rules (``messages.py``, ``conversations.py``, ``message_changes.py``, ``groups.py``) decide
what happened and who is told; how it reaches a device is the transport's business.
``publishing.py`` encodes these as Socket.IO events (their names and JSON from ``payloads.py``,
each user's ``syncToken``) and hands them to the delivery fan-out; a second transport would
encode the same events its own way. Webhooks are one: ``outbox.py`` encodes a group's
``ConversationChanged`` as ``conversation.created``/``conversation.updated``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from messaging.records import ConversationRecord, MessageRecord


@dataclass(frozen=True, slots=True)
class MessageSent:
    """A new message (also a repeat of one, sent again: see ``Messages.send_message``)."""

    message: MessageRecord


@dataclass(frozen=True, slots=True)
class MessageEdited:
    message: MessageRecord  # with its new content and ``edited_at``


@dataclass(frozen=True, slots=True)
class MessageDeleted:
    message: MessageRecord  # the tombstone


@dataclass(frozen=True, slots=True)
class ReactionChanged:
    message: MessageRecord  # with its reactions after the change
    user_id: str
    emoji: str
    active: bool


@dataclass(frozen=True, slots=True)
class StatusChanged:
    """Messages of one conversation moved to ``status`` (delivered, read) by ``user_id``."""

    conversation_id: uuid.UUID
    message_ids: tuple[uuid.UUID, ...]
    status: str
    user_id: str | None
    at: datetime


@dataclass(frozen=True, slots=True)
class Typing:
    """Not persisted, not logged: it has no position and no sync token."""

    conversation_id: uuid.UUID
    user_id: str
    is_typing: bool


@dataclass(frozen=True, slots=True)
class ConversationChanged:
    """A group was created, or members joined or left it (``change``: created, joined, left)."""

    conversation: ConversationRecord
    change: str
    user_ids: tuple[str, ...]
    by: str


# The events about messages: each is logged, so it sits at positions of users' change logs.
MessageEvent = MessageSent | MessageEdited | MessageDeleted | ReactionChanged | StatusChanged
Event = MessageEvent | Typing | ConversationChanged


@dataclass(frozen=True, slots=True)
class LogEvent:
    """A message event for one user, covering positions ``first..last`` of that user's log."""

    user_id: str
    first: int
    last: int
    event: MessageEvent
