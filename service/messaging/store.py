"""The SQL the features share: the per-user change logs, and how a message row is read.

Each feature's SQL sits beside its rules in ``storage/<feature>.py`` (``storage/conversations.py``,
``storage/messages.py``, ...); what several of them need is here. As everywhere, the caller owns
the transaction (``async with database.transaction() as conn``), so the rules decide what commits
together. Statements are written with SQLAlchemy Core and run unchanged on PostgreSQL and SQLite.

Change logs: every change to a message (created, a status moved) is appended to the log of each
participant of its conversation (``user_changes``), at the next position of that user's counter
(``user_streams``). The counter row is updated in the same transaction and its row lock is held
until commit, so a user's positions become visible in order: once a reader sees position N of a
user's log, nothing below N can still commit. A sync token is such a position, so a client that
resumes from it never skips a change that committed late. Writers of different users never wait
for each other (no cluster-wide lock or row); writers that touch several users lock their counter
rows in user order, so two of them cannot deadlock.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import ARRAY, ColumnElement, Select, Uuid, any_, bindparam, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.exc import DBAPIError, InterfaceError
from sqlalchemy.ext.asyncio import AsyncConnection

from messaging.records import (
    Change,
    LogEntry,
    MessageRecord,
)
from messaging.tables import (
    messages,
    participants,
    user_changes,
    user_streams,
)

_MESSAGE_COLUMNS = (
    messages.c.id,
    messages.c.conversation_id,
    messages.c.author_id,
    messages.c.content,
    messages.c.status,
    messages.c.created_at,
    messages.c.client_message_id,
    messages.c.edited_at,
    messages.c.deleted_at,
)


def _message(row: Any) -> MessageRecord:
    return MessageRecord(
        id=row.id,
        conversation_id=row.conversation_id,
        author_id=row.author_id,
        content=row.content,
        status=row.status,
        created_at=row.created_at,
        client_message_id=row.client_message_id,
        edited_at=row.edited_at,
        deleted_at=row.deleted_at,
    )


def _insert(conn: AsyncConnection, table: Any) -> Any:
    """An INSERT with ``on_conflict_do_nothing`` for whichever backend this connection uses."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


async def append_changes(conn: AsyncConnection, entries: Sequence[LogEntry]) -> list[Change]:
    """Log ``entries`` for every participant, in the order given; call inside a transaction.

    Each user's share is contiguous and in input order, so one event per user can announce a run
    of changes with the range of positions it covers.
    """
    if not entries:
        return []
    conversation_ids = list({e.conversation_id for e in entries})
    members: dict[uuid.UUID, list[tuple[str, datetime | None]]] = {}
    for row in await conn.execute(
        select(
            participants.c.conversation_id, participants.c.user_id, participants.c.joined_at
        ).where(participants.c.conversation_id.in_(conversation_ids))
    ):
        members.setdefault(row.conversation_id, []).append((row.user_id, row.joined_at))
    # A group member who joined after a message never saw it, so is told nothing of its changes.
    created: dict[uuid.UUID, datetime] = {}
    if any(
        joined is not None for joined_members in members.values() for _, joined in joined_members
    ):
        created = {
            row.id: row.created_at
            for row in await conn.execute(
                select(messages.c.id, messages.c.created_at).where(
                    messages.c.id.in_({e.message_id for e in entries})
                )
            )
        }
    per_user: dict[str, list[LogEntry]] = {}
    for entry in entries:
        for user_id, joined in members.get(entry.conversation_id, ()):
            if joined is not None and created[entry.message_id] < joined:
                continue
            per_user.setdefault(user_id, []).append(entry)
    return await log_for_users(conn, per_user)


async def log_for_users(
    conn: AsyncConnection, per_user: Mapping[str, Sequence[LogEntry]]
) -> list[Change]:
    """Append each user's entries to that user's log, in the order given; inside a transaction.

    The counters move in user order (every writer locks them in that order, so none deadlock),
    and each user's share is contiguous, so one event can announce a run of its positions.
    """
    per_user = {u: list(e) for u, e in per_user.items() if e}
    if not per_user:
        return []
    statement = _insert(conn, user_streams).values(
        [{"user_id": u, "position": len(per_user[u])} for u in sorted(per_user)]
    )
    bumped = await conn.execute(
        statement.on_conflict_do_update(
            index_elements=[user_streams.c.user_id],
            set_={"position": user_streams.c.position + statement.excluded.position},
        ).returning(user_streams.c.user_id, user_streams.c.position)
    )
    changes: list[Change] = []
    for row in bumped:
        mine = per_user[row.user_id]
        start = row.position - len(mine) + 1
        changes.extend(
            Change(
                row.user_id,
                start + i,
                e.message_id,
                e.kind,
                e.actor_id,
                e.changed_at,
                e.conversation_id,
                e.emoji,
            )
            for i, e in enumerate(mine)
        )
    await conn.execute(
        user_changes.insert().values(
            [
                {
                    "user_id": c.user_id,
                    "position": c.position,
                    "message_id": c.message_id,
                    "kind": c.kind,
                    "actor_id": c.actor_id,
                    "changed_at": c.changed_at,
                    "emoji": c.emoji,
                }
                for c in changes
            ]
        )
    )
    return changes


async def ping(conn: AsyncConnection) -> None:
    await conn.execute(text("SELECT 1"))


def one_of_ids(column: Any, name: str, *, postgres: bool) -> ColumnElement[bool]:
    """``column`` is one of the ids bound as ``name`` (a list). On PostgreSQL ``= ANY`` of one
    array: one statement text whatever the number of ids, prepared once, where ``IN`` renders a
    parameter per id at every call (a quarter of a history page's CPU once). SQLite has no
    arrays: an expanding ``IN`` there."""
    if postgres:
        return column == any_(bindparam(name, type_=ARRAY(Uuid())))  # type: ignore[no-any-return]
    return column.in_(bindparam(name, expanding=True))  # type: ignore[no-any-return]


@dataclass(frozen=True)
class DriverStatement:
    """A Core statement compiled once to asyncpg's SQL, its parameters in asyncpg's order."""

    sql: str
    names: tuple[str, ...]

    @classmethod
    def of(cls, statement: Select[Any]) -> DriverStatement:
        compiled = statement.compile(dialect=_ASYNCPG)
        return cls(compiled.string, tuple(compiled.positiontup or ()))

    def args(self, values: Mapping[str, Any]) -> list[Any]:
        return [values[name] for name in self.names]


_ASYNCPG = PGDialect_asyncpg()  # type: ignore[no-untyped-call]

# SQLSTATE classes after which the connection is not trusted again: connection exceptions and
# operator intervention (an administrator's or a crash's shutdown, a cancelled statement).
_CONNECTION_CLASSES = ("08", "57")


async def driver_fetch(conn: AsyncConnection, sql: str, *args: Any) -> list[Any]:
    """The rows of a statement run by asyncpg itself (``asyncpg.Record``, native types), on a
    connection in autocommit (``Database.connection()``: the group committer's, every read's);
    in a transaction, through SQLAlchemy, which begins the transaction on the driver lazily.

    For the two hottest statements only: a new-message batch and a history page. SQLAlchemy's
    cursor adaptation (a greenlet switch per call) and result processing cost more than the
    statement itself there (BENCHMARKS.md, fifth round); asyncpg keeps the statement prepared
    per connection. SQLAlchemy never sees the operation, so it cannot judge whether the
    connection is still usable: every failure but the database refusing the statement (a
    constraint, bad data: it answered, and the connection is clean) drops it from the pool.
    asyncpg's errors come back as SQLAlchemy's, so ``transactions.py``'s policy (which errors
    mean UNAVAILABLE) and ``commits.refused_for_its_data`` apply as to every other statement.
    """
    if not _autocommit(conn):  # the caller's transaction holds it: SQLAlchemy must see it
        return list(await conn.exec_driver_sql(sql, tuple(args)))
    raw = await conn.get_raw_connection()
    try:
        return list(await raw.driver_connection.fetch(sql, *args))  # type: ignore[union-attr]
    except asyncpg.PostgresError as exc:
        state = str(getattr(exc, "sqlstate", "") or "")
        lost = state[:2] in _CONNECTION_CLASSES
        if lost:
            await conn.invalidate(exc)
        raise DBAPIError(sql, None, exc, hide_parameters=True, connection_invalidated=lost) from exc
    except BaseException as exc:  # a cut connection, a cancelled call, a confused protocol
        await conn.invalidate(exc if isinstance(exc, Exception) else None)
        if isinstance(exc, Exception) and not isinstance(exc, (OSError, TimeoutError)):
            raise InterfaceError(
                sql, None, exc, hide_parameters=True, connection_invalidated=True
            ) from exc
        raise


def _autocommit(conn: AsyncConnection) -> bool:
    sync = conn.sync_connection
    return sync is not None and sync.get_execution_options().get("isolation_level") == "AUTOCOMMIT"


# For the feature modules under ``storage/``: the columns a MessageRecord is read from, the row
# mapping, and the backend's INSERT (with its on-conflict clauses).
MESSAGE_COLUMNS = _MESSAGE_COLUMNS
message_from_row = _message
dialect_insert = _insert
