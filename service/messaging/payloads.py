"""What clients send (validated request models) and what they get back (JSON shapes).

Requests are pydantic models with the contract's camelCase names and bounds; unknown fields are
refused so a typo in a client shows up as ``VALIDATION_FAILED`` instead of being ignored. Replies
are built as plain dicts by the two shape functions, the only place the wire format of a Message
or a Conversation is written.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from messaging import events
from messaging.errors import ValidationFailed
from messaging.objectstore import SignedRequest
from messaging.records import (
    AttachmentView,
    ConversationRecord,
    ConversationSummary,
    MessageRecord,
    Receipt,
)

MAX_CONTENT_CHARS = 2000
MAX_IDS = 100
MAX_SYNC_LIMIT = 500
DEFAULT_SYNC_LIMIT = 100
MAX_FIELD_CHARS = 100  # of a field's name quoted back in VALIDATION_FAILED details
MAX_PAGE_TOKEN_CHARS = 512
MAX_EMOJI_CHARS = 16
DEFAULT_CONVERSATIONS_LIMIT = 30  # the socket event's default (gRPC's page_size 0 means 50)
DEFAULT_HISTORY_LIMIT = 50
MAX_ATTACHMENTS = 10
MAX_FILE_NAME_CHARS = 255

# Characters that render as nothing but are not whitespace or format characters to Unicode
# (Hangul fillers, the braille blank, the Mongolian vowel separator, the combining grapheme
# joiner): a message made only of these looks blank to the people receiving it.
_INVISIBLE = frozenset("\u115f\u1160\u3164\uffa0\u2800\u180e\u034f")
# Control characters other than tab and line breaks, and lone surrogates (a str can hold them,
# UTF-8 cannot: the database driver and the JSON encoder would fail on them). A regex, because it
# runs over every message's content and scans in C.
_NOT_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_NOT_IDENTIFIER = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _is_invisible(char: str) -> bool:
    return char.isspace() or char in _INVISIBLE or unicodedata.category(char) in ("Cf", "Zs")


def _problem(found: re.Match[str]) -> str:
    code = ord(found.group())
    if 0xD800 <= code <= 0xDFFF:
        return "must be valid Unicode (a lone surrogate is not)"
    return f"must not contain control character U+{code:04X}"


def _not_blank(value: str) -> str:
    """Blank is also what renders as nothing: zero-width spaces, joiners, fillers."""
    if "!" <= value[:1] <= "~":  # printable ASCII other than a space: visible, no lookup needed
        return value
    for char in value:  # stops at the first visible character: usually the first one
        if not _is_invisible(char):
            return value
    raise ValueError("must not be blank")


def _text(value: str) -> str:
    """Text the database can store and JSON can carry (PostgreSQL refuses NUL in ``text``)."""
    if found := _NOT_TEXT.search(value):
        raise ValueError(_problem(found))
    return _not_blank(value)


def _identifier(value: str) -> str:
    """An id (user id, clientMessageId): text without any control character, and not blank."""
    if found := _NOT_IDENTIFIER.search(value):
        raise ValueError(_problem(found))
    return _not_blank(value)


def _emoji(value: str) -> str:
    """A reaction: one short token, with nothing that renders as space or controls the text.

    Zero-width joiners and variation selectors are allowed: emoji sequences (families, skin
    tones, flags) are built from them.
    """
    for char in value:
        if char.isspace() or unicodedata.category(char) in ("Cc", "Zs", "Zl", "Zp", "Cs"):
            raise ValueError(f"must not contain whitespace or control character U+{ord(char):04X}")
    return value


UserId = Annotated[
    str, StringConstraints(min_length=1, max_length=128), AfterValidator(_identifier)
]
ClientMessageId = Annotated[
    str, StringConstraints(min_length=1, max_length=64), AfterValidator(_identifier)
]
Content = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_CONTENT_CHARS),
    AfterValidator(_text),
]


def _text_or_empty(value: str) -> str:
    return value if value == "" else _text(value)


OptionalContent = Annotated[
    str, StringConstraints(max_length=MAX_CONTENT_CHARS), AfterValidator(_text_or_empty)
]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class CreateConversation(Request):
    participant_id: UserId = Field(alias="participantId")


MAX_GROUP_IDS = 999  # the members setting (at most 1000) is the real bound, checked by groups.py
Title = Annotated[str, StringConstraints(min_length=1, max_length=100), AfterValidator(_identifier)]


class CreateGroup(Request):
    """createConversation's group form."""

    participant_ids: list[UserId] = Field(
        alias="participantIds", min_length=1, max_length=MAX_GROUP_IDS
    )
    title: Title
    client_conversation_id: ClientMessageId | None = Field(None, alias="clientConversationId")


class AddParticipants(Request):
    conversation_id: uuid.UUID = Field(alias="conversationId")
    user_ids: list[UserId] = Field(alias="userIds", min_length=1, max_length=MAX_GROUP_IDS)


class LeaveConversation(Request):
    conversation_id: uuid.UUID = Field(alias="conversationId")


class GetReceipts(Request):
    message_id: uuid.UUID = Field(alias="messageId")


class SendMessage(Request):
    conversation_id: uuid.UUID = Field(alias="conversationId")
    # Before content: its check reads them (content may be empty when there are attachments).
    attachment_ids: list[uuid.UUID] = Field(
        default_factory=list, alias="attachmentIds", max_length=MAX_ATTACHMENTS
    )
    content: OptionalContent = Field("", validate_default=True)
    client_message_id: ClientMessageId | None = Field(None, alias="clientMessageId")

    @field_validator("content")
    @classmethod
    def _something_to_send(cls, value: str, info: ValidationInfo) -> str:
        if not value and not info.data.get("attachment_ids"):
            raise ValueError("must not be blank (it may be empty only with attachments)")
        return value


ContentType = Annotated[
    str, StringConstraints(min_length=3, max_length=255, pattern=r"^[A-Za-z0-9!#$&^_.+/-]+$")
]
FileName = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_FILE_NAME_CHARS), AfterValidator(_text)
]


class CreateUpload(Request):
    conversation_id: uuid.UUID = Field(alias="conversationId")
    file_name: FileName = Field(alias="fileName")
    content_type: ContentType = Field(alias="contentType")
    size_bytes: int = Field(alias="sizeBytes", ge=0, strict=True)


class MarkDelivered(Request):
    message_ids: list[uuid.UUID] = Field(alias="messageIds", min_length=1, max_length=MAX_IDS)


class MarkRead(Request):
    conversation_id: uuid.UUID = Field(alias="conversationId")
    up_to_message_id: uuid.UUID = Field(alias="upToMessageId")


class Typing(Request):
    conversation_id: uuid.UUID = Field(alias="conversationId")
    is_typing: bool = Field(alias="isTyping", strict=True)


class GetPresence(Request):
    user_ids: list[UserId] = Field(alias="userIds", min_length=1, max_length=MAX_IDS)


class SyncMessages(Request):
    after: uuid.UUID | None = None
    since: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    limit: int = Field(DEFAULT_SYNC_LIMIT, ge=1, le=MAX_SYNC_LIMIT, strict=True)


PageToken = Annotated[str, StringConstraints(max_length=MAX_PAGE_TOKEN_CHARS)]
Emoji = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_EMOJI_CHARS),
    AfterValidator(_emoji),
]


class ListConversations(Request):
    limit: int = Field(DEFAULT_CONVERSATIONS_LIMIT, ge=1, le=MAX_IDS, strict=True)
    page_token: PageToken | None = Field(None, alias="pageToken")


class GetMessageHistory(Request):
    conversation_id: uuid.UUID = Field(alias="conversationId")
    limit: int = Field(DEFAULT_HISTORY_LIMIT, ge=1, le=MAX_IDS, strict=True)
    page_token: PageToken | None = Field(None, alias="pageToken")


class EditMessage(Request):
    message_id: uuid.UUID = Field(alias="messageId")
    content: Content


class DeleteMessage(Request):
    message_id: uuid.UUID = Field(alias="messageId")


class SetReaction(Request):
    message_id: uuid.UUID = Field(alias="messageId")
    emoji: Emoji
    active: bool = Field(strict=True)


RequestT = TypeVar("RequestT", bound=Request)


def parse(model: type[RequestT], payload: Any) -> RequestT:
    """Validate an event payload, turning pydantic's errors into the contract's error."""
    if not isinstance(payload, dict):
        raise ValidationFailed("payload must be a JSON object")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        details = [
            {"field": ".".join(str(p) for p in err["loc"])[:MAX_FIELD_CHARS], "problem": err["msg"]}
            for err in exc.errors(include_url=False, include_input=False, include_context=False)
        ]
        raise ValidationFailed("payload failed validation", details=details) from None


def iso(at: datetime) -> str:
    """ISO-8601 in UTC with a ``Z``, millisecond precision (what JavaScript's Date prints)."""
    # isoformat is C and several times faster than strftime; its first 23 characters are
    # YYYY-MM-DDTHH:MM:SS.mmm whatever follows (an offset, or nothing for naive datetimes).
    return at.isoformat(timespec="milliseconds")[:23] + "Z"


def message_json(message: MessageRecord) -> dict[str, Any]:
    return {
        "id": str(message.id),
        "conversationId": str(message.conversation_id),
        "authorId": message.author_id,
        "content": message.content,
        "status": message.status,
        "createdAt": iso(message.created_at),
        "clientMessageId": message.client_message_id,
        "editedAt": None if message.edited_at is None else iso(message.edited_at),
        "deletedAt": None if message.deleted_at is None else iso(message.deleted_at),
        "reactions": reactions_json(message.reactions),
        "attachments": [attachment_json(a) for a in message.attachments],
    }


def reactions_json(reactions: tuple[tuple[str, tuple[str, ...]], ...]) -> dict[str, list[str]]:
    """``{emoji: [userId, ...]}``: emoji in the order first given, users in the order they
    reacted."""
    return {emoji: list(users) for emoji, users in reactions}


def message_deleted_json(message: MessageRecord) -> dict[str, Any]:
    """The ``deleteMessage`` ack (``{id, conversationId, deletedAt}``)."""
    assert message.deleted_at is not None
    return {
        "id": str(message.id),
        "conversationId": str(message.conversation_id),
        "deletedAt": iso(message.deleted_at),
    }


def deleted_event_json(message: MessageRecord) -> dict[str, Any]:
    """The ``messageDeleted`` event."""
    assert message.deleted_at is not None
    return {
        "conversationId": str(message.conversation_id),
        "messageId": str(message.id),
        "deletedAt": iso(message.deleted_at),
    }


def reaction_event_json(
    message: MessageRecord, *, user_id: str, emoji: str, active: bool
) -> dict[str, Any]:
    """The ``messageReaction`` event: the change, and the message's reactions after it."""
    return {
        "conversationId": str(message.conversation_id),
        "messageId": str(message.id),
        "userId": user_id,
        "emoji": emoji,
        "active": active,
        "reactions": reactions_json(message.reactions),
    }


def summary_json(summary: ConversationSummary) -> dict[str, Any]:
    """One entry of ``listConversations``."""
    return {
        "conversation": conversation_json(summary.conversation),
        "lastMessage": None if summary.last_message is None else message_json(summary.last_message),
        "unreadCount": summary.unread_count,
    }


def receipt_json(receipt: Receipt) -> dict[str, Any]:
    return {
        "userId": receipt.user_id,
        "deliveredAt": None if receipt.delivered_at is None else iso(receipt.delivered_at),
        "readAt": None if receipt.read_at is None else iso(receipt.read_at),
    }


def attachment_json(attachment: AttachmentView) -> dict[str, Any]:
    return {
        "id": str(attachment.id),
        "fileName": attachment.file_name,
        "contentType": attachment.content_type,
        "sizeBytes": attachment.size_bytes,
        "url": attachment.url,
        "urlExpiresAt": iso(attachment.url_expires_at),
    }


def upload_json(attachment_id: uuid.UUID, request: SignedRequest) -> dict[str, Any]:
    return {
        "attachmentId": str(attachment_id),
        "uploadUrl": request.url,
        "uploadMethod": request.method,
        "uploadHeaders": request.headers,
        "expiresAt": iso(request.expires_at),
    }


def conversation_json(conversation: ConversationRecord) -> dict[str, Any]:
    return {
        "id": str(conversation.id),
        "kind": conversation.kind,
        "participantIds": list(conversation.participant_ids),
        "title": conversation.title,
        "createdBy": conversation.created_by,
        "createdAt": iso(conversation.created_at),
    }


def socket_event(event: events.Event) -> tuple[str, dict[str, Any]]:
    """A domain event as Socket.IO sends it: the event's name and its JSON (without the
    ``syncToken``, which is per recipient: ``publishing.Publisher`` adds it)."""
    data: dict[str, Any]
    if isinstance(event, events.MessageSent):
        name, data = "newMessage", message_json(event.message)
    elif isinstance(event, events.MessageEdited):
        name, data = "messageUpdated", message_json(event.message)
    elif isinstance(event, events.MessageDeleted):
        name, data = "messageDeleted", deleted_event_json(event.message)
    elif isinstance(event, events.ReactionChanged):
        name = "messageReaction"
        data = reaction_event_json(
            event.message, user_id=event.user_id, emoji=event.emoji, active=event.active
        )
    elif isinstance(event, events.StatusChanged):
        name = "messageStatus"
        data = {
            "conversationId": str(event.conversation_id),
            "messageIds": [str(m) for m in event.message_ids],
            "status": event.status,
            "userId": event.user_id,
            "at": iso(event.at),
        }
    elif isinstance(event, events.Typing):
        name = "typing"
        data = {
            "conversationId": str(event.conversation_id),
            "userId": event.user_id,
            "isTyping": event.is_typing,
        }
    else:
        name = "conversationUpdated"
        data = {
            "conversation": conversation_json(event.conversation),
            "change": {"type": event.change, "userIds": sorted(event.user_ids), "by": event.by},
        }
    return name, data


# --- blocking and reports ----------------------------------------------------------------------

MAX_NOTE_CHARS = 500


def _note(value: str) -> str:
    """A reporter's note: text the database can store; empty is allowed (``0..500``)."""
    if found := _NOT_TEXT.search(value):
        raise ValueError(_problem(found))
    return value


Note = Annotated[str, StringConstraints(max_length=MAX_NOTE_CHARS), AfterValidator(_note)]


class BlockUser(Request):
    """``blockUser`` and ``unblockUser``."""

    user_id: UserId = Field(alias="userId")


class ListBlocked(Request):
    pass


class ReportMessage(Request):
    message_id: uuid.UUID = Field(alias="messageId")
    reason: Literal["spam", "abuse", "other"]
    note: Note | None = None
