"""What a message shows beyond its row: its reactions, and its attachments with download URLs.

Every read that shows messages to a client (history, sync, the conversation list's last messages,
an edit's answer, the healing of a device) fills them here, right before they are shown: the URLs
are signed for this read and expire.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection

from messaging.attachments import Attachments
from messaging.records import MessageRecord
from messaging.storage import message_changes as change_store


class MessageViews:
    """Fills messages in for reading (attachments None: attachments are off)."""

    def __init__(self, *, attachments: Attachments | None) -> None:
        self._attachments = attachments

    async def fill(
        self, conn: AsyncConnection, messages: list[MessageRecord], *, reactions: bool = True
    ) -> list[MessageRecord]:
        """What a message shows beyond its row, in the order given: its reactions (unless the
        read brought them, as a history page does), and its attachments with download URLs
        signed for this read (``Attachments.fill``)."""
        if not messages:
            return messages
        if reactions:
            messages = await change_store.with_reactions(conn, messages)
        if self._attachments is None:
            return messages
        return await self._attachments.fill(conn, messages)
