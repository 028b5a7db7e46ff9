"""Migration 0003 (edits, deletes, reactions) upgrades a database holding schema 0002's rows in
place: what the previous release wrote reads as before, and can then be edited, reacted to and
deleted, with the change logs continuing where they were."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from sqlalchemy import Uuid, bindparam, text
from sqlalchemy.ext.asyncio import create_async_engine

from messaging import store
from messaging.db import alembic_config
from messaging.records import LogEntry
from messaging.storage import message_changes as change_store
from messaging.storage import messages as message_sql
from messaging.tables import UTCDateTime
from tests.support.servers import PostgresServer

ALICE, BOB = "alice", "bob"

# The rows schema 0002's release writes for a conversation, two messages (one read), and their
# log entries, with the statements it ran (named columns, nothing of 0003).
_WRITTEN_BY_0002 = [
    "INSERT INTO conversations (id, user_low, user_high, created_at)"
    " VALUES (:c, 'alice', 'bob', :t0)",
    "INSERT INTO participants (conversation_id, user_id) VALUES (:c, 'alice'), (:c, 'bob')",
    "INSERT INTO messages (id, conversation_id, author_id, content, status, created_at,"
    " client_message_id) VALUES (:m1, :c, 'alice', 'first', 'read', :t1, 'k1'),"
    " (:m2, :c, 'bob', 'second', 'sent', :t2, NULL)",
    "INSERT INTO user_streams (user_id, position) VALUES ('alice', 3), ('bob', 3)",
    "INSERT INTO user_changes (user_id, position, message_id, kind, actor_id, changed_at) VALUES"
    " ('alice', 1, :m1, 'created', 'alice', :t1), ('bob', 1, :m1, 'created', 'alice', :t1),"
    " ('alice', 2, :m2, 'created', 'bob', :t2), ('bob', 2, :m2, 'created', 'bob', :t2),"
    " ('alice', 3, :m1, 'read', 'bob', :t2), ('bob', 3, :m1, 'read', 'bob', :t2)",
]


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
async def test_upgrading_to_0003_keeps_what_0002_wrote_and_lets_it_be_changed(
    backend: str, request: pytest.FixtureRequest, tmp_path: object
) -> None:
    if backend == "postgres":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        url = server.create_database(f"mig3_{uuid.uuid4().hex[:8]}")
    else:
        url = f"sqlite+aiosqlite:///{tmp_path}/upgrade.db"
    config = alembic_config(url)
    await asyncio.to_thread(command.upgrade, config, "0002")
    c, m1, m2 = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    t0 = datetime.now(UTC) - timedelta(minutes=10)
    values = {"c": c, "m1": m1, "m2": m2, "t0": t0, "t1": t0 + timedelta(minutes=1)}
    values["t2"] = t0 + timedelta(minutes=2)
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            for statement in _WRITTEN_BY_0002:
                # Typed as the schema stores them (SQLite keeps UUIDs as hex, times as text).
                typed = text(statement).bindparams(
                    *(
                        bindparam(k, type_=Uuid() if k in ("c", "m1", "m2") else UTCDateTime())
                        for k in values
                        if f":{k}" in statement
                    )
                )
                await conn.execute(typed, values)
    finally:
        await engine.dispose()

    await asyncio.to_thread(command.upgrade, config, "head")

    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            history = await message_sql.history_page(conn, conversation_id=c, limit=10, before=None)
            history = await change_store.with_reactions(conn, history)
            changed = await message_sql.changed_since(conn, user_id=BOB, after_pos=0, limit=10)
        async with engine.begin() as conn:
            at = datetime.now(UTC)
            await change_store.replace_content(conn, message_id=m1, content="first!", at=at)
            await change_store.add_reaction(conn, message_id=m2, emoji="👍", user_id=ALICE, at=at)
            logged = await store.append_changes(
                conn,
                [
                    LogEntry(c, m1, "edited", ALICE, at),
                    LogEntry(c, m2, "reacted", ALICE, at, "👍"),
                ],
            )
        async with engine.begin() as conn:
            await change_store.erase(conn, message_id=m2, at=at)
        async with engine.connect() as conn:
            after = await message_sql.history_page(conn, conversation_id=c, limit=10, before=None)
            after = await change_store.with_reactions(conn, after)
            healed = await message_sql.changes_after(conn, user_id=BOB, after_pos=3, limit=10)
    finally:
        await engine.dispose()
    assert [(m.id, m.content, m.status) for m in history] == [
        (m2, "second", "sent"),
        (m1, "first", "read"),
    ]
    assert all(m.edited_at is None and m.deleted_at is None and not m.reactions for m in history)
    assert history[1].client_message_id == "k1"
    assert [(m.id, p) for m, p in changed] == [(m2, 2), (m1, 3)]
    # The logs continue after what 0002 wrote.
    assert sorted((ch.user_id, ch.position) for ch in logged) == [
        (ALICE, 4),
        (ALICE, 5),
        (BOB, 4),
        (BOB, 5),
    ]
    assert [(ch.kind, ch.emoji) for ch, _ in healed] == [("edited", None), ("reacted", "👍")]
    erased, edited = after
    assert erased.content == "" and erased.deleted_at is not None and erased.reactions == ()
    assert edited.content == "first!" and edited.edited_at is not None


async def test_downgrading_0003_returns_to_the_0002_schema(postgres_server: PostgresServer) -> None:
    url = postgres_server.create_database(f"mig3_{uuid.uuid4().hex[:8]}")
    config = alembic_config(url)
    await asyncio.to_thread(command.upgrade, config, "head")
    await asyncio.to_thread(command.downgrade, config, "0002")
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            columns = (
                (
                    await conn.execute(
                        text(
                            "SELECT table_name || '.' || column_name"
                            " FROM information_schema.columns"
                            " WHERE column_name IN ('edited_at', 'deleted_at', 'emoji')"
                            " OR table_name = 'message_reactions'"
                        )
                    )
                )
                .scalars()
                .all()
            )
    finally:
        await engine.dispose()
    assert columns == []
    await asyncio.to_thread(command.upgrade, config, "head")
