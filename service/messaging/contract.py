"""The Socket.IO contract as types: every event, its payload, its ack data, and the server events.

The request side is the service's own pydantic models (``payloads.py``), so their bounds and
optional fields are the ones the handlers enforce; the reply side is written here as TypedDicts,
checked against what ``payloads.message_json`` / ``conversation_json`` and the handlers really
answer (tests/unit/test_contract.py). ``render_typescript`` turns both into the
``ClientToServerEvents`` / ``ServerToClientEvents`` declarations that socket.io-client's typed
``Socket`` takes; ``render_asyncapi`` turns the same models into an AsyncAPI 3.0 document for
tools that are not TypeScript (code generators, documentation sites, contract testers).
``python -m messaging.contract --check`` fails when either checked-in file
(``clients/typescript/messaging-events.d.ts``, ``clients/asyncapi/messaging-events.asyncapi.yaml``)
is not what the models give, so neither can drift.

A new event is one line in ``CLIENT_EVENTS`` (or ``SERVER_EVENTS``); a test fails until the
server's registered events and these lists agree.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Literal, NotRequired

import yaml
from pydantic import BaseModel, TypeAdapter
from typing_extensions import TypedDict

from messaging import payloads
from messaging.errors import ACK_CODES

_CLIENTS = Path(__file__).resolve().parents[2] / "clients"
OUTPUT = _CLIENTS / "typescript" / "messaging-events.d.ts"
ASYNCAPI_OUTPUT = _CLIENTS / "asyncapi" / "messaging-events.asyncapi.yaml"


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


_ERROR_MEANINGS = {
    "VALIDATION_FAILED": "the payload does not match the event's schema, or breaks a rule of it",
    "UNAUTHORIZED": "no valid token (handshake, reauthenticate)",
    "FORBIDDEN": "the caller may not do this (not connected, blocked, not the author)",
    "NOT_FOUND": "no such conversation or message, or the caller cannot see it",
    "RATE_LIMITED": "past the user's budget; details.retryAfterMs says when to retry",
    "UNAVAILABLE": "a dependency is down; retry (with the same clientMessageId)",
    "INTERNAL": "a bug; the message never carries a stack trace",
}


def _components_ref(node: Any) -> Any:
    """Point pydantic's ``#/$defs/X`` references at the document's ``components/schemas``."""
    if isinstance(node, dict):
        return {
            key: (
                str(value).replace("#/$defs/", "#/components/schemas/")
                if key == "$ref"
                else _components_ref(value)
            )
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_components_ref(item) for item in node]
    return node


def _ref(path: str) -> dict[str, str]:
    return {"$ref": path}


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3.0 description of the Socket.IO events, as a mapping (see ``render_asyncapi``).

    The service is the document's subject: a client-to-server event is an operation the service
    ``receive``s, with its acknowledgement as the operation's ``reply``; a server-to-client event
    is one it ``send``s. Message names are the Socket.IO event names; the payload schemas are the
    handlers' own pydantic models and the reply TypedDicts, as in the TypeScript declarations.
    """
    schemas: dict[str, Any] = {}

    def schema(kind: Any, name: str) -> dict[str, str]:
        body = _schema(kind)
        for sub_name, sub in body.pop("$defs", {}).items():
            schemas.setdefault(sub_name, _components_ref(sub))
        schemas[name] = _components_ref(body)
        return _ref(f"#/components/schemas/{name}")

    codes = sorted(ACK_CODES)
    schemas["ErrorCode"] = {
        "type": "string",
        "enum": codes,
        "description": "; ".join(f"{code}: {_ERROR_MEANINGS[code]}" for code in codes),
    }
    schemas["AckError"] = {
        "type": "object",
        "required": ["code", "message"],
        "properties": {
            "code": _ref("#/components/schemas/ErrorCode"),
            "message": {"type": "string"},
            "details": {},
        },
    }
    schemas["AckFailure"] = {
        "type": "object",
        "required": ["ok", "error"],
        "properties": {"ok": {"const": False}, "error": _ref("#/components/schemas/AckError")},
    }
    messages: dict[str, Any] = {}
    channel_messages: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    channel = _ref("#/channels/socket")

    def message(key: str, body: dict[str, Any]) -> dict[str, str]:
        messages[key] = body
        channel_messages[key] = _ref(f"#/components/messages/{key}")
        return _ref(f"#/channels/socket/messages/{key}")

    for event, (request, reply) in CLIENT_EVENTS.items():
        reply_name = _name(reply)
        data = schema(reply, reply_name)
        request_message = message(
            f"{event}Request",
            {"name": event, "title": f"{event} (client to server)",
             "payload": schema(request, _name(request, "Request"))},
        )  # fmt: skip
        ack_message = message(
            f"{event}Ack",
            {
                "name": f"{event} acknowledgement",
                "title": f"{event} acknowledgement",
                "summary": "The answer to the event's acknowledgement callback.",
                "payload": {
                    "anyOf": [
                        {"type": "object", "required": ["ok", "data"],
                         "properties": {"ok": {"const": True}, "data": data}},
                        _ref("#/components/schemas/AckFailure"),
                    ]
                },
            },
        )  # fmt: skip
        operations[f"client.{event}"] = {
            "action": "receive",
            "channel": channel,
            "summary": f"The client emits `{event}` with an acknowledgement callback.",
            "messages": [request_message],
            "reply": {"channel": channel, "messages": [ack_message]},
        }
    for event, payload in SERVER_EVENTS.items():
        event_message = message(
            f"{event}Event",
            {"name": event, "title": f"{event} (server to client)",
             "payload": schema(payload, _name(payload))},
        )  # fmt: skip
        operations[f"server.{event}"] = {
            "action": "send",
            "channel": channel,
            "summary": f"The server emits `{event}` to the devices concerned.",
            "messages": [event_message],
        }
    refused = message(
        "connectError",
        {
            "name": "connect_error",
            "title": "connect_error (handshake refused)",
            "payload": {
                "type": "object",
                "required": ["message", "data"],
                "properties": {
                    "message": {"type": "string"},
                    "data": _ref("#/components/schemas/AckError"),
                },
            },
        },
    )
    operations["server.connect_error"] = {
        "action": "send",
        "channel": channel,
        "summary": "A refused handshake: UNAUTHORIZED (token) or RATE_LIMITED (too many sockets).",
        "messages": [refused],
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Messaging platform: Socket.IO events",
            "version": "1.0.0",
            "description": (
                "Generated by `python -m messaging.contract` from service/messaging/payloads.py "
                "and service/messaging/contract.py; do not edit (CI's `--check` fails when it is "
                "stale). Socket.IO on the HTTP port at /socket.io, namespace `/`, websocket and "
                "long-polling. Authenticate with `auth: {token: JWT}` in the handshake (or an "
                "`Authorization: Bearer` header). Every client-to-server event takes an "
                "acknowledgement callback, answered `{ok: true, data}` or `{ok: false, error}`."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "localhost:8000",
                "protocol": "ws",
                "pathname": "/socket.io/",
                "title": "messaging dev",
                "description": "Socket.IO (Engine.IO 4); `messaging dev` serves it here.",
                "security": [_ref("#/components/securitySchemes/jwt")],
            }
        },
        "channels": {
            "socket": {
                "address": "/",
                "title": "Socket.IO namespace /",
                "description": "Every event flows over the one connection's default namespace.",
                "servers": [_ref("#/servers/local")],
                "messages": channel_messages,
            }
        },
        "operations": operations,
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "messages": messages,
            "securitySchemes": {
                "jwt": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": (
                        "A JWT with `sub` and `exp`, given as `auth: {token}` in the Socket.IO "
                        "handshake or as an Authorization: Bearer header."
                    ),
                }
            },
        },
    }


def render_asyncapi() -> str:
    """The AsyncAPI document as YAML, deterministic for the same models."""
    return yaml.safe_dump(asyncapi_document(), sort_keys=False, allow_unicode=True, width=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m messaging.contract", description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the files are not current")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--asyncapi-output", type=Path, default=ASYNCAPI_OUTPUT)
    args = parser.parse_args(argv)
    files = {args.output: render_typescript(), args.asyncapi_output: render_asyncapi()}
    if args.check:
        stale = [
            path for path, text in files.items() if not path.exists() or path.read_text() != text
        ]
        for path in stale:
            print(f"{path} is stale: run `python -m messaging.contract` and commit it",
                  file=sys.stderr)  # fmt: skip
        return 1 if stale else 0
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
