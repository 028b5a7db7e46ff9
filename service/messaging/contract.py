"""The Socket.IO contract as types: every event, its payload, its ack data, and the server events.

The request side is the service's own pydantic models (``payloads.py``), so their bounds and
optional fields are the ones the handlers enforce; the reply side is written here as TypedDicts,
checked against what ``payloads.message_json`` / ``conversation_json`` and the handlers really
answer (tests/unit/test_contract.py). ``render_typescript`` turns both into the
``ClientToServerEvents`` / ``ServerToClientEvents`` declarations that socket.io-client's typed
``Socket`` takes; ``python -m messaging.contract --check`` fails when the checked-in file
(``clients/typescript/messaging-events.d.ts``) is not what the models give, so it cannot drift.

A new event is one line in ``CLIENT_EVENTS`` (or ``SERVER_EVENTS``); a test fails until the
server's registered events and these lists agree.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Literal, NotRequired

from pydantic import BaseModel, TypeAdapter
from typing_extensions import TypedDict

from messaging import payloads
from messaging.errors import ACK_CODES

OUTPUT = Path(__file__).resolve().parents[2] / "clients" / "typescript" / "messaging-events.d.ts"


class Attachment(TypedDict):
    id: str
    fileName: str
    contentType: str
    sizeBytes: int
    url: str
    urlExpiresAt: str


class Message(TypedDict):
    id: str
    conversationId: str
    authorId: str
    content: str
    status: Literal["sent", "delivered", "read"]
    createdAt: str
    clientMessageId: str | None
    editedAt: str | None
    deletedAt: str | None
    reactions: dict[str, list[str]]
    attachments: list[Attachment]


class Conversation(TypedDict):
    id: str
    kind: Literal["direct", "group"]
    participantIds: list[str]
    title: str | None
    createdBy: str | None
    createdAt: str


class ConversationSummary(TypedDict):
    conversation: Conversation
    lastMessage: Message | None
    unreadCount: int


class ConversationPage(TypedDict):
    conversations: list[ConversationSummary]
    nextPageToken: str | None


class MessagePage(TypedDict):
    messages: list[Message]
    nextPageToken: str | None


class Deleted(TypedDict):
    id: str
    conversationId: str
    deletedAt: str


class Reactions(TypedDict):
    reactions: dict[str, list[str]]


class Blocked(TypedDict):
    userIds: list[str]


class Reported(TypedDict):
    reportId: str


class Receipt(TypedDict):
    userId: str
    deliveredAt: str | None
    readAt: str | None


class Receipts(TypedDict):
    receipts: list[Receipt]


class Upload(TypedDict):
    attachmentId: str
    uploadUrl: str
    uploadMethod: Literal["PUT"]
    uploadHeaders: dict[str, str]
    expiresAt: str


class NewMessage(Message):
    syncToken: str


class Updated(TypedDict):
    updated: int


class Empty(TypedDict):
    pass


class PresenceInfo(TypedDict):
    online: bool
    lastSeenAt: str | None


class Presence(TypedDict):
    presence: dict[str, PresenceInfo]


class SyncPage(TypedDict):
    messages: list[Message]
    hasMore: bool
    syncToken: NotRequired[str]


class ReauthenticateRequest(TypedDict):
    token: str


class Reauthenticated(TypedDict):
    expiresAt: str


class MessageStatus(TypedDict):
    conversationId: str
    messageIds: list[str]
    status: Literal["delivered", "read"]
    userId: str
    at: str
    syncToken: str


class TypingEvent(TypedDict):
    conversationId: str
    userId: str
    isTyping: bool


class MessageDeleted(TypedDict):
    conversationId: str
    messageId: str
    deletedAt: str
    syncToken: str


class MessageReaction(TypedDict):
    conversationId: str
    messageId: str
    userId: str
    emoji: str
    active: bool
    reactions: dict[str, list[str]]
    syncToken: str


class ConversationChange(TypedDict):
    type: Literal["created", "joined", "left"]
    userIds: list[str]
    by: str


class ConversationUpdated(TypedDict):
    conversation: Conversation
    change: ConversationChange


# createConversation takes either form: {participantId} (direct) or the group form.
CreateConversationRequest = payloads.CreateConversation | payloads.CreateGroup
_UNION_NAMES = {id(CreateConversationRequest): "CreateConversationRequest"}


# event -> (payload, ack data); payload models are the handlers' own.
CLIENT_EVENTS: dict[str, tuple[Any, Any]] = {
    "createConversation": (CreateConversationRequest, Conversation),
    "sendMessage": (payloads.SendMessage, Message),
    "markDelivered": (payloads.MarkDelivered, Updated),
    "markRead": (payloads.MarkRead, Updated),
    "typing": (payloads.Typing, Empty),
    "getPresence": (payloads.GetPresence, Presence),
    "syncMessages": (payloads.SyncMessages, SyncPage),
    "reauthenticate": (ReauthenticateRequest, Reauthenticated),
    "listConversations": (payloads.ListConversations, ConversationPage),
    "getMessageHistory": (payloads.GetMessageHistory, MessagePage),
    "editMessage": (payloads.EditMessage, Message),
    "deleteMessage": (payloads.DeleteMessage, Deleted),
    "setReaction": (payloads.SetReaction, Reactions),
    "blockUser": (payloads.BlockUser, Empty),
    "unblockUser": (payloads.BlockUser, Empty),
    "listBlocked": (payloads.ListBlocked, Blocked),
    "reportMessage": (payloads.ReportMessage, Reported),
    "addParticipants": (payloads.AddParticipants, Conversation),
    "leaveConversation": (payloads.LeaveConversation, Empty),
    "getReceipts": (payloads.GetReceipts, Receipts),
    "createUpload": (payloads.CreateUpload, Upload),
}
SERVER_EVENTS: dict[str, Any] = {
    "newMessage": NewMessage,
    "messageStatus": MessageStatus,
    "typing": TypingEvent,
    "messageUpdated": NewMessage,
    "messageDeleted": MessageDeleted,
    "messageReaction": MessageReaction,
    "conversationUpdated": ConversationUpdated,
    "sessionExpired": Empty,
}


def _name(kind: Any, suffix: str = "") -> str:
    if id(kind) in _UNION_NAMES:
        return _UNION_NAMES[id(kind)]
    name = str(kind.__name__)
    return name + suffix if isinstance(kind, type) and issubclass(kind, BaseModel) else name


def _schema(kind: Any) -> dict[str, Any]:
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return kind.model_json_schema(by_alias=True, mode="validation")
    return TypeAdapter(kind).json_schema(by_alias=True, mode="serialization")


def _bounds(schema: dict[str, Any]) -> str:
    notes = []
    if "minLength" in schema or "maxLength" in schema:
        notes.append(f"{schema.get('minLength', 0)}..{schema.get('maxLength', '')} characters")
    if "minItems" in schema or "maxItems" in schema:
        notes.append(f"{schema.get('minItems', 0)}..{schema.get('maxItems', '')} items")
    if "minimum" in schema or "maximum" in schema:
        notes.append(f"{schema.get('minimum', '')}..{schema.get('maximum', '')}")
    if "format" in schema:
        notes.append(str(schema["format"]).replace("uuid", "UUID"))
    if "default" in schema and schema["default"] is not None:
        notes.append(f"default {json.dumps(schema['default'])}")
    for part in schema.get("anyOf", []):
        if (inner := _bounds(part)) and inner not in notes:
            notes.append(inner)
    if schema.get("type") == "array" and (inner := _bounds(schema.get("items", {}))):
        notes.append(f"each {inner}")
    return "; ".join(notes)


def _ts(schema: dict[str, Any]) -> str:  # noqa: PLR0911 - one case per JSON Schema form
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[1]
    if "const" in schema:
        return json.dumps(schema["const"])
    if "enum" in schema:
        return " | ".join(json.dumps(v) for v in schema["enum"])
    if "anyOf" in schema:
        return " | ".join(_ts(part) for part in schema["anyOf"])
    kind = schema.get("type")
    if kind == "string":
        return "string"
    if kind in ("integer", "number"):
        return "number"
    if kind == "boolean":
        return "boolean"
    if kind == "null":
        return "null"
    if kind == "array":
        item = _ts(schema.get("items", {}))
        return f"({item})[]" if "|" in item else f"{item}[]"
    if kind == "object":
        if schema.get("properties"):
            return _object(schema, indent="  ")
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            return f"Record<string, {_ts(extra)}>"
        return "Record<string, never>"
    return "unknown"


def _object(schema: dict[str, Any], indent: str = "") -> str:
    required = set(schema.get("required", []))
    lines = ["{"]
    for prop, sub in schema.get("properties", {}).items():
        if bounds := _bounds(sub):
            lines.append(f"{indent}  /** {bounds} */")
        optional = "" if prop in required else "?"
        lines.append(f"{indent}  {prop}{optional}: {_ts(sub)};")
    lines.append(f"{indent}}}")
    return "\n".join(lines)


def _declaration(name: str, schema: dict[str, Any]) -> str:
    doc = schema.get("description")
    head = f"/** {' '.join(str(doc).split())} */\n" if doc else ""
    if "anyOf" in schema or (schema.get("type") == "object" and not schema.get("properties")):
        return f"{head}export type {name} = {_ts(schema)};"
    return f"{head}export interface {name} {_object(schema)}"


def render_typescript() -> str:
    """The declarations file, deterministic for the same models."""
    declared: dict[str, str] = {}

    def declare(kind: Any, name: str) -> None:
        schema = _schema(kind)
        for sub_name, sub in schema.pop("$defs", {}).items():
            declared.setdefault(sub_name, _declaration(sub_name, sub))
        declared[name] = _declaration(name, schema)

    client = []
    for event, (request, reply) in CLIENT_EVENTS.items():
        request_name = _name(request, "Request")
        declare(request, request_name)
        declare(reply, _name(reply))
        client.append(
            f"  {event}: (payload: {request_name}, ack: (answer: Ack<{_name(reply)}>) => void)"
            " => void;"
        )
    server = []
    for event, payload in SERVER_EVENTS.items():
        declare(payload, _name(payload))
        server.append(f"  {event}: (payload: {_name(payload)}) => void;")
    codes = " | ".join(json.dumps(code) for code in sorted(ACK_CODES))
    parts = [
        "// Generated by `python -m messaging.contract` from service/messaging/payloads.py and",
        "// service/messaging/contract.py. Do not edit: CI (`--check`) fails when it is stale.",
        "//",
        '// import { io, Socket } from "socket.io-client";',
        "// const socket: Socket<ServerToClientEvents, ClientToServerEvents> =",
        "//   io(url, { auth: { token } });",
        "",
        f"export type ErrorCode = {codes};",
        "",
        "export interface AckError {",
        "  code: ErrorCode;",
        "  message: string;",
        "  details?: unknown;",
        "}",
        "",
        "/** Every client event's acknowledgement. */",
        "export type Ack<T> = { ok: true; data: T } | { ok: false; error: AckError };",
        "",
        *(f"{declaration}\n" for _, declaration in sorted(declared.items())),
        "export interface ClientToServerEvents {",
        *client,
        "}",
        "",
        "export interface ServerToClientEvents {",
        *server,
        "}",
        "",
    ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m messaging.contract", description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the file is not current")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text = render_typescript()
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(
                f"{args.output} is stale: run `python -m messaging.contract` and commit it",
                file=sys.stderr,
            )
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
