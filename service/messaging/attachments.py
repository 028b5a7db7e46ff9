"""Attachments: the rules of uploads and of the files messages carry.

Bytes never pass through the service. ``createUpload`` records an upload and hands out a presigned
``PUT`` of the object store (``objectstore.py``); a ``sendMessage`` naming uploads commits only
if each is the sender's, for that conversation, not yet attached, and its object is in the store
with the declared size (asked of the store just before the commit). Each read of a message (live,
history, sync, gRPC) gets download URLs signed for that read: ``Attachments.fill`` is the one
place that happens, and both payload shapes render what it filled in.

Cleanup runs in every replica (``run_sweeper``) and is safe to run twice at once: objects are
deleted before their rows, deleting an object twice is harmless, and a row is deleted only while
it is still unattached (or doomed). An upload is refused for sending a margin before the sweeper
may take it, so a send never races the sweep of its own upload.

Two objects: ``Attachments`` holds the object store and the per-row rules (built only when
attachments are on); ``AttachmentRules`` is the feature as the transports and the message rules
see it, on or off: ``createUpload`` for a participant, a message's commit with its uploads, and
the erasing of a deleted message's files.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from messaging.errors import Unavailable, ValidationFailed
from messaging.objectstore import (
    ObjectStore,
    ObjectStoreUnavailable,
    SignedRequest,
    object_key,
)
from messaging.records import AttachmentView, MessageRecord, NewMessage
from messaging.settings import Settings
from messaging.storage import attachments as sql
from messaging.storage import messages as message_sql
from messaging.transactions import Database

log = logging.getLogger(__name__)

MAX_PER_MESSAGE = 10
MAX_FILE_NAME_CHARS = 255
SWEEP_BATCH = 200
# An upload this close to its TTL can no longer be attached: the sweeper may be deleting it
# (a quarter of the TTL when that is shorter, so a short TTL still leaves time to send).
SEND_MARGIN = timedelta(minutes=10)

Connection = Callable[[], AbstractAsyncContextManager[AsyncConnection]]
# Refuses (NOT_FOUND, FORBIDDEN) a user who does not take part in a conversation
# (``Conversations.conversation_for``; passed in, as the conversation rules sit above these).
ParticipantCheck = Callable[[str, uuid.UUID], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class Limits:
    max_bytes: int
    content_types: tuple[str, ...]  # "type/subtype" or "type/*", lower case
    upload_url_seconds: int
    download_url_seconds: int
    unattached_ttl: timedelta
    sweep_seconds: float


@dataclass(frozen=True, slots=True)
class NewUpload:
    attachment_id: uuid.UUID
    request: SignedRequest


def _bare(content_type: str) -> str:
    """The type without parameters (``; charset=utf-8``), lower case."""
    return content_type.split(";", 1)[0].strip().lower()


def content_type_allowed(content_type: str, allowed: Sequence[str]) -> bool:
    """Whether ``content_type`` (parameters ignored) is allowed."""
    bare = _bare(content_type)
    family, sep, sub = bare.partition("/")
    if not sep or not family or not sub:
        return False
    return bare in allowed or f"{family}/*" in allowed


def check_upload(limits: Limits, *, content_type: str, size_bytes: int) -> None:
    """The configured limits of an upload (pure): size and content type."""
    if size_bytes > limits.max_bytes:
        raise ValidationFailed(
            f"the file is larger than the limit of {limits.max_bytes} bytes",
            details={"field": "sizeBytes", "maxBytes": limits.max_bytes},
        )
    if not content_type_allowed(content_type, limits.content_types):
        raise ValidationFailed(
            "this content type is not allowed",
            details={"field": "contentType", "allowed": list(limits.content_types)},
        )


class Attachments:
    """Uploads and attached files over one object store; built once in ``app.build_service``."""

    def __init__(
        self, *, store: ObjectStore, limits: Limits, connection: Connection | None = None
    ) -> None:
        self.store = store
        self.limits = limits
        # For the sweeper and the purge after a deletion (the request paths pass theirs).
        self._connection = connection

    # --- createUpload ----------------------------------------------------------------------

    async def create_upload(
        self,
        conn: AsyncConnection,
        *,
        owner_id: str,
        conversation_id: uuid.UUID,
        file_name: str,
        content_type: str,
        size_bytes: int,
    ) -> NewUpload:
        """Record an upload (the caller checked the owner takes part) and presign its PUT."""
        check_upload(self.limits, content_type=content_type, size_bytes=size_bytes)
        attachment_id = uuid.uuid4()
        key = object_key(conversation_id, attachment_id)
        content_type = content_type.strip().lower()
        await sql.insert_upload(
            conn,
            sql.Upload(
                id=attachment_id,
                conversation_id=conversation_id,
                owner_id=owner_id,
                file_name=file_name,
                content_type=content_type,
                size_bytes=size_bytes,
                object_key=key,
                created_at=datetime.now(UTC),
                message_id=None,
                doomed_at=None,
            ),
        )
        request = await self.store.presign_upload(
            key,
            content_type=content_type,
            size_bytes=size_bytes,
            expires_in=self.limits.upload_url_seconds,
        )
        return NewUpload(attachment_id, request)

    # --- sendMessage -----------------------------------------------------------------------

    def _attachable_after(self) -> datetime:
        margin = min(SEND_MARGIN, self.limits.unattached_ttl / 4)
        return datetime.now(UTC) - self.limits.unattached_ttl + margin

    async def check_for_send(
        self,
        conn: AsyncConnection,
        *,
        owner_id: str,
        conversation_id: uuid.UUID,
        ids: Sequence[uuid.UUID],
    ) -> list[sql.Upload]:
        """The uploads, if every one may be attached to a new message; else VALIDATION_FAILED.

        Each must be an upload of ``owner_id`` for this conversation, unattached, not about to be
        swept, and its object must be in the store with the declared size. The details name
        each refused id and why, so a client can tell which file to upload again.
        """
        if len(set(ids)) != len(ids):
            raise ValidationFailed("an attachment may be named once per message")
        found = await sql.uploads_by_id(conn, ids)
        problems: dict[str, str] = {}
        after = self._attachable_after()
        for upload_id in ids:
            upload = found.get(upload_id)
            if upload is None or upload.owner_id != owner_id or upload.doomed_at is not None:
                # Someone else's upload is reported like a missing one: ids are not a probe.
                problems[str(upload_id)] = "no such upload of yours"
            elif upload.conversation_id != conversation_id:
                problems[str(upload_id)] = "the upload is for another conversation"
            elif upload.message_id is not None:
                problems[str(upload_id)] = "the upload is already attached to a message"
            elif upload.created_at <= after:
                problems[str(upload_id)] = "the upload has expired; upload the file again"
        if not problems:
            uploads = [found[i] for i in ids]
            stored = await asyncio.gather(*(self.store.stat(u.object_key) for u in uploads))
            for upload, obj in zip(uploads, stored, strict=True):
                if obj is None:
                    problems[str(upload.id)] = "the file has not been uploaded"
                elif obj.size != upload.size_bytes:
                    problems[str(upload.id)] = (
                        f"the uploaded file has {obj.size} bytes, "
                        f"not the declared {upload.size_bytes}"
                    )
                elif obj.content_type is not None and (
                    _bare(obj.content_type) != _bare(upload.content_type)
                ):
                    problems[str(upload.id)] = (
                        f"the file was uploaded as {_bare(obj.content_type)}, "
                        f"not the declared {upload.content_type}"
                    )
        if problems:
            raise ValidationFailed("some attachments cannot be sent", details=problems)
        return [found[i] for i in ids]

    async def attach(
        self,
        conn: AsyncConnection,
        *,
        message_id: uuid.UUID,
        owner_id: str,
        conversation_id: uuid.UUID,
        ids: Sequence[uuid.UUID],
    ) -> None:
        """Attach checked uploads inside the message's transaction (rolled back if one raced)."""
        attached = await sql.attach(
            conn,
            message_id=message_id,
            owner_id=owner_id,
            conversation_id=conversation_id,
            ids=ids,
            created_after=self._attachable_after(),
        )
        if attached != len(ids):
            raise ValidationFailed("an attachment was attached to another message meanwhile")

    # --- reads -----------------------------------------------------------------------------

    async def views(self, uploads: Sequence[sql.Upload]) -> tuple[AttachmentView, ...]:
        """Download URLs signed now, for this read."""
        signed = await asyncio.gather(
            *(
                self.store.presign_download(
                    u.object_key,
                    content_type=u.content_type,
                    file_name=u.file_name,
                    expires_in=self.limits.download_url_seconds,
                )
                for u in uploads
            )
        )
        return tuple(
            AttachmentView(
                id=u.id,
                file_name=u.file_name,
                content_type=u.content_type,
                size_bytes=u.size_bytes,
                url=s.url,
                url_expires_at=s.expires_at,
            )
            for u, s in zip(uploads, signed, strict=True)
        )

    async def fill(
        self, conn: AsyncConnection, messages: Sequence[MessageRecord]
    ) -> list[MessageRecord]:
        """The messages with their attachments and freshly signed download URLs.

        The one place attachments are put on a message for a reader; every read path (live
        delivery, its healing, history, sync, conversation lists, gRPC) calls it, and the two
        wire shapes (``payloads.message_json``, ``grpc_api.message_pb``) render the result.
        Callers have already checked the reader takes part in each message's conversation.
        """
        if not messages:
            return []
        found = await sql.of_messages(conn, [m.id for m in messages])
        if not found:
            return list(messages)
        filled = []
        for message in messages:
            uploads = found.get(message.id)
            filled.append(
                replace(message, attachments=await self.views(uploads)) if uploads else message
            )
        return filled

    # --- deletion and cleanup --------------------------------------------------------------

    async def erase_for_messages(
        self, conn: AsyncConnection, message_ids: Sequence[uuid.UUID]
    ) -> list[uuid.UUID]:
        """Erase deleted messages' attachments, inside the deleting transaction.

        The rows are detached and their names blanked at once (the contract erases, not
        hides); pass the returned ids to ``purge`` after the commit to delete the objects now.
        Should that not happen (a crash, the store away), the sweeper deletes them.
        """
        if not message_ids:
            return []
        return await sql.doom_of_messages(conn, message_ids, at=datetime.now(UTC))

    async def purge(self, ids: Sequence[uuid.UUID]) -> int:
        """Delete the objects of erased attachments, then their rows (after the commit).

        Returns how many were deleted; those the store refused are left to the sweeper."""
        if not ids:
            return 0
        deleted, _ = await self._sweep(ids=ids)
        return deleted

    async def sweep(self, *, now: datetime | None = None) -> int:
        """One pass of cleanup: unattached uploads past the TTL and erased attachments.

        A batch in which the store refused a delete ends the pass: the store is struggling, and
        the refused rows would only come back first in the next batch."""
        cutoff = (now or datetime.now(UTC)) - self.limits.unattached_ttl
        total = 0
        while True:
            deleted, refused = await self._sweep(unattached_before=cutoff)
            total += deleted
            if refused or deleted < SWEEP_BATCH:
                return total

    async def _sweep(
        self, *, ids: Sequence[uuid.UUID] | None = None, unattached_before: datetime | None = None
    ) -> tuple[int, int]:
        """Delete one batch: returns (deleted, refused by the store)."""
        assert self._connection is not None, "Attachments was built without a connection"
        cutoff = unattached_before or datetime.now(UTC) - self.limits.unattached_ttl
        async with self._connection() as conn:
            rows = await sql.sweepable(
                conn, ids=ids, unattached_before=unattached_before, limit=SWEEP_BATCH
            )
        if not rows:
            return 0, 0
        # Objects first: a crash between the two leaves rows whose objects are gone, which the
        # next sweep deletes (deleting a missing object is fine); never an object nobody knows.
        # An object the store refuses keeps its own row for the next sweep, and only its own.
        results = await asyncio.gather(
            *(self.store.delete(r.object_key) for r in rows), return_exceptions=True
        )
        deleted = [r.id for r, result in zip(rows, results, strict=True) if result is None]
        if deleted:
            async with self._connection() as conn:
                await sql.delete_swept(conn, deleted, unattached_before=cutoff)
                await conn.commit()
        errors = [result for result in results if result is not None]
        for error in errors:
            if not isinstance(error, ObjectStoreUnavailable):
                raise error  # a bug, not the store: let it be seen
        if errors:
            log.warning(
                "the object store refused %d of %d deletes; they wait for the next sweep",
                len(errors),
                len(rows),
            )
        return len(deleted), len(errors)

    async def run_sweeper(self) -> None:
        """Sweep every ``sweep_seconds``, in every replica, until cancelled."""
        while True:
            await asyncio.sleep(self.limits.sweep_seconds)
            try:
                swept = await self.sweep()
                if swept:
                    log.info("swept attachments", extra={"count": swept})
            except Exception:
                log.exception("attachment sweep failed; retrying at the next interval")


class AttachmentRules:
    """The attachment feature for the transports and the message rules; ``attachments`` None:
    attachments are off (``MESSAGING_ATTACHMENTS_BACKEND=off``), and every upload is refused."""

    def __init__(
        self,
        *,
        attachments: Attachments | None,
        database: Database,
        participant: ParticipantCheck,
    ) -> None:
        self._attachments = attachments
        self._database = database
        self._participant = participant

    def require(self) -> Attachments:
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
        attachments = self.require()
        await self._participant(user_id, conversation_id)
        async with self._database.transaction() as conn:
            return await attachments.create_upload(
                conn,
                owner_id=user_id,
                conversation_id=conversation_id,
                file_name=file_name,
                content_type=content_type,
                size_bytes=size_bytes,
            )

    async def commit_message(
        self, new: NewMessage, attachment_ids: Sequence[uuid.UUID]
    ) -> tuple[MessageRecord, bool]:
        """A message naming uploads, in a transaction of its own (not the group commit: its
        rows must roll back with the message when an upload is refused); for
        ``Messages.send_message``, which has checked the sender may send.

        The store is asked about the objects before the transaction opens, so no participant's
        log lock waits on it; the attach itself re-checks each row inside the transaction.
        """
        attachments = self.require()
        repeat = False
        async with self._database.connection() as conn:
            if new.client_message_id is not None:
                repeat = await sql.message_exists(
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
        async with self._database.transaction() as conn:
            [(message, stored)] = await message_sql.insert_messages(conn, [new])
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
        async with self._database.connection() as conn:
            [message] = await attachments.fill(conn, [message])
        return message, False

    async def erase_for_messages(
        self, conn: AsyncConnection, message_ids: Sequence[uuid.UUID]
    ) -> list[uuid.UUID]:
        """For deleting messages: call inside the deleting transaction, then ``purge`` with what
        it returns after the commit (see ``Attachments.erase_for_messages``)."""
        if self._attachments is None:
            return []
        return await self._attachments.erase_for_messages(conn, message_ids)

    async def purge(self, erased: Sequence[uuid.UUID]) -> None:
        """Delete erased attachments' objects now; on failure the sweeper does it later."""
        if self._attachments is None or not erased:
            return
        try:
            await self._attachments.purge(erased)
        except Exception:
            log.warning("purging deleted attachments failed; the sweeper will", exc_info=True)


def limits_from(settings: Settings) -> Limits:
    return Limits(
        max_bytes=settings.attachments_max_bytes,
        content_types=tuple(settings.attachments_content_types),
        upload_url_seconds=settings.attachments_upload_url_seconds,
        download_url_seconds=settings.attachments_download_url_seconds,
        unattached_ttl=timedelta(seconds=settings.attachments_unattached_ttl_seconds),
        sweep_seconds=settings.attachments_sweep_seconds,
    )
