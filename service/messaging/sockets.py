"""The Socket.IO side: the handshake, the client events, and the ack envelope.

Every event handler has the same shape: validate the payload, call ``Chat``, answer
``{"ok": true, "data": ...}``; any error becomes ``{"ok": false, "error": {...}}`` with the
contract's code. Nothing a client sends can disconnect its socket or crash a handler: a wrong
number of arguments, a non-object payload or an unknown event all get a ``VALIDATION_FAILED`` ack.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import orjson
import socketio
from engineio import packet as eio_packet
from socketio import packet as sio_packet

from messaging import metrics, tracing, websocket_transport
from messaging.auth import TokenVerifier, bearer_token
from messaging.blocking import Blocks
from messaging.chat import Chat
from messaging.delivery import Delivery, user_room
from messaging.errors import (
    RateLimited,
    Unauthorized,
    Unavailable,
    ValidationFailed,
    as_messaging_error,
)
from messaging.logs import log_context, new_request_id, user_hash
from messaging.message_changes import MessageChanges
from messaging.payloads import (
    AddParticipants,
    BlockUser,
    CreateConversation,
    CreateGroup,
    CreateUpload,
    DeleteMessage,
    EditMessage,
    GetMessageHistory,
    GetPresence,
    GetReceipts,
    LeaveConversation,
    ListBlocked,
    ListConversations,
    MarkDelivered,
    MarkRead,
    ReportMessage,
    SendMessage,
    SetReaction,
    SyncMessages,
    Typing,
    conversation_json,
    iso,
    message_deleted_json,
    message_json,
    parse,
    reactions_json,
    receipt_json,
    summary_json,
    upload_json,
)
from messaging.presence import Presence
from messaging.ratelimit import RateLimiter
from messaging.reports import Reports
from messaging.sessions import SessionClock
from messaging.settings import Settings

log = logging.getLogger(__name__)

Handler = Callable[[str, str, Any], Awaitable[Any]]
EventHandler = Callable[..., Awaitable[Any]]
NAMESPACE = "/"
# After ``sessionExpired`` and the disconnect packet, official clients close the connection
# themselves; one that does not is closed by the server this much later.
EXPIRED_CLOSE_GRACE_SECONDS = 5.0

# The per-user limit (``ratelimit``) each event spends from.
EVENT_LIMITS = {
    "createConversation": "conversations",
    "sendMessage": "send",
    "markDelivered": "receipts",
    "markRead": "receipts",
    "typing": "typing",
    "getPresence": "presence",
    "syncMessages": "sync",
    # Reads of pages share the sync budget; changes to sent messages share the send budget.
    "listConversations": "sync",
    "getMessageHistory": "sync",
    "editMessage": "send",
    "deleteMessage": "send",
    "setReaction": "send",
    # Rare (once per token lifetime) but each one verifies a signature: it shares the small
    # presence budget rather than going unlimited.
    "reauthenticate": "presence",
    # Rare writes, like opening a conversation; the list is a read like a sync.
    "blockUser": "conversations",
    "unblockUser": "conversations",
    "reportMessage": "conversations",
    "listBlocked": "sync",
    "addParticipants": "conversations",
    "leaveConversation": "conversations",
    "getReceipts": "receipts",
    # Each upload is followed by a send: it shares the send budget.
    "createUpload": "send",
}


class _OrjsonCodec:
    """python-socketio's JSON hook: orjson is several times faster than the standard module.

    orjson refuses lone surrogates (``"\\ud800"``), which JSON allows and JavaScript strings
    hold: such a packet used to be dropped undecoded, so its sender never got an ack. They are
    decoded by the standard module instead and reach validation, which refuses them with
    ``VALIDATION_FAILED``; an answer that must quote one (a field name) is encoded the same way.
    """

    @staticmethod
    def dumps(obj: Any, **_: Any) -> str:
        try:
            return orjson.dumps(obj).decode()
        except TypeError:
            return json.dumps(obj, separators=(",", ":"))

    @staticmethod
    def loads(data: str | bytes, **_: Any) -> Any:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            return json.loads(data)


class SocketEvents:
    """Owns the AsyncServer and routes its events to ``Chat``."""

    def __init__(
        self,
        *,
        verifier: TokenVerifier,
        chat: Chat,
        changes: MessageChanges,
        presence: Presence,
        delivery: Delivery,
        server: socketio.AsyncServer,
        limiter: RateLimiter,
        max_sockets_per_user: int = 20,
        blocks: Blocks,
        reports: Reports,
    ) -> None:
        self._verifier = verifier
        self._blocks = blocks
        self._reports = reports
        self.limiter = limiter
        self._max_sockets_per_user = max_sockets_per_user
        self._chat = chat
        self._changes = changes
        self._presence = presence
        self._here = presence.local  # this process's sockets (the session store)
        self._delivery = delivery
        self.server = server
        self.accepting = True
        self._user_hashes: dict[str, str] = {}  # sid -> hashed user id, for log lines
        self._sessions = SessionClock()
        self._closing: set[asyncio.Task[None]] = set()
        handlers: dict[str, Handler] = {
            "createConversation": self._create_conversation,
            "sendMessage": self._send_message,
            "markDelivered": self._mark_delivered,
            "markRead": self._mark_read,
            "typing": self._typing,
            "getPresence": self._get_presence,
            "syncMessages": self._sync_messages,
            "reauthenticate": self._reauthenticate,
            "blockUser": self._block_user,
            "unblockUser": self._unblock_user,
            "listBlocked": self._list_blocked,
            "reportMessage": self._report_message,
            "addParticipants": self._add_participants,
            "leaveConversation": self._leave_conversation,
            "getReceipts": self._get_receipts,
            "listConversations": self._list_conversations,
            "getMessageHistory": self._get_message_history,
            "editMessage": self._edit_message,
            "deleteMessage": self._delete_message,
            "setReaction": self._set_reaction,
            "createUpload": self._create_upload,
        }
        self.events = list(handlers)
        for event, handler in handlers.items():
            server.on(event, self._endpoint(event, handler))
        server.on("connect", self._connect)
        server.on("disconnect", self._disconnect)
        server.on("*", self._unknown_event)

    # --- connection lifecycle ------------------------------------------------------------------

    async def _connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        try:
            if not self.accepting:
                raise Unavailable("this replica is shutting down; connect to another one")
            token = auth.get("token") if isinstance(auth, dict) else None
            if token is None:
                token = bearer_token(environ.get("HTTP_AUTHORIZATION"))
            identity = await self._verifier.verify(token)
            user_id = identity.user_id
            if await self._presence.count_sockets(user_id) >= self._max_sockets_per_user:
                raise RateLimited(
                    f"at most {self._max_sockets_per_user} sockets per user; close one first"
                )
            if not self._transport_open(sid):
                raise Unauthorized("the connection closed during the handshake")
            first = self._presence.register(user_id, sid)
            self._user_hashes[sid] = user_hash(user_id)
            self._sessions.set(sid, identity.expires_at + self._verifier.leeway_seconds)
            if first:
                await self._delivery.watch(user_id)
            if not self._transport_open(sid):  # it went while we subscribed: undone below
                raise Unauthorized("the connection closed during the handshake")
            # Last, with no await after it: the CONNECT packet is written before any event can
            # be, and the socket's events start right after the position ``watch`` read.
            await self.server.enter_room(sid, user_room(user_id))
        except Exception as exc:
            # Anything but a refusal escaping here would leave python-socketio's pre-connect
            # state behind for good and the client waiting for an answer that never comes.
            if self._here.user_of(sid) is not None:
                with contextlib.suppress(Exception):
                    await self._disconnect(sid, "handshake failed")
            error = as_messaging_error(exc)
            metrics.CONNECTS.labels(outcome=error.code).inc()
            if error is not exc:
                log.exception("handshake failed", extra={"sid": sid})
            else:
                log.info(
                    "handshake refused: %s", error.message, extra={"sid": sid, "code": error.code}
                )
            raise socketio.exceptions.ConnectionRefusedError(
                error.message, {"code": error.code, "message": error.message}
            ) from None
        metrics.CONNECTS.labels(outcome="accepted").inc()
        log.info("socket connected", extra={"sid": sid, "user": user_hash(user_id)})

    def _transport_open(self, sid: str) -> bool:
        eio_sid = self.server.manager.eio_sid_from_sid(sid, NAMESPACE)
        return eio_sid is not None and eio_sid in self.server.eio.sockets

    async def _disconnect(self, sid: str, reason: Any = None) -> None:
        self._sessions.forget(sid)
        user_id, last = self._presence.unregister(sid)
        self._user_hashes.pop(sid, None)
        if user_id is None:
            return  # a handshake that never completed
        if last:
            await self._delivery.unwatch(user_id)
        log.info(
            "socket disconnected",
            extra={
                "sid": sid,
                "user": user_hash(user_id),
                "reason": str(reason),
            },
        )

    async def _unknown_event(self, event: str, sid: str, *args: Any) -> dict[str, Any]:
        metrics.SOCKET_EVENTS.labels(event="unknown", outcome=ValidationFailed.code).inc()
        return ValidationFailed(f"unknown event {str(event)[:64]!r}").to_ack()

    # --- the envelope --------------------------------------------------------------------------

    def _endpoint(self, event: str, handler: Handler) -> Callable[..., Awaitable[dict[str, Any]]]:
        # Every event passes here: the metric series are resolved once, not per call.
        succeeded = metrics.SOCKET_EVENTS.labels(event=event, outcome="ok")
        seconds = metrics.SOCKET_EVENT_SECONDS.labels(event=event)
        chat = self._chat
        limiter = self.limiter
        limit = EVENT_LIMITS.get(event)
        # Sends hold a slot while they wait for their commit (the commit queue is shared).
        slot = limiter.in_flight if event == "sendMessage" else None
        span_name = f"socket.io/{event}"

        async def endpoint(sid: str, *args: Any) -> dict[str, Any]:
            started = time.perf_counter()
            user_id = self._here.user_of(sid)
            context = {"request_id": new_request_id(), "sid": sid, "event": event}
            if user_id is not None:
                context["user"] = self._user_hashes.get(sid) or user_hash(user_id)
            chat.database.request_started()
            try:
                # The log context is safe to record (the user is hashed); no payload is.
                with log_context(**context), tracing.span(span_name, kind=tracing.SERVER,
                                                          fields=context):  # fmt: skip
                    if user_id is None:
                        raise Unauthorized("socket is not authenticated")
                    if len(args) != 1:
                        raise ValidationFailed("expected exactly one payload argument")
                    if slot is not None:
                        with slot(user_id):
                            await limiter.admit(user_id, "send")
                            data = await handler(user_id, sid, args[0])
                    else:
                        if limit is not None:
                            await limiter.admit(user_id, limit)
                        data = await handler(user_id, sid, args[0])
                succeeded.inc()
                return {"ok": True, "data": data}
            except Exception as exc:
                error = as_messaging_error(exc)
                metrics.SOCKET_EVENTS.labels(event=event, outcome=error.code).inc()
                with log_context(**context):
                    if error is not exc:
                        log.exception("unexpected error answering %s", event)
                    elif error.code in ("UNAVAILABLE", "INTERNAL"):
                        log.warning("%s failed: %s", event, error.message)
                return error.to_ack()
            finally:
                chat.database.request_finished()
                seconds.observe(time.perf_counter() - started)

        return endpoint

    # --- the events ----------------------------------------------------------------------------

    async def _create_conversation(self, user_id: str, sid: str, payload: Any) -> Any:
        if isinstance(payload, dict) and "participantIds" in payload:
            group = parse(CreateGroup, payload)
            created = await self._chat.groups.create(
                user_id,
                participant_ids=group.participant_ids,
                title=group.title,
                client_conversation_id=group.client_conversation_id,
                origin_sid=sid,
            )
            return conversation_json(created)
        request = parse(CreateConversation, payload)
        conversation = await self._chat.conversations.create_conversation(
            user_id, request.participant_id
        )
        return conversation_json(conversation)

    async def _send_message(self, user_id: str, sid: str, payload: Any) -> Any:
        request = parse(SendMessage, payload)
        message = await self._chat.messages.send_message(
            user_id,
            conversation_id=request.conversation_id,
            content=request.content,
            client_message_id=request.client_message_id,
            origin_sid=sid,
            attachment_ids=request.attachment_ids,
        )
        return message_json(message)

    async def _create_upload(self, user_id: str, sid: str, payload: Any) -> Any:
        request = parse(CreateUpload, payload)
        upload = await self._chat.attachments.create_upload(
            user_id,
            conversation_id=request.conversation_id,
            file_name=request.file_name,
            content_type=request.content_type,
            size_bytes=request.size_bytes,
        )
        return upload_json(upload.attachment_id, upload.request)

    async def _mark_delivered(self, user_id: str, sid: str, payload: Any) -> Any:
        request = parse(MarkDelivered, payload)
        updated = await self._chat.messages.mark_delivered(
            user_id, request.message_ids, origin_sid=sid
        )
        return {"updated": updated}

    async def _mark_read(self, user_id: str, sid: str, payload: Any) -> Any:
        request = parse(MarkRead, payload)
        updated = await self._chat.messages.mark_read(
            user_id,
            conversation_id=request.conversation_id,
            up_to_message_id=request.up_to_message_id,
            origin_sid=sid,
        )
        return {"updated": updated}

    async def _typing(self, user_id: str, sid: str, payload: Any) -> Any:
        request = parse(Typing, payload)
        await self._chat.conversations.typing(
            user_id,
            conversation_id=request.conversation_id,
            is_typing=request.is_typing,
            origin_sid=sid,
        )
        return {}

    async def _get_presence(self, user_id: str, sid: str, payload: Any) -> Any:
        request = parse(GetPresence, payload)
        found = await self._chat.conversations.presence(user_id, request.user_ids)
        return {
            "presence": {
                uid: {
                    "online": info.online,
                    "lastSeenAt": None if info.last_seen_at is None else iso(info.last_seen_at),
                }
                for uid, info in found.items()
            }
        }

    async def _sync_messages(self, user_id: str, sid: str, payload: Any) -> Any:
        request = parse(SyncMessages, payload if payload is not None else {})
        page = await self._chat.messages.sync(
            user_id, after=request.after, since=request.since, limit=request.limit
        )
        reply: dict[str, Any] = {
            "messages": [message_json(m) for m in page.messages],
            "hasMore": page.has_more,
        }
        if page.sync_token is not None:
            reply["syncToken"] = page.sync_token
        return reply

    async def _add_participants(self, user_id: str, sid: str, payload: Any) -> Any:
        request = parse(AddParticipants, payload)
        conversation = await self._chat.groups.add_participants(
            user_id,
            conversation_id=request.conversation_id,
            user_ids=request.user_ids,
            origin_sid=sid,
        )
        return conversation_json(conversation)

    async def _leave_conversation(self, user_id: str, sid: str, payload: Any) -> Any:
        request = parse(LeaveConversation, payload)
        await self._chat.groups.leave(
            user_id, conversation_id=request.conversation_id, origin_sid=sid
        )
        return {}

    async def _get_receipts(self, user_id: str, sid: str, payload: Any) -> Any:
        request = parse(GetReceipts, payload)
        found = await self._chat.receipts.get(user_id, request.message_id)
        return {"receipts": [receipt_json(r) for r in found]}

    async def _reauthenticate(self, user_id: str, sid: str, payload: Any) -> Any:
        if not isinstance(payload, dict):
            raise ValidationFailed("reauthenticate takes {token}")
        identity = await self._verifier.verify(payload.get("token"))
        if identity.user_id != user_id:
            raise Unauthorized("the token is for another user than this socket's")
        if self._sessions.deadline(sid) is None:
            raise Unauthorized("the session has already ended")
        self._sessions.set(sid, identity.expires_at + self._verifier.leeway_seconds)
        return {"expiresAt": iso(datetime.fromtimestamp(identity.expires_at, UTC))}

    async def _block_user(self, user_id: str, sid: str, payload: Any) -> Any:
        request = parse(BlockUser, payload)
        await self._blocks.block(user_id, request.user_id)
        return {}

    async def _unblock_user(self, user_id: str, sid: str, payload: Any) -> Any:
        request = parse(BlockUser, payload)
        await self._blocks.unblock(user_id, request.user_id)
        return {}

    async def _list_blocked(self, user_id: str, sid: str, payload: Any) -> Any:
        parse(ListBlocked, payload if payload is not None else {})
        return {"userIds": await self._blocks.blocked(user_id)}

    async def _report_message(self, user_id: str, sid: str, payload: Any) -> Any:
        request = parse(ReportMessage, payload)
        report = await self._reports.report(
            user_id, message_id=request.message_id, reason=request.reason, note=request.note
        )
        return {"reportId": str(report.id)}

    async def _list_conversations(self, user_id: str, sid: str, payload: Any) -> Any:
        # A thin call into the one implementation gRPC ListConversations also uses.
        request = parse(ListConversations, payload if payload is not None else {})
        page = await self._chat.conversations.list_conversations(
            user_id, page_size=request.limit, page_token=request.page_token or ""
        )
        return {
            "conversations": [summary_json(s) for s in page.items],
            "nextPageToken": page.next_page_token or None,
        }

    async def _get_message_history(self, user_id: str, sid: str, payload: Any) -> Any:
        request = parse(GetMessageHistory, payload)
        page = await self._chat.messages.history(
            user_id,
            conversation_id=request.conversation_id,
            page_size=request.limit,
            page_token=request.page_token or "",
        )
        return {
            "messages": [message_json(m) for m in page.items],
            "nextPageToken": page.next_page_token or None,
        }

    async def _edit_message(self, user_id: str, sid: str, payload: Any) -> Any:
        request = parse(EditMessage, payload)
        message = await self._changes.edit(
            user_id, message_id=request.message_id, content=request.content, origin_sid=sid
        )
        return message_json(message)

    async def _delete_message(self, user_id: str, sid: str, payload: Any) -> Any:
        request = parse(DeleteMessage, payload)
        message = await self._changes.delete(user_id, message_id=request.message_id, origin_sid=sid)
        return message_deleted_json(message)

    async def _set_reaction(self, user_id: str, sid: str, payload: Any) -> Any:
        request = parse(SetReaction, payload)
        result = await self._changes.set_reaction(
            user_id,
            message_id=request.message_id,
            emoji=request.emoji,
            active=request.active,
            origin_sid=sid,
        )
        return {"reactions": reactions_json(result.message.reactions)}

    # --- session expiry ------------------------------------------------------------------------

    async def expire_sessions(self, interval_seconds: float) -> None:
        """The replica's one sweep: end every session whose token (plus leeway) has expired."""
        while True:
            await asyncio.sleep(interval_seconds)
            for sid in self._sessions.due(time.time()):
                try:
                    await self._expire(sid)
                except Exception:
                    log.exception("ending an expired session failed", extra={"sid": sid})

    async def _expire(self, sid: str) -> None:
        """``sessionExpired``, then a Socket.IO disconnect packet: official clients do not
        reconnect after a disconnect the server asked for, so a stale token is not replayed."""
        eio_sid = self.server.manager.eio_sid_from_sid(sid, NAMESPACE)
        if eio_sid is None:
            return
        metrics.SESSIONS_EXPIRED.inc()
        log.info("session expired", extra={"sid": sid, "user": self._user_hashes.get(sid)})
        await self.server.emit("sessionExpired", {}, to=sid)
        await self.server.disconnect(sid)
        asyncio.get_running_loop().call_later(
            EXPIRED_CLOSE_GRACE_SECONDS, self._close_if_open, eio_sid
        )

    def _close_if_open(self, eio_sid: str) -> None:
        if eio_sid in self.server.eio.sockets:
            task = asyncio.get_running_loop().create_task(self.server.eio.disconnect(eio_sid))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    # --- draining ------------------------------------------------------------------------------

    def connected_sids(self) -> list[str]:
        return [sid for user in self._here.local_users() for sid in self._here.sids_of(user)]

    async def close_transport(self, sid: str) -> None:
        """Drop a socket's connection the way a dying server would: no goodbye packet.

        Both official clients answer a lost connection by reconnecting (through the load
        balancer, to another replica); an Engine.IO CLOSE packet or a Socket.IO disconnect
        would tell python-socketio's client to stay away. python-engineio has no public call
        for this, so it is done with its socket object: releasing the writer closes the
        websocket (or ends a pending poll), and closing with ``abort`` runs the disconnect
        handlers without sending anything.
        """
        eio_sid = self.server.manager.eio_sid_from_sid(sid, NAMESPACE)
        socket = self.server.eio.sockets.get(eio_sid) if eio_sid else None
        if socket is None:
            return
        if isinstance(socket, websocket_transport.DirectSocket):
            await socket.drop()
            return
        socket.queue.put_nowait(None)
        await socket.close(wait=False, abort=True, reason=self.server.eio.reason.SERVER_DISCONNECT)


RESERVED_EVENTS = frozenset(
    # Socket.IO's lifecycle names: never an event a client may send (the official servers
    # refuse them too); python-socketio would run its own connect/disconnect handlers for them.
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
)
_connecting_transport: contextvars.ContextVar[asyncio.WriteTransport | None] = (
    contextvars.ContextVar("connecting_transport", default=None)
)


class SocketServer(socketio.AsyncServer):  # type: ignore[misc]
    """python-socketio's server, with a lean path for what every message goes through, and the
    transport limits of docs/security.md on every path.

    - With ``fast_path`` (``MESSAGING_SOCKETIO_FAST_PATH``, the default), websocket connections
      opened directly are served by ``websocket_transport`` instead of python-engineio's
      per-socket reader, writer and ping tasks; and an EVENT packet for a registered event of
      the default namespace is decoded here and its handler started in one task that also sends
      the ack (python-socketio would build a Packet object, go through its generic dispatch, a
      task, then a lookup through namespace and catch-all handlers, and build another Packet for
      the ack). Everything else (connects, disconnects, acks from the client, binary packets,
      other namespaces, unknown events, malformed packets) goes to python-socketio unchanged.
      Without it, python-engineio's and python-socketio's stock paths serve everything.
    - On both paths: malformed packets are counted and refused without a traceback (a socket
      that keeps sending them is closed), reserved event names are refused like unknown events,
      binary attachments are held to a count and a size, a socket with no CONNECT within the
      connect timeout is closed, a slow consumer is dropped, an oversized polling POST is
      answered 413 and its session ended.
    """

    def __init__(
        self, *, fast_path: bool, limits: websocket_transport.TransportLimits, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.fast_path = fast_path
        self.limits = limits
        self.protocol_errors = websocket_transport.ProtocolErrors(limits.max_protocol_errors)
        self._tasks: set[asyncio.Task[None]] = set()
        self._connect_timers: dict[str, asyncio.TimerHandle] = {}
        # Stock websockets' transports, to drop a slow consumer (python-engineio keeps none).
        self._transports: dict[str, asyncio.WriteTransport] = {}

    async def handle_request(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) != 3 or kwargs:
            return await super().handle_request(*args, **kwargs)
        scope, receive, send = args
        if scope.get("type") == "http":
            if (
                scope.get("method") == "POST"
                and _content_length(scope) > self.limits.max_payload_bytes
            ):
                return await self._refuse_oversized_post(scope, send)
            return await super().handle_request(*args)
        if scope.get("type") != "websocket":
            return await super().handle_request(*args)
        if (
            self.fast_path
            and "websocket" in self.eio.transports
            and websocket_transport.is_direct_websocket(scope)
            and websocket_transport.origin_allowed(self.eio, scope)
        ):
            return await websocket_transport.serve(
                self.eio, scope, receive, send, limits=self.limits, errors=self.protocol_errors
            )
        transport = getattr(getattr(send, "__self__", None), "transport", None)
        sid = _query_value(scope, "sid")
        if sid is not None and transport is not None and sid in self.eio.sockets:
            self._transports[sid] = transport  # an upgrade of a polling session
        token = _connecting_transport.set(transport)
        try:
            receive = websocket_transport.checked_receive(receive, self.protocol_errors)
            return await super().handle_request(scope, receive, send)
        finally:
            _connecting_transport.reset(token)

    async def _refuse_oversized_post(self, scope: dict[str, Any], send: Any) -> None:
        """Answer 413 without reading the body, and end the session it was sent for.

        python-engineio answers such a POST by closing the session and waiting for its queue to
        drain, which never happens without a pending poll: the request was never answered and
        the session never freed.
        """
        self.protocol_errors.record("post_too_large", None)
        sid = _query_value(scope, "sid")
        if sid is not None and sid in self.eio.sockets:
            await self._end_session(sid, goodbye=False, reason=self.eio.reason.TRANSPORT_ERROR)
        body = b"payload too large"
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"text/plain"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _end_session(self, eio_sid: str, *, goodbye: bool, reason: Any) -> None:
        """Close an Engine.IO session on either transport (a CLOSE packet first if ``goodbye``)."""
        socket = self.eio.sockets.get(eio_sid)
        if socket is None or socket.closing or socket.closed:
            return
        if isinstance(socket, websocket_transport.DirectSocket):
            await socket.close(wait=False, abort=not goodbye, reason=reason)
            return
        await socket.close(wait=False, abort=not goodbye, reason=reason)
        socket.queue.put_nowait(None)  # releases the writer task or a pending long poll

    # --- the Engine.IO session's life -----------------------------------------------------------

    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> None:
        # python-socketio keeps the environ for the whole connection; the connect handler only
        # needs the Authorization header (the ASGI scope, kept by the server anyway, has the rest).
        if "asgi.scope" in environ and "wsgi.input" in environ:
            environ = websocket_transport.handshake_environ(environ["asgi.scope"])
        loop = asyncio.get_running_loop()
        self._connect_timers[eio_sid] = loop.call_later(
            self.limits.connect_timeout_seconds, self._connect_deadline, eio_sid
        )
        socket = self.eio.sockets.get(eio_sid)
        if socket is not None and not isinstance(socket, websocket_transport.DirectSocket):
            socket.queue = _MeteredQueue(
                socket.queue,
                self.limits.max_outbound_buffer_bytes,
                lambda: self._slow_consumer(eio_sid),
            )
            transport = _connecting_transport.get()
            if transport is not None:
                self._transports[eio_sid] = transport
        await super()._handle_eio_connect(eio_sid, environ)

    async def _handle_eio_disconnect(self, eio_sid: str, reason: Any) -> None:
        timer = self._connect_timers.pop(eio_sid, None)
        if timer is not None:
            timer.cancel()
        self._transports.pop(eio_sid, None)
        self.protocol_errors.forget(eio_sid)
        await super()._handle_eio_disconnect(eio_sid, reason)
        # python-socketio only cleans up namespaces the socket had fully connected to: one whose
        # connect handler failed, or was still running when the connection went, would stay in
        # the manager for good (one entry per refused attempt, which is how 13k hostile
        # handshakes used to cost 100 MB).
        for namespace in list(self.manager.get_namespaces()):
            sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
            if sid is not None:
                await self._trigger_event("disconnect", namespace, sid, reason)
                await self.manager.disconnect(sid, namespace, ignore_queue=True)

    def _connect_deadline(self, eio_sid: str) -> None:
        self._connect_timers.pop(eio_sid, None)
        sid = self.manager.sid_from_eio_sid(eio_sid, NAMESPACE)
        if sid is not None and self.manager.is_connected(sid, NAMESPACE):
            return
        if eio_sid not in self.eio.sockets:
            return
        self.protocol_errors.record("connect_timeout", eio_sid)
        self._background(
            self._end_session(eio_sid, goodbye=True, reason=self.eio.reason.TRANSPORT_ERROR)
        )

    def _slow_consumer(self, eio_sid: str) -> None:
        """A stock socket's queue passed the outbound limit: drop it now, close it after."""
        self.protocol_errors.record("slow_consumer", eio_sid)
        transport = self._transports.pop(eio_sid, None)
        if transport is not None:
            transport.abort()  # wakes the writer blocked on a full transport, and the reader
        self._background(
            self._end_session(eio_sid, goodbye=False, reason=self.eio.reason.TRANSPORT_ERROR)
        )

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- packets --------------------------------------------------------------------------------

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        pending = self._binary_packet.get(eio_sid)
        if pending is not None:
            held = sum(len(a) for a in pending.attachments) + len(data)
            if held > self.limits.max_payload_bytes:
                del self._binary_packet[eio_sid]
                return await self._refuse(eio_sid, "binary_attachments", "attachments too large")
        elif type(data) is str:
            kind = data[:1]
            if kind == "2":
                if self.fast_path and await self._lean_event(eio_sid, data):
                    return
            elif (
                kind in ("5", "6")
                and _announced_attachments(data) > self.limits.max_binary_attachments
            ):
                return await self._refuse(eio_sid, "binary_attachments", "too many attachments")
        try:
            await super()._handle_eio_message(eio_sid, data)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            # python-socketio's decoder and dispatch on a malformed packet: the client's fault.
            self._binary_packet.pop(eio_sid, None)
            await self._refuse(eio_sid, "socketio_packet", type(exc).__name__)

    async def _refuse(
        self, eio_sid: str, kind: websocket_transport.ProtocolErrorKind, error: str
    ) -> None:
        if self.protocol_errors.record(kind, eio_sid, error):
            await self._end_session(eio_sid, goodbye=True, reason=self.eio.reason.TRANSPORT_ERROR)

    async def _lean_event(self, eio_sid: str, data: str) -> bool:
        """Start a registered event's handler; False leaves the packet to python-socketio."""
        event = _decode_event(data)
        if event is None:
            return False
        ack_id, name, args = event
        handler = self.handlers.get(NAMESPACE, {}).get(name)
        if handler is None or name in RESERVED_EVENTS:
            return False
        sid = self.manager.sid_from_eio_sid(eio_sid, NAMESPACE)
        if sid is None or not self.manager.is_connected(sid, NAMESPACE):
            return True  # python-socketio drops events of sockets not (yet) connected
        task = asyncio.get_running_loop().create_task(
            self._run_event(handler, sid, eio_sid, ack_id, args)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _handle_event(
        self, eio_sid: str, namespace: str | None, ack_id: int | None, data: Any
    ) -> None:
        if type(data) is not list or not data or type(data[0]) is not str:
            return await self._refuse(eio_sid, "socketio_packet", "event without a name")
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace or NAMESPACE)
        if sid is None or not self.manager.is_connected(sid, namespace or NAMESPACE):
            # python-socketio would log a warning per such event.
            return await self._refuse(eio_sid, "socketio_packet", "event before CONNECT")
        if data[0] in RESERVED_EVENTS:
            # Answered like an unknown event, by the catch-all handler; never the lifecycle one.
            if self.protocol_errors.record("reserved_event", eio_sid):
                return await self._end_session(
                    eio_sid, goodbye=True, reason=self.eio.reason.TRANSPORT_ERROR
                )
            catch_all = self.handlers.get(namespace or NAMESPACE, {}).get("*")
            if catch_all is None:
                return None
            result = await catch_all(data[0], sid, *data[1:])
            if ack_id is not None:
                await self._send_packet(
                    eio_sid,
                    self.packet_class(
                        sio_packet.ACK, namespace=namespace, id=ack_id, data=[result]
                    ),
                )
            return None
        await super()._handle_event(eio_sid, namespace, ack_id, data)
        return None

    async def _run_event(
        self,
        handler: EventHandler,
        sid: str,
        eio_sid: str,
        ack_id: int | None,
        args: list[Any],
    ) -> None:
        try:
            result = await handler(sid, *args)
        except asyncio.CancelledError:
            result = None  # as python-socketio: a cancelled handler still gets its ack answered
        if ack_id is None:
            return
        if result is None:
            data: list[Any] = []
        elif isinstance(result, tuple):
            data = list(result)
        else:
            data = [result]
        ack = eio_packet.Packet(
            eio_packet.MESSAGE, data="3" + str(ack_id) + _OrjsonCodec.dumps(data)
        )
        socket = self.eio.sockets.get(eio_sid)
        if type(socket) is websocket_transport.DirectSocket and socket.send_now(ack):
            return
        await self.eio.send_packet(eio_sid, ack)


class _MeteredQueue(asyncio.Queue[Any]):
    """python-engineio's per-socket send queue, counting the bytes it holds.

    Its websocket writer waits while the transport is full, so everything sent to a client that
    stopped reading piles up here; past ``limit`` bytes ``overflow`` is called (once).
    """

    def __init__(
        self, previous: asyncio.Queue[Any], limit: int, overflow: Callable[[], None]
    ) -> None:
        super().__init__()
        self.held = 0
        self._limit = limit
        self._overflow: Callable[[], None] | None = overflow
        while not previous.empty():  # the OPEN packet, queued before the connect event
            self.put_nowait(previous.get_nowait())
            previous.task_done()

    def _put(self, item: Any) -> None:
        super()._put(item)
        self.held += _packet_size(item)
        if self.held > self._limit and self._overflow is not None:
            overflow, self._overflow = self._overflow, None
            overflow()

    def _get(self) -> Any:
        item = super()._get()
        self.held -= _packet_size(item)
        return item


def _packet_size(pkt: Any) -> int:
    data = getattr(pkt, "data", None)
    return len(data) if isinstance(data, (str, bytes)) else 16


def _announced_attachments(data: str) -> int:
    """The attachment count of a binary packet (``51-[...]``), 0 when it announces none."""
    dash = data.find("-", 1, 24)
    digits = data[1:dash] if dash > 1 else ""
    return int(digits) if digits.isdigit() else 0


def _content_length(scope: dict[str, Any]) -> int:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0


def _query_value(scope: dict[str, Any], key: str) -> str | None:
    values = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1")).get(key)
    return values[0] if values else None


def _decode_event(data: str) -> tuple[int | None, str, list[Any]] | None:
    """``2[name,...]`` or ``2<ack id>[name,...]`` of the default namespace; None for anything else.

    None sends the packet to python-socketio's own decoder, which handles (or rejects) the rest
    exactly as before.
    """
    end = 1
    size = len(data)
    while end < size and end < 100 and data[end].isdigit():
        end += 1
    if end >= size or data[end] != "[":
        return None
    try:
        payload = orjson.loads(data[end:])
    except orjson.JSONDecodeError:
        return None
    if not payload or type(payload) is not list or type(payload[0]) is not str:
        return None
    ack_id = int(data[1:end]) if end > 1 else None
    return ack_id, payload[0], payload[1:]


def build_socket_server(settings: Settings) -> SocketServer:
    # Engine.IO checks the Origin of polling requests and websocket handshakes (clients that send
    # no Origin, native apps and servers, are not browsers and pass). '*' lets any origin in (dev
    # with no list; never with credentials); None means only the service's own origin.
    origins: str | list[str] | None = settings.cors_allowed_origins or None
    if settings.cors_any_origin:
        origins = "*"
    return SocketServer(
        fast_path=settings.socketio_fast_path,
        limits=websocket_transport.TransportLimits(
            max_payload_bytes=settings.max_payload_bytes,
            max_outbound_buffer_bytes=settings.socketio_max_outbound_buffer_bytes,
            max_protocol_errors=settings.socketio_max_protocol_errors,
            max_binary_attachments=settings.socketio_max_binary_attachments,
            connect_timeout_seconds=settings.socketio_connect_timeout_seconds,
        ),
        async_mode="asgi",
        cors_allowed_origins=origins,
        cors_credentials=not settings.cors_any_origin,
        transports=list(settings.socketio_transports),
        ping_interval=settings.socketio_ping_interval_seconds,
        ping_timeout=settings.socketio_ping_timeout_seconds,
        max_http_buffer_size=settings.max_payload_bytes,
        json=_OrjsonCodec,
        logger=False,
        engineio_logger=False,
    )
