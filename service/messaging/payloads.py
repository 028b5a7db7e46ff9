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
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

from messaging.errors import ValidationFailed
from messaging.store import ConversationRecord, MessageRecord

MAX_CONTENT_CHARS = 2000
MAX_IDS = 100
MAX_SYNC_LIMIT = 500
DEFAULT_SYNC_LIMIT = 100
MAX_FIELD_CHARS = 100  # of a field's name quoted back in VALIDATION_FAILED details

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


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class CreateConversation(Request):
    participant_id: UserId = Field(alias="participantId")


class SendMessage(Request):
    conversation_id: uuid.UUID = Field(alias="conversationId")
    content: Content
    client_message_id: ClientMessageId | None = Field(None, alias="clientMessageId")


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
    }


def conversation_json(conversation: ConversationRecord) -> dict[str, Any]:
    return {
        "id": str(conversation.id),
        "participantIds": list(conversation.participant_ids),
        "createdAt": iso(conversation.created_at),
    }
