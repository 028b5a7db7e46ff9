"""The conversation cache: conversations by id, kept in memory, the oldest forgotten first.

Conversations never change once created (a pair, a creation time), so they are cached. A
group's record is a snapshot: its members change, so every rule about membership reads the
database (``groups.py``); what the cache answers is that a conversation exists, and its kind.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict

from messaging.records import ConversationRecord

CONVERSATION_CACHE_SIZE = 100_000


class ConversationCache:
    """At most ``size`` conversations; one process's, never shared (built in ``app.py``)."""

    def __init__(self, size: int = CONVERSATION_CACHE_SIZE) -> None:
        self._size = size
        self._conversations: OrderedDict[uuid.UUID, ConversationRecord] = OrderedDict()

    def get(self, conversation_id: uuid.UUID) -> ConversationRecord | None:
        return self._conversations.get(conversation_id)

    def remember(self, conversation: ConversationRecord) -> None:
        self._conversations[conversation.id] = conversation
        if len(self._conversations) > self._size:
            self._conversations.popitem(last=False)

    def unknown(self, conversation_ids: set[uuid.UUID]) -> set[uuid.UUID]:
        """Those of ``conversation_ids`` not in the cache."""
        return conversation_ids - self._conversations.keys()
