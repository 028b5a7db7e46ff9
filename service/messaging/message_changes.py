"""Edits, deletes and reactions: who may change a message after it was sent, and how.

The same rules serve Socket.IO (``editMessage``, ``deleteMessage``, ``setReaction``) and gRPC
(``EditMessage``, ``DeleteMessage``, ``SetReaction``). Each change is one transaction: the message
row is locked, the rule is checked against the row as it is then, the row changes, and the change
is appended to every participant's change log (``store.append_changes``, the log ``syncMessages
{since}`` and delivery's healing read). Only after the commit is it fanned out, like ``newMessage``,
to every device of every participant but the one that asked (``messageUpdated``,
``messageDeleted``, ``messageReaction``, each with the recipient's ``syncToken``).

- Edit: the author only, not a deleted message, within ``edit_window_seconds`` of its creation.
  The content is replaced in place; no earlier version is kept. Repeating the last edit (same
  content) changes nothing and logs nothing, so a client's retry is not a second edit.
- Delete: the author only. The content becomes "" and the reactions rows are deleted (erased, not
  hidden); the row stays as a tombstone with ``deletedAt``. Deleting again answers the same.
- Reaction: any participant, on a message that is not deleted; idempotent (setting what is already
  so changes nothing and logs nothing); at most ``MAX_EMOJI_PER_MESSAGE`` distinct emoji.

Someone who is not a participant gets ``NOT_FOUND`` for a message that exists, as for one that
does not: they learn nothing about it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from messaging import outbox, store
from messaging.chat import Chat
from messaging.errors import Forbidden, NotFound, ValidationFailed
from messaging.events import MessageDeleted, MessageEdited, ReactionChanged
from messaging.records import Change, LogEntry, MessageRecord
from messaging.storage import message_changes as change_store

MAX_EMOJI_PER_MESSAGE = 20


@dataclass(frozen=True, slots=True)
class ReactionResult:
    message: MessageRecord  # with its reactions after the change
    changed: bool


class MessageChanges:
    """The rules of changing a sent message, over ``Chat``'s transactions and fan-out."""

    def __init__(self, *, chat: Chat, edit_window_seconds: float) -> None:
        self._chat = chat
        self._edit_window = timedelta(seconds=edit_window_seconds)

    async def edit(
        self,
        user_id: str,
        *,
        message_id: uuid.UUID,
        content: str,
        origin_sid: str | None = None,
    ) -> MessageRecord:
        """Replace a message's content; the answer is the message with ``editedAt`` set."""
        at = datetime.now(UTC)
        async with self._chat.database.transaction() as conn:
            message = await self._visible(conn, message_id, user_id)
            if message.author_id != user_id:
                raise Forbidden("only the author can edit a message")
            if message.deleted_at is not None:
                raise Forbidden("a deleted message cannot be edited")
            if at - message.created_at > self._edit_window:
                raise Forbidden(
                    "the edit window of this message has passed",
                    details={"editWindowSeconds": int(self._edit_window.total_seconds())},
                )
            if message.edited_at is not None and message.content == content:
                [same] = await self._chat.views.fill(conn, [message])
                return same  # a retry of the last edit: nothing changes
            edited = await change_store.replace_content(
                conn, message_id=message_id, content=content, at=at
            )
            changes = await store.append_changes(
                conn, [LogEntry(message.conversation_id, message_id, "edited", user_id, at)]
            )
            [edited] = await self._chat.views.fill(conn, [edited])
            # Its webhook event commits with the edit or not at all (docs/webhooks.md).
            await self._chat.outbox.record(
                conn, "message.updated", outbox.message_updated(edited), at=at
            )
        await self._chat.messages.deliver_logged(
            self._chat.messages.logged(changes, MessageEdited(edited)),
            skip_sid=origin_sid,
        )
        return edited

    async def delete(
        self, user_id: str, *, message_id: uuid.UUID, origin_sid: str | None = None
    ) -> MessageRecord:
        """Erase a message's content and reactions, leaving a tombstone; the same answer twice."""
        at = datetime.now(UTC)
        async with self._chat.database.transaction() as conn:
            message = await self._visible(conn, message_id, user_id)
            if message.author_id != user_id:
                raise Forbidden("only the author can delete a message")
            if message.deleted_at is not None:
                return message  # deleted already: the same answer, nothing logged again
            erased = await change_store.erase(conn, message_id=message_id, at=at)
            # Its files go with it: erased in this transaction, their objects deleted after it.
            erased_files = await self._chat.attachments.erase_for_messages(conn, [message_id])
            changes = await store.append_changes(
                conn, [LogEntry(message.conversation_id, message_id, "deleted", user_id, at)]
            )
            await self._chat.outbox.record(
                conn,
                "message.deleted",
                outbox.message_deleted(message, deleted_by=user_id, deleted_at=at),
                at=at,
            )
        await self._chat.attachments.purge(erased_files)
        await self._chat.messages.deliver_logged(
            self._chat.messages.logged(changes, MessageDeleted(erased)),
            skip_sid=origin_sid,
        )
        return erased

    async def set_reaction(
        self,
        user_id: str,
        *,
        message_id: uuid.UUID,
        emoji: str,
        active: bool,
        origin_sid: str | None = None,
    ) -> ReactionResult:
        """Add (``active``) or remove the caller's ``emoji`` on a message; idempotent."""
        at = datetime.now(UTC)
        async with self._chat.database.transaction() as conn:
            message = await self._visible(conn, message_id, user_id)
            if message.deleted_at is not None:
                raise Forbidden("a deleted message cannot be reacted to")
            if active:
                present = await change_store.distinct_emoji(conn, message_id)
                if emoji not in present and len(present) >= MAX_EMOJI_PER_MESSAGE:
                    raise ValidationFailed(
                        f"a message has at most {MAX_EMOJI_PER_MESSAGE} distinct emoji",
                        details={"maxEmoji": MAX_EMOJI_PER_MESSAGE},
                    )
                changed = await change_store.add_reaction(
                    conn, message_id=message_id, emoji=emoji, user_id=user_id, at=at
                )
            else:
                changed = await change_store.remove_reaction(
                    conn, message_id=message_id, emoji=emoji, user_id=user_id
                )
            changes: list[Change] = []
            if changed:
                kind = "reacted" if active else "unreacted"
                changes = await store.append_changes(
                    conn,
                    [LogEntry(message.conversation_id, message_id, kind, user_id, at, emoji)],
                )
            [message] = await self._chat.views.fill(conn, [message])
        if changes:
            event = ReactionChanged(message, user_id=user_id, emoji=emoji, active=active)
            await self._chat.messages.deliver_logged(
                self._chat.messages.logged(changes, event), skip_sid=origin_sid
            )
        return ReactionResult(message, changed)

    async def _visible(
        self, conn: AsyncConnection, message_id: uuid.UUID, user_id: str
    ) -> MessageRecord:
        message = await change_store.lock_visible_message(
            conn, message_id=message_id, user_id=user_id
        )
        if message is None:
            raise NotFound("no such message")
        return message
