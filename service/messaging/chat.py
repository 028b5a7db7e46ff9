"""What users can do with conversations and messages: the rules, shared by Socket.IO and gRPC.

Transports parse and authenticate; everything a client may or may not do is decided here, and
every SQL statement lives in ``store.py``. A message is acknowledged only after its transaction
committed; it is delivered to sockets after that, and a failed delivery never fails the send
(PostgreSQL is the source of truth, clients catch up with ``syncMessages``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from messaging import metrics, outbox, receipts, store
from messaging.attachments import Attachments, NewUpload
from messaging.blocking import Blocks
from messaging.commits import GroupCommitter
from messaging.connections import ConnectionsChecker
from messaging.cursor import (
    decode_page_token,
    decode_sync_token,
    encode_page_token,
    encode_sync_token,
)
from messaging.delivery import Delivery, Logged
from messaging.errors import Forbidden, NotFound, Unavailable, ValidationFailed
from messaging.groups import Groups
from messaging.ids import new_message_id
from messaging.logs import describe_error
from messaging.payloads import (
    deleted_event_json,
    iso,
    message_json,
    reaction_event_json,
)
from messaging.presence import Presence, PresenceInfo
from messaging.read_replica import ReplicaReads
from messaging.receipts import Receipts
from messaging.storage import attachments as store_attachments
from messaging.storage import message_changes as change_store
from messaging.store import ConversationRecord, MessageRecord, NewMessage

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
HEAL_PAGE = 200
MAX_PAGE_SIZE = 100
CONVERSATION_CACHE_SIZE = 100_000


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class SyncPage:
    messages: list[MessageRecord]
    has_more: bool
    sync_token: str | None  # None for ``after``: that walk skips older messages' changes


class Chat:
    """The messaging rules over a database, the Connections service and the delivery fan-out."""

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        connections: ConnectionsChecker,
        delivery: Delivery,
        presence: Presence,
        cursor_key: bytes,
        blocks: Blocks,
        events: outbox.Outbox | None = None,
        attachments: Attachments | None = None,
        replica: ReplicaReads | None = None,
    ) -> None:
        self._engine = engine
        # History and conversation lists may be served by a read replica (None: the primary).
        self._replica = replica
        # Webhook events, written in the transaction of each change (none configured: a no-op).
        self._outbox = events or outbox.Outbox([])
        # None when attachments are off (MESSAGING_ATTACHMENTS_BACKEND=off).
        self._attachments = attachments
        if attachments is not None:
            attachments.use_connection(self._connection)
        self._connections = connections
        self._blocks = blocks
        self._delivery = delivery
        self._presence = presence
        self._cursor_key = cursor_key
        # Conversations never change once created (a pair, a creation time), so they are cached.
        self._conversations: OrderedDict[uuid.UUID, ConversationRecord] = OrderedDict()
        # On PostgreSQL the committer keeps its connection between close batches; SQLite has one
        # connection, which readers need too.
        linger = 0.05 if engine.dialect.name == "postgresql" else 0.0
        self._committer = GroupCommitter(
            self._connection,
            linger_seconds=linger,
            events=self._outbox.message_events if self._outbox.enabled else None,
        )
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        # False from the moment a request finds the database away until a ping succeeds:
        # readiness turns at once, not at the next periodic check.
        self.database_ok = True
        # Group rules (groups.py, receipts.py), wired by the app factory with ``use_groups``:
        # they run in this object's transactions.
        self._groups: Groups | None = None
        self.receipts = Receipts(database=self)

    def use_groups(self, groups: Groups) -> None:
        self._groups = groups

    @property
    def groups(self) -> Groups:
        if self._groups is None:
            raise RuntimeError("Chat.use_groups() was not called")
        return self._groups

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    @property
    def outbox(self) -> outbox.Outbox:
        """Where features record their webhook events (``record`` inside their transaction)."""
        return self._outbox

    @property
    def blocks(self) -> Blocks:
        """The blocking rules (the groups rules ask ``blocks.either_blocks``)."""
        return self._blocks

    # --- transactions ----------------------------------------------------------------------

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        """A transaction whose database failures surface as ``UNAVAILABLE``."""
        try:
            with _database_errors():
                async with self._engine.begin() as conn:
                    yield conn
        except Unavailable:
            self.database_ok = False
            raise

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection]:
        """A connection without an open transaction, for reads and for the group committer.

        On PostgreSQL it is in autocommit, so a read, or a batch of new messages (one statement),
        is one round trip instead of three (BEGIN, statement, COMMIT). A read of several
        statements may see commits made between them, which every reader here tolerates. The
        committer commits each batch itself (a no-op in autocommit, needed on SQLite).
        """
        try:
            with _database_errors():
                async with self._engine.connect() as conn:
                    if self._engine.dialect.name == "postgresql":
                        yield await conn.execution_options(isolation_level="AUTOCOMMIT")
                    else:
                        yield conn
        except Unavailable:
            self.database_ok = False
            raise

    async def _read(self, kind: str, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """``work`` (reads only) on the read replica when it has everything acknowledged before
        this call, else on the primary (read_replica.py); the primary without a replica."""
        if self._replica is not None:
            return await self._replica.read(kind, self._connection, work)
        async with self._connection() as conn:
            return await work(conn)

    def connection(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection for the feature modules' reads (failures surface as ``UNAVAILABLE``)."""
        return self._connection()

    def transaction(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A transaction for the feature modules' writes (failures surface as ``UNAVAILABLE``)."""
        return self._transaction()

    def request_started(self) -> None:
        """Count a request in flight, so a draining process can wait for them to finish."""
        self._in_flight += 1
        self._idle.clear()

    def request_finished(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()
        await self._committer.wait_idle()

    # --- conversations -------------------------------------------------------------------------

    async def create_conversation(self, user_id: str, other_user_id: str) -> ConversationRecord:
        if other_user_id == user_id:
            raise ValidationFailed("cannot open a conversation with yourself")
        await self._blocks.check_may_message(user_id, other_user_id)
        if not await self._connections.is_connected(user_id, other_user_id):
            raise Forbidden("you can only message your first-degree connections")
        async with self._transaction() as conn:
            conversation, created = await store.get_or_create_conversation(
                conn,
                conversation_id=uuid.uuid4(),
                user_a=user_id,
                user_b=other_user_id,
                created_at=datetime.now(UTC),
            )
            if created:
                await self._outbox.record(
                    conn,
                    "conversation.created",
                    outbox.conversation_created(conversation),
                    at=conversation.created_at,
                )
        self._remember(conversation)
        return conversation

    async def _conversation_for(
        self, user_id: str, conversation_id: uuid.UUID
    ) -> tuple[ConversationRecord, str]:
        """The conversation and its other participant, if ``user_id`` takes part in it.

        For a group, the other participant is "" and membership is read from the database
        (members change; the cached record is a snapshot): ``NOT_FOUND`` for non-members.
        """
        conversation = self._conversations.get(conversation_id)
        if conversation is None:
            async with self._connection() as conn:
                conversation = await store.get_conversation(conn, conversation_id)
            if conversation is None:
                raise NotFound("no such conversation")
            self._remember(conversation)
        if conversation.kind == "group":
            await self.groups.require_member(user_id, conversation_id)
            return conversation, ""
        if user_id not in conversation.participant_ids:
            raise Forbidden("you are not a participant of this conversation")
        low, high = conversation.participant_ids
        return conversation, high if user_id == low else low

    def _remember(self, conversation: ConversationRecord) -> None:
        self._conversations[conversation.id] = conversation
        if len(self._conversations) > CONVERSATION_CACHE_SIZE:
            self._conversations.popitem(last=False)

    async def list_conversations(
        self, user_id: str, *, page_size: int, page_token: str
    ) -> Page[store.ConversationSummary]:
        limit = _page_size(page_size)
        cursor = _Cursor(self._cursor_key, kind="conversations", scope=user_id)
        before = cursor.decode(page_token)

        async def read(conn: AsyncConnection) -> list[store.ConversationSummary]:
            rows = await store.list_conversations(
                conn, user_id=user_id, limit=limit + 1, before=before
            )
            return await self._fill_summaries(conn, rows)

        rows = await self._read("conversations", read)
        return cursor.page(rows, limit, lambda s: (s.activity_at, s.conversation.id))

    # --- messages ------------------------------------------------------------------------------

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
            conversation, other = await self._conversation_for(user_id, conversation_id)
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
                message, stored = await self._commit_with_attachments(new, attachment_ids)
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
        data = message_json(message)
        await self._deliver_logged(
            [
                Logged(
                    user, position, position, "newMessage", self._with_token(data, user, position)
                )
                for user, position in message.positions
            ],
            skip_sid=origin_sid,
            committed_at=committed_at if stored else None,
        )
        return message

    async def _commit_with_attachments(
        self, new: NewMessage, attachment_ids: Sequence[uuid.UUID]
    ) -> tuple[MessageRecord, bool]:
        """A message naming uploads, in a transaction of its own (not the group commit: its
        rows must roll back with the message when an upload is refused).

        The store is asked about the objects before the transaction opens, so no participant's
        log lock waits on it; the attach itself re-checks each row inside the transaction.
        """
        attachments = self._require_attachments()
        repeat = False
        async with self._connection() as conn:
            if new.client_message_id is not None:
                repeat = await store_attachments.message_exists(
                    conn, author_id=new.author_id, client_message_id=new.client_message_id
                )
            uploads = None
            if not repeat:
                uploads = await attachments.check_for_send(
                    conn,
                    owner_id=new.author_id,
                    conversation_id=new.conversation_id,
                    ids=attachment_ids,
                )
        async with self._transaction() as conn:
            [(message, stored)] = await store.insert_messages(conn, [new])
            if stored:
                if uploads is None:  # the original vanished since: cannot happen (tombstones)
                    raise Unavailable("the message changed while it was sent; try again")
                await attachments.attach(
                    conn,
                    message_id=message.id,
                    owner_id=new.author_id,
                    conversation_id=new.conversation_id,
                    ids=attachment_ids,
                )
        if stored and uploads is not None:
            return replace(message, attachments=await attachments.views(uploads)), True
        async with self._connection() as conn:
            [message] = await attachments.fill(conn, [message])
        return message, False

    def _require_attachments(self) -> Attachments:
        if self._attachments is None:
            raise ValidationFailed("attachments are turned off on this server")
        return self._attachments

    async def create_upload(
        self,
        user_id: str,
        *,
        conversation_id: uuid.UUID,
        file_name: str,
        content_type: str,
        size_bytes: int,
    ) -> NewUpload:
        """An upload slot for a participant: a row, and a presigned PUT of the object store."""
        attachments = self._require_attachments()
        await self._conversation_for(user_id, conversation_id)
        async with self._transaction() as conn:
            return await attachments.create_upload(
                conn,
                owner_id=user_id,
                conversation_id=conversation_id,
                file_name=file_name,
                content_type=content_type,
                size_bytes=size_bytes,
            )

    async def erase_attachments(
        self, conn: AsyncConnection, message_ids: Sequence[uuid.UUID]
    ) -> list[uuid.UUID]:
        """For deleting messages: call inside the deleting transaction, then ``purge_attachments``
        with what it returns after the commit (see ``Attachments.erase_for_messages``)."""
        if self._attachments is None:
            return []
        return await self._attachments.erase_for_messages(conn, message_ids)

    async def purge_attachments(self, erased: Sequence[uuid.UUID]) -> None:
        """Delete erased attachments' objects now; on failure the sweeper does it later."""
        if self._attachments is None or not erased:
            return
        try:
            await self._attachments.purge(erased)
        except Exception:
            log.warning("purging deleted attachments failed; the sweeper will", exc_info=True)

    async def fill(
        self, conn: AsyncConnection, messages: list[MessageRecord]
    ) -> list[MessageRecord]:
        """What a message shows beyond its row, in the order given: its reactions, and its
        attachments with download URLs signed for this read (``Attachments.fill``)."""
        if not messages:
            return messages
        messages = await change_store.with_reactions(conn, messages)
        if self._attachments is None:
            return messages
        return await self._attachments.fill(conn, messages)

    async def _fill_summaries(
        self, conn: AsyncConnection, rows: list[store.ConversationSummary]
    ) -> list[store.ConversationSummary]:
        last = [s.last_message for s in rows if s.last_message is not None]
        filled = {m.id: m for m in await self.fill(conn, last)}
        return [
            replace(s, last_message=filled[s.last_message.id]) if s.last_message else s
            for s in rows
        ]

    async def mark_delivered(
        self, user_id: str, message_ids: Sequence[uuid.UUID], *, origin_sid: str | None = None
    ) -> int:
        wanted = list(dict.fromkeys(message_ids))
        async with self._transaction() as conn:
            visible = await store.visible_messages(conn, user_id=user_id, message_ids=wanted)
            found = {m.id for m in visible}
            missing = [str(i) for i in wanted if i not in found]
            if missing:
                raise NotFound("some messages do not exist or are not yours", details=missing)
            own = [str(m.id) for m in visible if m.author_id == user_id]
            if own:
                raise Forbidden("only a recipient can mark a message delivered", details=own)
            at = datetime.now(UTC)
            groups = await self._groups_among(conn, {m.conversation_id for m in visible})
            in_groups = [m for m in visible if m.conversation_id in groups]
            direct = [i for i in wanted if i not in {m.id for m in in_groups}]
            changes: list[store.Change] = []
            if direct:
                changes = await store.advance_status(
                    conn, status="delivered", message_ids=direct, not_author=user_id, at=at
                )
            if in_groups:
                changes += await receipts.mark_delivered(
                    conn, user_id=user_id, messages=in_groups, at=at
                )
        return await self._announce_status(changes, origin_sid)

    async def _groups_among(
        self, conn: AsyncConnection, conversation_ids: set[uuid.UUID]
    ) -> set[uuid.UUID]:
        """Which of these conversations are groups (a conversation's kind never changes)."""
        for conversation_id in conversation_ids - self._conversations.keys():
            conversation = await store.get_conversation(conn, conversation_id)
            if conversation is not None:
                self._remember(conversation)
        return {
            c
            for c in conversation_ids
            if (known := self._conversations.get(c)) is not None and known.kind == "group"
        }

    async def mark_read(
        self,
        user_id: str,
        *,
        conversation_id: uuid.UUID,
        up_to_message_id: uuid.UUID,
        origin_sid: str | None = None,
    ) -> int:
        conversation, _ = await self._conversation_for(user_id, conversation_id)
        async with self._transaction() as conn:
            target = await store.get_message(conn, up_to_message_id)
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
                changes = await store.advance_status(
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

    async def _announce_status(
        self, changes: Sequence[store.Change], origin_sid: str | None
    ) -> int:
        """Tell every participant's devices which messages moved; returns how many moved.

        Authors learn their messages were delivered or read, the marker's other devices what it
        marked; each event covers one conversation's run of the recipient's log.
        """
        await self._deliver_logged(self._status_events(changes), skip_sid=origin_sid)
        return len({c.message_id for c in changes})

    def _status_events(self, changes: Sequence[store.Change]) -> list[Logged]:
        """One messageStatus per run of a user's log entries with the same conversation, status
        and marker (a run is contiguous: see ``store.append_changes``)."""
        events: list[Logged] = []
        run: list[store.Change] = []

        def flush() -> None:
            if not run:
                return
            head, tail = run[0], run[-1]
            data = {
                "conversationId": str(head.conversation_id),
                "messageIds": [str(c.message_id) for c in run],
                "status": head.kind,
                "userId": head.actor_id,
                "at": iso(head.changed_at),
            }
            events.append(
                Logged(
                    head.user_id,
                    head.position,
                    tail.position,
                    "messageStatus",
                    self._with_token(data, head.user_id, tail.position),
                )
            )
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

    def _with_token(self, data: dict[str, Any], user_id: str, position: int) -> dict[str, Any]:
        token = encode_sync_token(self._cursor_key, user_id=user_id, position=position)
        return {**data, "syncToken": token}

    # --- the change log, for delivery's healing -----------------------------------------------

    async def log_heads(self, user_ids: Sequence[str]) -> dict[str, int]:
        async with self._connection() as conn:
            return await store.log_heads(conn, user_ids)

    async def log_events(self, user_id: str, after: int) -> list[Logged]:
        """The events a device of ``user_id`` missed after ``after``, as they were sent live
        (a message with its current state; status runs as one messageStatus each)."""
        async with self._connection() as conn:
            rows = await store.changes_after(
                conn, user_id=user_id, after_pos=after, limit=HEAL_PAGE
            )
            filled = await self.fill(conn, [m for _, m in rows])
        events: list[Logged] = []
        statuses: list[store.Change] = []
        for (change, _), message in zip(rows, filled, strict=True):
            if change.kind in ("delivered", "read"):
                statuses.append(change)
                continue
            events.extend(self._status_events(statuses))
            statuses = []
            event, data = _change_event(change, message)
            data = self._with_token(data, user_id, change.position)
            events.append(Logged(user_id, change.position, change.position, event, data))
        events.extend(self._status_events(statuses))
        return events

    async def typing(
        self,
        user_id: str,
        *,
        conversation_id: uuid.UUID,
        is_typing: bool,
        origin_sid: str | None = None,
    ) -> None:
        conversation, other = await self._conversation_for(user_id, conversation_id)
        users = [other, user_id]
        if conversation.kind == "group":
            users = await self.groups.member_ids(conversation_id)
        # Between a blocked pair typing goes nowhere, either way (the ack is the same: nothing
        # is told).
        hidden = await self._blocks.either_blocks(user_id, [u for u in users if u != user_id])
        await self._deliver(
            [u for u in users if u not in hidden],
            "typing",
            {"conversationId": str(conversation_id), "userId": user_id, "isTyping": is_typing},
            skip_sid=origin_sid,
        )

    async def presence(self, user_id: str, user_ids: Sequence[str]) -> dict[str, PresenceInfo]:
        """Presence of the users the caller shares a conversation with; others are left out, and
        so are users the caller blocks or is blocked by (as if unknown)."""
        async with self._connection() as conn:
            shared = await store.users_sharing_a_conversation(
                conn, user_id=user_id, candidates=user_ids
            )
        if shared:
            shared -= await self._blocks.either_blocks(user_id, shared)
        return await self._presence.lookup(u for u in user_ids if u in shared)

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
        async with self._connection() as conn:
            if since is not None:
                position = decode_sync_token(self._cursor_key, since, user_id=user_id)
                rows = await store.changed_since(
                    conn, user_id=user_id, after_pos=position, limit=limit + 1
                )
                head = 0
            else:
                position = 0
                if after is not None:
                    found = await store.created_position(conn, user_id=user_id, message_id=after)
                    if found is None:
                        raise NotFound("`after` is not a message of yours")
                    position = found
                rows, head = await store.created_after(
                    conn, user_id=user_id, after_pos=position, limit=limit + 1
                )
            page, has_more = rows[:limit], len(rows) > limit
            shown = await self.fill(conn, [m for m, _ in page])
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
    ) -> Page[MessageRecord]:
        """A page of a conversation's messages, newest first."""
        limit = _page_size(page_size)
        conversation, _ = await self._conversation_for(user_id, conversation_id)
        joined_at = None
        if conversation.kind == "group":  # a member sees messages from the moment it joined
            joined_at = (await self.groups.require_member(user_id, conversation_id)).joined_at
        cursor = _Cursor(self._cursor_key, kind="history", scope=str(conversation_id))
        before = cursor.decode(page_token)

        async def read(conn: AsyncConnection) -> list[MessageRecord]:
            rows = await store.history_page(
                conn,
                conversation_id=conversation_id,
                limit=limit + 1,
                before=before,
                not_before=joined_at,
            )
            return await self.fill(conn, rows)

        rows = await self._read("history", read)
        return cursor.page(rows, limit, lambda m: (m.created_at, m.id))

    async def _deliver(
        self,
        users: list[str],
        event: str,
        data: dict[str, Any],
        *,
        skip_sid: str | None,
        committed_at: float | None = None,
    ) -> None:
        try:
            await self._delivery.to_users(
                users, event, data, skip_sid=skip_sid, committed_at=committed_at
            )
        except Exception:
            # The client's request succeeded; recipients will catch up with syncMessages.
            log.exception("delivery failed", extra={"event": event})

    async def _deliver_logged(
        self,
        events: Sequence[Logged],
        *,
        skip_sid: str | None,
        committed_at: float | None = None,
    ) -> None:
        try:
            await self._delivery.logged(events, skip_sid=skip_sid, committed_at=committed_at)
        except Exception:
            # The request succeeded; devices heal from the change log.
            log.exception("delivery failed", extra={"event": events[0].event if events else ""})

    # --- for the feature modules built on these rules (message_changes.py) --------------------

    def logged(
        self, changes: Sequence[store.Change], event: str, data: dict[str, Any]
    ) -> list[Logged]:
        """One ``event`` per log entry just written, each with its user's ``syncToken``."""
        return [
            Logged(
                c.user_id,
                c.position,
                c.position,
                event,
                self._with_token(data, c.user_id, c.position),
            )
            for c in changes
        ]

    async def deliver_logged(self, events: Sequence[Logged], *, skip_sid: str | None) -> None:
        """Fan logged events out like every other change (a failure never fails the request)."""
        await self._deliver_logged(events, skip_sid=skip_sid)

    async def ping_database(self) -> None:
        async with self._connection() as conn:
            await store.ping(conn)
        self.database_ok = True


@dataclass(frozen=True, slots=True)
class _Cursor:
    """Page tokens for one paged list (a conversation's history, a user's conversations)."""

    key: bytes
    kind: str
    scope: str

    def decode(self, token: str) -> tuple[datetime, uuid.UUID] | None:
        if not token:
            return None
        return decode_page_token(self.key, token, kind=self.kind, scope=self.scope)

    def page(
        self, rows: list[T], limit: int, position: Callable[[T], tuple[datetime, uuid.UUID]]
    ) -> Page[T]:
        """``rows`` were fetched with ``limit + 1``: one more means another page follows."""
        items, token = rows[:limit], ""
        if len(rows) > limit:
            at, row_id = position(items[-1])
            token = encode_page_token(
                self.key, kind=self.kind, scope=self.scope, at=at, row_id=row_id
            )
        return Page(items, token)


def _change_event(change: store.Change, message: MessageRecord) -> tuple[str, dict[str, Any]]:
    """The live event a log entry was delivered as (a message in its current state)."""
    if change.kind == "edited":
        return "messageUpdated", message_json(message)
    if change.kind == "deleted" and message.deleted_at is not None:
        return "messageDeleted", deleted_event_json(message)
    if change.kind in ("reacted", "unreacted") and change.emoji is not None:
        data = reaction_event_json(
            message,
            user_id=change.actor_id or "",
            emoji=change.emoji,
            active=change.kind == "reacted",
        )
        return "messageReaction", data
    return "newMessage", message_json(message)


def _page_size(requested: int) -> int:
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    if not 1 <= requested <= MAX_PAGE_SIZE:
        raise ValidationFailed(f"page_size must be between 1 and {MAX_PAGE_SIZE}")
    return requested


@contextmanager
def _database_errors() -> Iterator[None]:
    """Turn the database being unreachable, overloaded or restarting into ``UNAVAILABLE``."""
    try:
        yield
    except (OperationalError, DBAPIError, OSError, TimeoutError, PoolTimeout) as exc:
        if isinstance(exc, DBAPIError) and not is_unavailability(exc):
            raise
        log.warning("database unavailable", extra={"error": describe_error(exc)})
        raise Unavailable("the database is unavailable; try again") from exc


# SQLSTATE classes and codes that mean "not now" rather than "never": connection exceptions,
# insufficient resources (too many connections), operator intervention (admin shutdown, crash
# shutdown, cannot connect now, statement cancelled), and a transaction that lost a race
# (serialization failure, deadlock, lock not available) which a retry resolves.
_RETRYABLE_CLASSES = ("08", "53", "57")
_RETRYABLE_STATES = ("40001", "40P01", "55P03")


def is_unavailability(exc: DBAPIError) -> bool:
    """Whether a database error says the database is away or busy (retryable), not a bug."""
    if exc.connection_invalidated or isinstance(exc, (OperationalError, InterfaceError)):
        return True
    orig = exc.orig
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if isinstance(state, str) and (state[:2] in _RETRYABLE_CLASSES or state in _RETRYABLE_STATES):
        return True
    cause = getattr(orig, "__cause__", None)
    return isinstance(orig, (OSError, TimeoutError)) or isinstance(cause, (OSError, TimeoutError))
