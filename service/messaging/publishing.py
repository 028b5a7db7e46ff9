"""The rules' domain events, sent as Socket.IO events through the delivery fan-out.

The Socket.IO side of every change: ``payloads.socket_event`` names and renders each event (once,
however many users it goes to), and each logged event gets its user's ``syncToken`` (the signed
log position the device can resume from). A failed fan-out never fails the request that caused
it: the change is committed, and devices heal from the change log (``Delivery.run_healer``) or
catch up with ``syncMessages``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from messaging import tracing
from messaging.cursor import encode_sync_token
from messaging.delivery import Delivery, Logged
from messaging.events import Event, LogEvent
from messaging.payloads import socket_event

log = logging.getLogger(__name__)


class Publisher:
    """Encodes domain events for Socket.IO and hands them to the fan-out (built in ``app.py``)."""

    def __init__(self, *, delivery: Delivery, cursor_key: bytes) -> None:
        self._delivery = delivery
        self._cursor_key = cursor_key

    def encode(self, events: Sequence[LogEvent], *, skip_sid: str | None = None) -> list[Logged]:
        """Each event as the fan-out sends it, with its user's ``syncToken``; an event shared by
        several users (a new message) is rendered once, and one that no socket but ``skip_sid``
        would be sent (the author's own copy, when their one socket sent it) not at all."""
        rendered: dict[int, tuple[str, dict[str, Any]]] = {}
        logged: list[Logged] = []
        for item in events:
            if skip_sid is not None and self._delivery.unseen(item.user_id, skip_sid):
                logged.append(Logged(item.user_id, item.first, item.last, "", None))
                continue
            key = id(item.event)
            if key not in rendered:
                rendered[key] = socket_event(item.event)
            name, data = rendered[key]
            logged.append(
                Logged(
                    item.user_id,
                    item.first,
                    item.last,
                    name,
                    self._with_token(data, item.user_id, item.last),
                )
            )
        return logged

    def _with_token(self, data: dict[str, Any], user_id: str, position: int) -> dict[str, Any]:
        token = encode_sync_token(self._cursor_key, user_id=user_id, position=position)
        return {**data, "syncToken": token}

    async def to_users(
        self,
        users: list[str],
        event: Event,
        *,
        skip_sid: str | None,
        committed_at: float | None = None,
    ) -> None:
        name, data = socket_event(event)
        try:
            await self._delivery.to_users(
                users, name, data, skip_sid=skip_sid, committed_at=committed_at
            )
        except Exception:
            # The client's request succeeded; recipients will catch up with syncMessages.
            log.exception("delivery failed", extra={"event": name})

    async def logged(
        self,
        events: Sequence[LogEvent],
        *,
        skip_sid: str | None,
        committed_at: float | None = None,
    ) -> None:
        try:
            with tracing.span("messaging.fanout", attributes={"messaging.events": len(events)}):
                await self._delivery.logged(
                    self.encode(events, skip_sid=skip_sid),
                    skip_sid=skip_sid,
                    committed_at=committed_at,
                )
        except Exception:
            # The request succeeded; devices heal from the change log.
            name = socket_event(events[0].event)[0] if events else ""
            log.exception("delivery failed", extra={"event": name})
