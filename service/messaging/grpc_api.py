"""The gRPC API (``messaging.v1.MessagingService``), health and reflection, on its own port.

It runs in the same event loop as the Socket.IO server and calls the same ``Chat``. One
interceptor authenticates every call of the messaging service from ``authorization: Bearer``
metadata (with the handshake's ``TokenVerifier``), maps the service's typed errors to status
codes, and records metrics; the servicer methods only translate between protobuf and ``Chat``.
"""

from __future__ import annotations

import contextvars
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import grpc
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from messaging import metrics, tracing
from messaging.auth import TokenVerifier, bearer_token
from messaging.chat import Chat
from messaging.errors import INTERNAL_MESSAGE, MessagingError, ValidationFailed
from messaging.grpc_reflection import enable_reflection
from messaging.logs import log_context, new_request_id, user_hash
from messaging.message_changes import MessageChanges
from messaging.payloads import (
    AddParticipants,
    CreateConversation,
    CreateGroup,
    DeleteMessage,
    EditMessage,
    LeaveConversation,
    MarkRead,
    SendMessage,
    SetReaction,
    parse,
)
from messaging.proto.messaging.v1 import messaging_pb2 as pb
from messaging.proto.messaging.v1 import messaging_pb2_grpc as pb_grpc
from messaging.records import AttachmentView, ConversationRecord, MessageRecord

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["MessagingService"].full_name
GRPC_METHODS = [m.name for m in pb.DESCRIPTOR.services_by_name["MessagingService"].methods]
_AUTHENTICATED_PREFIX = f"/{SERVICE_NAME}/"
_CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("grpc_caller")
_STATUS = {
    "sent": pb.MESSAGE_STATUS_SENT,
    "delivered": pb.MESSAGE_STATUS_DELIVERED,
    "read": pb.MESSAGE_STATUS_READ,
}
_KIND = {"direct": pb.CONVERSATION_KIND_DIRECT, "group": pb.CONVERSATION_KIND_GROUP}
MAX_METADATA_BYTES = 16_384

Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


def caller() -> str:
    """The authenticated user of the current call (set by the interceptor)."""
    return _CALLER.get()


class CallInterceptor(grpc.aio.ServerInterceptor):
    """Authentication, error mapping and metrics for every MessagingService method."""

    def __init__(self, verifier: TokenVerifier) -> None:
        self._verifier = verifier
        # The wrapped handler of each method, built at its first call: grpc hands back the same
        # handler for a method every time, so wrapping it again per call is wasted work.
        self._wrapped: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method: str = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None or not method.startswith(_AUTHENTICATED_PREFIX):
            return handler  # health and reflection are open, as load balancers expect
        assert handler.unary_unary is not None, "every MessagingService method is unary"
        # The request arrives as bytes and is parsed inside the wrapper: grpc's own
        # deserialization failure would answer INTERNAL with a traceback in the log, where a
        # corrupt request is the caller's INVALID_ARGUMENT.
        wrapped = grpc.unary_unary_rpc_method_handler(
            self._wrap(
                method.removeprefix(_AUTHENTICATED_PREFIX),
                cast(Behavior, handler.unary_unary),
                cast(Callable[[bytes], Any], handler.request_deserializer),
            ),
            request_deserializer=None,
            response_serializer=handler.response_serializer,
        )
        self._wrapped[method] = wrapped
        return wrapped

    def _wrap(self, name: str, behavior: Behavior, deserialize: Callable[[bytes], Any]) -> Behavior:
        async def call(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            metadata = dict(context.invocation_metadata() or ())
            request_id = str(metadata.get("x-request-id") or new_request_id())[:64]
            context.set_trailing_metadata((("x-request-id", request_id),))
            try:
                with log_context(request_id=request_id, method=name):
                    header = metadata.get("authorization")
                    token = bearer_token(header if isinstance(header, str) else None)
                    user = (await self._verifier.verify(token)).user_id
                    _CALLER.set(user)
                    try:
                        request = deserialize(raw)
                    except DecodeError:
                        raise ValidationFailed("the request is not a valid protobuf") from None
                    hashed = user_hash(user)
                    with log_context(user=hashed):
                        tracing.set_attribute("messaging.user", hashed)
                        return await behavior(request, context)
            except MessagingError as exc:
                code = exc.grpc_status
                if exc.code in ("UNAVAILABLE", "INTERNAL"):
                    with log_context(request_id=request_id, method=name):
                        log.warning("gRPC %s failed: %s", name, exc.message)
                await context.abort(code, exc.message)
            except Exception:
                if context.code() not in (None, grpc.StatusCode.OK):
                    code = context.code()
                    raise  # an abort already in progress
                code = grpc.StatusCode.INTERNAL
                with log_context(request_id=request_id, method=name):
                    log.exception("unexpected error in gRPC %s", name)
                await context.abort(code, INTERNAL_MESSAGE)
            finally:
                metrics.GRPC_REQUESTS.labels(method=name, code=code.name).inc()
                metrics.GRPC_SECONDS.labels(method=name).observe(time.perf_counter() - started)

        span_name = f"{SERVICE_NAME}/{name}"
        attributes = {"rpc.system": "grpc", "rpc.service": SERVICE_NAME, "rpc.method": name}

        async def traced(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            """The call in a SERVER span that continues the caller's ``traceparent``."""
            parent = tracing.extract(dict(context.invocation_metadata() or ()))
            with tracing.span(span_name, kind=tracing.SERVER, attributes=attributes, parent=parent):
                try:
                    return await call(raw, context)
                finally:
                    code = context.code()
                    status = code.value[0] if isinstance(code, grpc.StatusCode) else 0
                    tracing.set_attribute("rpc.grpc.status_code", status)

        return traced if tracing.enabled() else call


class MessagingServicer(pb_grpc.MessagingServiceServicer):
    def __init__(self, chat: Chat, changes: MessageChanges) -> None:
        self._chat = chat
        self._changes = changes

    async def GetMessageHistory(
        self, request: pb.GetMessageHistoryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetMessageHistoryResponse:
        page = await self._chat.messages.history(
            caller(),
            conversation_id=_uuid(request.conversation_id, "conversation_id"),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        response = pb.GetMessageHistoryResponse(next_page_token=page.next_page_token)
        add = response.messages.add  # filled in place: passing built messages would copy each
        for message in page.items:
            _fill_message(add(), message)
        return response

    async def ListConversations(
        self, request: pb.ListConversationsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListConversationsResponse:
        page = await self._chat.conversations.list_conversations(
            caller(), page_size=request.page_size, page_token=request.page_token
        )
        return pb.ListConversationsResponse(
            conversations=[
                pb.ConversationSummary(
                    conversation=conversation_pb(s.conversation),
                    last_message=message_pb(s.last_message) if s.last_message else None,
                    unread_count=s.unread_count,
                )
                for s in page.items
            ],
            next_page_token=page.next_page_token,
        )

    async def CreateConversation(
        self, request: pb.CreateConversationRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Conversation:
        if request.participant_ids or request.title or request.client_conversation_id:
            if request.participant_id:
                raise ValidationFailed("give participant_id, or a group's participant_ids")
            fields: dict[str, Any] = {
                "participantIds": list(request.participant_ids),
                "title": request.title,
            }
            if request.client_conversation_id:
                fields["clientConversationId"] = request.client_conversation_id
            group = parse(CreateGroup, fields)
            return conversation_pb(
                await self._chat.groups.create(
                    caller(),
                    participant_ids=group.participant_ids,
                    title=group.title,
                    client_conversation_id=group.client_conversation_id,
                )
            )
        # The socket event's rules (length, no NUL or control characters, not blank).
        other = parse(CreateConversation, {"participantId": request.participant_id}).participant_id
        return conversation_pb(await self._chat.conversations.create_conversation(caller(), other))

    # Each of these validates with the socket event's model (same bounds and text rules) and
    # calls the same rules; changes are fanned out to every device of every participant, the
    # caller's included (a gRPC call has no socket to skip).

    async def SendMessage(
        self, request: pb.SendMessageRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SendMessageResponse:
        fields: dict[str, Any] = {
            "conversationId": request.conversation_id,
            "content": request.content,
            "attachmentIds": list(request.attachment_ids),
        }
        if request.client_message_id:
            fields["clientMessageId"] = request.client_message_id
        parsed = parse(SendMessage, fields)
        message = await self._chat.messages.send_message(
            caller(),
            conversation_id=parsed.conversation_id,
            content=parsed.content,
            client_message_id=parsed.client_message_id,
            attachment_ids=parsed.attachment_ids,
        )
        return pb.SendMessageResponse(message=message_pb(message))

    async def EditMessage(
        self, request: pb.EditMessageRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.EditMessageResponse:
        parsed = parse(EditMessage, {"messageId": request.message_id, "content": request.content})
        message = await self._changes.edit(
            caller(), message_id=parsed.message_id, content=parsed.content
        )
        return pb.EditMessageResponse(message=message_pb(message))

    async def DeleteMessage(
        self, request: pb.DeleteMessageRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DeleteMessageResponse:
        parsed = parse(DeleteMessage, {"messageId": request.message_id})
        message = await self._changes.delete(caller(), message_id=parsed.message_id)
        assert message.deleted_at is not None
        return pb.DeleteMessageResponse(
            id=str(message.id),
            conversation_id=str(message.conversation_id),
            deleted_at=_timestamp(message.deleted_at),
        )

    async def SetReaction(
        self, request: pb.SetReactionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SetReactionResponse:
        parsed = parse(
            SetReaction,
            {"messageId": request.message_id, "emoji": request.emoji, "active": request.active},
        )
        result = await self._changes.set_reaction(
            caller(), message_id=parsed.message_id, emoji=parsed.emoji, active=parsed.active
        )
        return pb.SetReactionResponse(reactions=_reactions_pb(result.message))

    async def MarkRead(
        self, request: pb.MarkReadRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.MarkReadResponse:
        parsed = parse(
            MarkRead,
            {"conversationId": request.conversation_id, "upToMessageId": request.up_to_message_id},
        )
        updated = await self._chat.messages.mark_read(
            caller(),
            conversation_id=parsed.conversation_id,
            up_to_message_id=parsed.up_to_message_id,
        )
        return pb.MarkReadResponse(updated=updated)

    async def AddParticipants(
        self, request: pb.AddParticipantsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.AddParticipantsResponse:
        parsed = parse(
            AddParticipants,
            {"conversationId": request.conversation_id, "userIds": list(request.user_ids)},
        )
        conversation = await self._chat.groups.add_participants(
            caller(), conversation_id=parsed.conversation_id, user_ids=parsed.user_ids
        )
        return pb.AddParticipantsResponse(conversation=conversation_pb(conversation))

    async def LeaveConversation(
        self, request: pb.LeaveConversationRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.LeaveConversationResponse:
        parsed = parse(LeaveConversation, {"conversationId": request.conversation_id})
        await self._chat.groups.leave(caller(), conversation_id=parsed.conversation_id)
        return pb.LeaveConversationResponse()


def _uuid(value: str, field: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise ValidationFailed(f"{field} must be a UUID") from None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _timestamp(record_time: datetime) -> Timestamp:
    stamp = Timestamp()
    _stamp(stamp, record_time)
    return stamp


def _stamp(field: Timestamp, record_time: datetime) -> None:
    """Set a Timestamp field in place. protobuf's ``FromDatetime`` goes through ``timegm`` and a
    time tuple (15% of a history page's answer for its 50 messages), and building a Timestamp
    to assign copies it. Times here are aware (``tables.UTCDateTime``)."""
    if record_time.tzinfo is None:
        record_time = record_time.replace(tzinfo=UTC)
    since = record_time - _EPOCH
    field.seconds = since.days * 86_400 + since.seconds
    field.nanos = since.microseconds * 1000


def message_pb(message: MessageRecord) -> pb.Message:
    out = pb.Message()
    _fill_message(out, message)
    return out


def _fill_message(out: pb.Message, message: MessageRecord) -> None:
    """Fields set one by one on ``out`` (a page's ``messages.add()``), the optional ones only
    when present: a third cheaper than constructor keywords, and no copy into the page, for the
    50 messages of every history page (BENCHMARKS.md, thirteenth reading)."""
    out.id = str(message.id)
    out.conversation_id = str(message.conversation_id)
    out.author_id = message.author_id
    out.content = message.content
    out.status = _STATUS[message.status]
    if message.client_message_id:
        out.client_message_id = message.client_message_id
    _stamp(out.created_at, message.created_at)
    if message.edited_at is not None:
        _stamp(out.edited_at, message.edited_at)
    if message.deleted_at is not None:
        _stamp(out.deleted_at, message.deleted_at)
    if message.reactions:
        out.reactions.extend(_reactions_pb(message))
    if message.attachments:
        out.attachments.extend(attachment_pb(a) for a in message.attachments)


def attachment_pb(attachment: AttachmentView) -> pb.Attachment:
    return pb.Attachment(
        id=str(attachment.id),
        file_name=attachment.file_name,
        content_type=attachment.content_type,
        size_bytes=attachment.size_bytes,
        url=attachment.url,
        url_expires_at=_timestamp(attachment.url_expires_at),
    )


def _reactions_pb(message: MessageRecord) -> list[pb.Reaction]:
    return [pb.Reaction(emoji=e, user_ids=list(users)) for e, users in message.reactions]


def conversation_pb(conversation: ConversationRecord) -> pb.Conversation:
    return pb.Conversation(
        id=str(conversation.id),
        participant_ids=list(conversation.participant_ids),
        created_at=_timestamp(conversation.created_at),
        kind=_KIND[conversation.kind],
        title=conversation.title or "",
        created_by=conversation.created_by or "",
    )


class PortInUse(RuntimeError):
    """The gRPC port is taken: a start-up error, not a second server sharing it."""


@dataclass(frozen=True)
class ServerTls:
    """PEM files for the server's identity, and the CA of accepted clients for mutual TLS."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key_file.read_bytes(), self.cert_file.read_bytes())],
            root_certificates=(
                self.client_ca_file.read_bytes() if self.client_ca_file is not None else None
            ),
            require_client_auth=self.client_ca_file is not None,
        )


class GrpcServer:
    """The aio server with the messaging, health and reflection services.

    Built in the app factory, but the grpc.aio server itself is created in ``start``: it binds
    to the event loop that creates it, which must be the one uvicorn runs.
    """

    def __init__(
        self,
        *,
        chat: Chat,
        changes: MessageChanges,
        verifier: TokenVerifier,
        host: str,
        port: int,
        tls: ServerTls | None = None,
    ) -> None:
        self._chat = chat
        self._changes = changes
        self._verifier = verifier
        self._address = f"{host}:{port}"
        self.port = port
        self._tls = tls
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self._serving: bool | None = None

    async def start(self) -> None:
        # grpc turns SO_REUSEPORT on by default: a second process on the same port would start
        # without a word and the kernel would split clients between the two.
        server = grpc.aio.server(
            interceptors=[CallInterceptor(self._verifier)],
            options=[
                ("grpc.so_reuseport", 0),
                # grpc refuses metadata between its soft (8 KiB) and hard (16 KiB) limits at
                # random; one limit makes a large token's answer deterministic: up to 16 KiB it
                # reaches the verifier (UNAUTHENTICATED past 8 KiB), beyond RESOURCE_EXHAUSTED.
                ("grpc.max_metadata_size", MAX_METADATA_BYTES),
                ("grpc.absolute_max_metadata_size", MAX_METADATA_BYTES),
            ],
        )
        self._health = health.aio.HealthServicer()
        pb_grpc.add_MessagingServiceServicer_to_server(
            MessagingServicer(self._chat, self._changes), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        enable_reflection((SERVICE_NAME, health.SERVICE_NAME), server)
        try:
            if self._tls is None:
                self.port = server.add_insecure_port(self._address)
            else:
                self.port = server.add_secure_port(self._address, self._tls.credentials())
        except RuntimeError as exc:
            raise PortInUse(
                f"cannot listen for gRPC on {self._address}: {exc} (is another process "
                "using the port? set MESSAGING_GRPC_PORT)"
            ) from exc
        if self.port == 0:  # older grpc versions answer 0 instead of raising
            raise PortInUse(f"cannot listen for gRPC on {self._address}: the port is in use")
        await server.start()
        self._server = server

    async def set_serving(self, serving: bool) -> None:
        """Follow readiness: health answers SERVING only while the process is ready."""
        if serving == self._serving:
            return
        if self._health is None:
            return
        self._serving = serving
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", SERVICE_NAME):
            await self._health.set(service, status)

    async def stop(self, grace_seconds: float) -> None:
        """Stop taking calls; in-flight calls get ``grace_seconds`` to finish."""
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace_seconds)
