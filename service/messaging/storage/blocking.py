"""The SQL of blocking (``messaging.blocking`` decides what a block means).

Plain functions over an open connection; the caller owns the transaction. A row of ``blocks``
means "blocker blocks blocked"; the question the rules ask is always about one user and a set of
others, both ways, which is one query over the primary key and the reverse index.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from messaging.tables import blocks


def _insert(conn: AsyncConnection, table: Any) -> Any:
    """An INSERT with ``on_conflict_do_nothing`` for whichever backend this connection uses."""
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(table)


async def relations(
    conn: AsyncConnection, *, user_id: str, others: Iterable[str]
) -> set[tuple[str, str]]:
    """Every (blocker, blocked) row between ``user_id`` and any of ``others``, either way.

    One query: this is what a group's creator or adder is checked with against every new member
    (``blocking.Blocks.either_blocks``), and what a cache miss of a pair reads.
    """
    wanted = sorted(set(others) - {user_id})
    if not wanted:
        return set()
    rows = await conn.execute(
        select(blocks.c.blocker_id, blocks.c.blocked_id).where(
            or_(
                and_(blocks.c.blocker_id == user_id, blocks.c.blocked_id.in_(wanted)),
                and_(blocks.c.blocked_id == user_id, blocks.c.blocker_id.in_(wanted)),
            )
        )
    )
    return {(row.blocker_id, row.blocked_id) for row in rows}


async def lock_blocker(conn: AsyncConnection, blocker_id: str) -> None:
    """Serialize one user's block changes until commit, so the cap holds under concurrency.

    PostgreSQL: a transaction-scoped advisory lock on the user (other users never wait). SQLite
    has one writer at a time already.
    """
    if conn.dialect.name == "postgresql":
        await conn.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
            {"key": f"blocks:{blocker_id}"},
        )


async def is_blocking(conn: AsyncConnection, *, blocker_id: str, blocked_id: str) -> bool:
    row = (
        await conn.execute(
            select(blocks.c.blocker_id).where(
                blocks.c.blocker_id == blocker_id, blocks.c.blocked_id == blocked_id
            )
        )
    ).first()
    return row is not None


async def count_blocked(conn: AsyncConnection, blocker_id: str) -> int:
    return int(
        (
            await conn.execute(
                select(func.count()).select_from(blocks).where(blocks.c.blocker_id == blocker_id)
            )
        ).scalar_one()
    )


async def add_block(
    conn: AsyncConnection, *, blocker_id: str, blocked_id: str, at: datetime
) -> bool:
    """Record the block; False when it was already there (blocking is idempotent)."""
    inserted = await conn.execute(
        _insert(conn, blocks)
        .values(blocker_id=blocker_id, blocked_id=blocked_id, created_at=at)
        .on_conflict_do_nothing(index_elements=[blocks.c.blocker_id, blocks.c.blocked_id])
        .returning(blocks.c.blocker_id)
    )
    return inserted.first() is not None


async def remove_block(conn: AsyncConnection, *, blocker_id: str, blocked_id: str) -> bool:
    """Lift the block; False when there was none."""
    removed = await conn.execute(
        delete(blocks)
        .where(blocks.c.blocker_id == blocker_id, blocks.c.blocked_id == blocked_id)
        .returning(blocks.c.blocker_id)
    )
    return removed.first() is not None


async def blocked_by(conn: AsyncConnection, blocker_id: str) -> list[str]:
    """The users ``blocker_id`` blocks, most recently blocked first."""
    rows = await conn.execute(
        select(blocks.c.blocked_id)
        .where(blocks.c.blocker_id == blocker_id)
        .order_by(blocks.c.created_at.desc(), blocks.c.blocked_id)
    )
    return [row.blocked_id for row in rows]
