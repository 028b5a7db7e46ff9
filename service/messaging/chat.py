"""The rules, as the transports see them: one object per feature, built by ``app.py``.

Transports parse and authenticate; everything a client may or may not do is decided by the feature
modules gathered here (``conversations.py``, ``messages.py``, ``attachments.py``, ``groups.py``,
``receipts.py``, ``blocking.py``), each over its own SQL in ``storage/`` (``store.py`` holds what
they share), in the transactions of ``transactions.Database``. ``Chat`` adds no rules of its own:
it is what the app factory hands Socket.IO and gRPC, so they name one collaborator, not eight.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from messaging.attachments import AttachmentRules
from messaging.blocking import Blocks
from messaging.conversations import Conversations
from messaging.groups import Groups
from messaging.messages import Messages
from messaging.outbox import Outbox
from messaging.receipts import Receipts
from messaging.transactions import Database
from messaging.views import MessageViews


@dataclass(frozen=True, slots=True)
class Chat:
    database: Database
    conversations: Conversations
    messages: Messages
    attachments: AttachmentRules
    views: MessageViews
    groups: Groups
    receipts: Receipts
    blocks: Blocks
    # Where features record their webhook events (``record`` inside their transaction).
    outbox: Outbox

    @property
    def engine(self) -> AsyncEngine:
        return self.database.engine

    async def wait_idle(self) -> None:
        """Until no request is in flight and the group committer has nothing pending."""
        await self.database.wait_idle()
        await self.messages.wait_idle()
