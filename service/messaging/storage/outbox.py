"""The SQL of the webhook outbox (``messaging/outbox.py`` records, ``messaging/webhooks.py``
sends): writing events inside the caller's transaction, claiming due deliveries so no two
replicas send the same attempt at once, settling attempts, and the push-notification checks.

Claims: ``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED)`` moves each claimed row's
``due_at`` to the end of a lease and counts the attempt, in one statement. Concurrent claimers
skip rows another is claiming, and once claimed a row is not due until the lease ends, so a
replica that dies mid-delivery leaves its rows to another replica after the lease. Settling is
fenced by the attempt number: the answer of an attempt whose lease ran out (and was claimed again)
changes nothing. On SQLite (one process) the same statements run without the row locks.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from messaging.storage import conversations as conversation_sql
from messaging.tables import (
    conversations,
    message_deliveries,
    messages,
    participants,
    webhook_endpoints,
    webhook_notifications,
    webhook_outbox,
)


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One event for one endpoint."""

    id: uuid.UUID
    endpoint: str
    event_type: str
    body: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class MessageEvents:
    """What a batch of new messages adds to the outbox, if (and only if) each is stored: a
    repeated clientMessageId stores nothing, so it emits nothing.

    ``rows`` pairs each row with the id of the message that must have been inserted;
    ``notify_after`` (when an endpoint wants ``notification.requested``) schedules a check for
    each recipient of each stored message.
    """

    rows: Sequence[tuple[uuid.UUID, OutboxRow]]
    notify_after: timedelta | None

    @property
    def postgres_ctes(self) -> str:
        if self.notify_after is None:
            return POSTGRES_EVENTS_CTE
        return POSTGRES_EVENTS_CTE + POSTGRES_NOTIFY_CTE

    def postgres_args(self) -> tuple[Any, ...]:
        return postgres_event_args(self)

    async def write(
        self,
        conn: AsyncConnection,
        *,
        inserted: set[uuid.UUID],
        created_at: dict[uuid.UUID, datetime],
        now: datetime,
    ) -> None:
        await insert_message_events(conn, self, inserted=inserted, created_at=created_at, now=now)


@dataclass(frozen=True, slots=True)
class Claimed:
    id: uuid.UUID
    endpoint: str
    event_type: str
    body: str
    created_at: datetime
    attempts: int


def _insert(conn: AsyncConnection, table: Any) -> Any:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


async def insert_rows(conn: AsyncConnection, rows: Sequence[OutboxRow], *, now: datetime) -> None:
    """Write events in the caller's transaction (one multi-row INSERT)."""
    if not rows:
        return
    await conn.execute(
        webhook_outbox.insert().values(
            [
                {
                    "id": r.id,
                    "endpoint": r.endpoint,
                    "event_type": r.event_type,
                    "body": r.body,
                    "created_at": r.created_at,
                    "due_at": now,
                    "attempts": 0,
                }
                for r in rows
            ]
        )
    )


# Added to store's batch insert on PostgreSQL (it names that statement's ``inserted`` and
# ``targets``), so the messages, their change-log entries and their events are one statement: one
# round trip, one implicit transaction. Unreferenced data-modifying CTEs still run, exactly once.
POSTGRES_EVENTS_CTE = """
, outboxed AS (
    INSERT INTO webhook_outbox (id, endpoint, event_type, body, created_at, due_at, attempts)
    SELECT o.id, o.endpoint, o.event_type, o.body, o.created_at, now(), 0
    FROM unnest($7::uuid[], $8::uuid[], $9::varchar[], $10::varchar[], $11::text[],
                $12::timestamptz[]) AS o(id, message_id, endpoint, event_type, body, created_at)
    JOIN inserted i ON i.id = o.message_id
)
"""
POSTGRES_NOTIFY_CTE = """
, notified AS (
    INSERT INTO webhook_notifications (message_id, user_id, due_at)
    SELECT t.id, t.user_id, t.created_at + $13::float8 * interval '1 second'
    FROM targets t WHERE t.user_id <> t.author_id
    ON CONFLICT DO NOTHING
)
"""


def postgres_event_args(events: MessageEvents) -> tuple[Any, ...]:
    """The parameters $7.. of ``POSTGRES_EVENTS_CTE`` (and $13 of the notify CTE)."""
    rows = events.rows
    args: tuple[Any, ...] = (
        [r.id for _, r in rows],
        [m for m, _ in rows],
        [r.endpoint for _, r in rows],
        [r.event_type for _, r in rows],
        [r.body for _, r in rows],
        [r.created_at for _, r in rows],
    )
    if events.notify_after is not None:
        args += (events.notify_after.total_seconds(),)
    return args


async def insert_message_events(
    conn: AsyncConnection,
    events: MessageEvents,
    *,
    inserted: set[uuid.UUID],
    created_at: dict[uuid.UUID, datetime],
    now: datetime,
) -> None:
    """The portable (SQLite) form of the CTEs above, in the caller's transaction."""
    await insert_rows(conn, [r for m, r in events.rows if m in inserted], now=now)
    if events.notify_after is None or not inserted:
        return
    rows = await conn.execute(
        select(messages.c.id, participants.c.user_id)
        .join(participants, participants.c.conversation_id == messages.c.conversation_id)
        .where(messages.c.id.in_(list(inserted)), participants.c.user_id != messages.c.author_id)
    )
    checks = [
        {"message_id": r.id, "user_id": r.user_id, "due_at": created_at[r.id] + events.notify_after}
        for r in rows
    ]
    if checks:
        await conn.execute(
            _insert(conn, webhook_notifications).values(checks).on_conflict_do_nothing()
        )


# --- the dispatcher ---------------------------------------------------------------------------


async def claim_due(
    conn: AsyncConnection,
    *,
    endpoints: Sequence[str],
    now: datetime,
    lease_until: datetime,
    limit: int,
) -> list[Claimed]:
    """Take up to ``limit`` due deliveries to ``endpoints`` for this replica until
    ``lease_until``. Only endpoints this replica knows: during a rollout that adds one, replicas
    still without it leave its deliveries to those that have it."""
    due = (
        select(webhook_outbox.c.id)
        .where(webhook_outbox.c.due_at <= now, webhook_outbox.c.endpoint.in_(list(endpoints)))
        .order_by(webhook_outbox.c.due_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = await conn.execute(
        update(webhook_outbox)
        .where(webhook_outbox.c.id.in_(due.scalar_subquery()))
        .values(due_at=lease_until, attempts=webhook_outbox.c.attempts + 1)
        .returning(
            webhook_outbox.c.id,
            webhook_outbox.c.endpoint,
            webhook_outbox.c.event_type,
            webhook_outbox.c.body,
            webhook_outbox.c.created_at,
            webhook_outbox.c.attempts,
        )
    )
    return [Claimed(r.id, r.endpoint, r.event_type, r.body, r.created_at, r.attempts) for r in rows]


def _fenced(delivery: Claimed) -> Any:
    return and_(webhook_outbox.c.id == delivery.id, webhook_outbox.c.attempts == delivery.attempts)


async def delete_settled(conn: AsyncConnection, deliveries: Sequence[Claimed]) -> None:
    """Prune deliveries that are done (delivered, given up, or for an endpoint gone)."""
    if not deliveries:
        return
    await conn.execute(
        delete(webhook_outbox).where(
            tuple_(webhook_outbox.c.id, webhook_outbox.c.attempts).in_(
                [(d.id, d.attempts) for d in deliveries]
            )
        )
    )


async def retry_later(
    conn: AsyncConnection, delivery: Claimed, *, due_at: datetime, error: str
) -> None:
    await conn.execute(
        update(webhook_outbox)
        .where(_fenced(delivery))
        .values(due_at=due_at, last_error=error[:200])
    )


async def disable_endpoint(conn: AsyncConnection, url: str, *, at: datetime, reason: str) -> None:
    """Record ``url`` as disabled and drop what was waiting for it."""
    await conn.execute(
        _insert(conn, webhook_endpoints)
        .values(url=url, disabled_at=at, reason=reason[:200])
        .on_conflict_do_nothing()
    )
    await conn.execute(delete(webhook_outbox).where(webhook_outbox.c.endpoint == url))


async def prune_unknown(
    conn: AsyncConnection, *, endpoints: Sequence[str], created_before: datetime
) -> int:
    """Delete deliveries to endpoints no longer configured, once past the retry window."""
    result = await conn.execute(
        delete(webhook_outbox).where(
            webhook_outbox.c.created_at < created_before,
            webhook_outbox.c.endpoint.not_in(list(endpoints)),
        )
    )
    return int(result.rowcount or 0)


async def disabled_endpoints(conn: AsyncConnection) -> set[str]:
    return set((await conn.execute(select(webhook_endpoints.c.url))).scalars())


async def backlog(conn: AsyncConnection, *, now: datetime) -> tuple[int, datetime | None]:
    """How many deliveries wait, and since when the oldest due one has been due."""
    row = (
        await conn.execute(
            select(
                func.count(),
                func.min(webhook_outbox.c.due_at).filter(webhook_outbox.c.due_at <= now),
            )
        )
    ).one()
    oldest = row[1]
    if isinstance(oldest, str):  # SQLite's aggregate comes back untyped
        oldest = datetime.fromisoformat(oldest)
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=now.tzinfo)
    return int(row[0]), oldest


# --- push-notification checks -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DueNotification:
    message_id: uuid.UUID
    user_id: str
    conversation_id: uuid.UUID
    author_id: str
    content: str
    delivered: bool
    kind: str = "direct"


async def claim_due_notifications(
    conn: AsyncConnection, *, now: datetime, limit: int
) -> list[DueNotification]:
    """Due checks with their message, locked for this transaction (others skip them).

    ``delivered``: a device of the recipient marked the message delivered or read. In a direct
    conversation the message's status is its one recipient's; in a group, the recipient's own
    delivery row or read position says it (the status is the lowest over the members). A
    recipient who left the group counts as delivered: nothing is asked for them.
    """
    me = participants.alias("me")
    got_it = (
        select(message_deliveries.c.message_id)
        .where(
            message_deliveries.c.message_id == webhook_notifications.c.message_id,
            message_deliveries.c.user_id == webhook_notifications.c.user_id,
        )
        .exists()
    )
    rows = await conn.execute(
        select(
            webhook_notifications.c.message_id,
            webhook_notifications.c.user_id,
            messages.c.conversation_id,
            messages.c.author_id,
            messages.c.content,
            messages.c.status,
            messages.c.created_at,
            conversations.c.kind,
            me.c.user_id.label("member"),
            me.c.read_through_at,
            me.c.read_through_id,
            got_it.label("got_it"),
        )
        .join(messages, messages.c.id == webhook_notifications.c.message_id)
        .join(conversations, conversations.c.id == messages.c.conversation_id)
        .outerjoin(
            me,
            and_(
                me.c.conversation_id == messages.c.conversation_id,
                me.c.user_id == webhook_notifications.c.user_id,
            ),
        )
        .where(webhook_notifications.c.due_at <= now)
        .order_by(webhook_notifications.c.due_at)
        .limit(limit)
        .with_for_update(of=webhook_notifications, skip_locked=True)
    )
    found = []
    for r in rows:
        read_past = r.read_through_at is not None and (r.read_through_at, r.read_through_id) >= (
            r.created_at,
            r.message_id,
        )
        delivered = r.status != "sent" or bool(r.got_it) or r.member is None or read_past
        found.append(
            DueNotification(
                r.message_id,
                r.user_id,
                r.conversation_id,
                r.author_id,
                r.content,
                delivered,
                r.kind,
            )
        )
    return found


async def delete_notifications(conn: AsyncConnection, done: Sequence[DueNotification]) -> None:
    if not done:
        return
    await conn.execute(
        delete(webhook_notifications).where(
            tuple_(webhook_notifications.c.message_id, webhook_notifications.c.user_id).in_(
                [(d.message_id, d.user_id) for d in done]
            )
        )
    )


async def unread_counts(
    conn: AsyncConnection, due: Sequence[DueNotification]
) -> dict[tuple[str, uuid.UUID], int]:
    """The recipient's unread count in the conversation of each check (one query per user)."""
    per_user: dict[str, tuple[set[uuid.UUID], set[uuid.UUID]]] = {}
    for d in due:
        direct, groups = per_user.setdefault(d.user_id, (set(), set()))
        (groups if d.kind == "group" else direct).add(d.conversation_id)
    found: dict[tuple[str, uuid.UUID], int] = {}
    for user_id, (direct, groups) in per_user.items():
        counts = await conversation_sql.unread_counts(
            conn, user_id=user_id, direct=list(direct), groups=list(groups)
        )
        found.update({(user_id, c): n for c, n in counts.items()})
        found.update({(user_id, c): 0 for c in direct | groups if c not in counts})
    return found
