"""Schema 0005 (groups) upgrades a live database in place, keeping what it holds."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from messaging import tables
from messaging.db import alembic_config
from messaging.storage import conversations as conversation_sql
from messaging.storage import groups as group_sql
from messaging.storage import messages as message_sql
from tests.support.service import empty_database

ALICE, BOB, CAROL = "alice", "bob", "carol"


async def _write_before_groups(url: str) -> tuple[uuid.UUID, uuid.UUID]:
    """A direct conversation with a message, written the way the schema before 0005 allows."""
    engine = create_async_engine(url)
    conversation, message = uuid.uuid4(), uuid.uuid4()
    now = datetime.now(UTC) - timedelta(minutes=5)
    async with engine.begin() as conn:
        # Plain SQL of the columns that existed: the tables module describes the newest schema.
        await conn.execute(
            text(
                "INSERT INTO conversations (id, user_low, user_high, created_at) "
                "VALUES (:id, :low, :high, :at)"
            ),
            {"id": _id(url, conversation), "low": ALICE, "high": BOB, "at": now},
        )
        for user in (ALICE, BOB):
            await conn.execute(
                text("INSERT INTO participants (conversation_id, user_id) VALUES (:c, :u)"),
                {"c": _id(url, conversation), "u": user},
            )
        await conn.execute(
            text(
                "INSERT INTO messages (id, conversation_id, author_id, content, status, "
                "created_at) VALUES (:id, :c, :a, 'old', 'delivered', :at)"
            ),
            {"id": _id(url, message), "c": _id(url, conversation), "a": ALICE, "at": now},
        )
    await engine.dispose()
    return conversation, message


def _id(url: str, value: uuid.UUID) -> str:
    """How SQLAlchemy's Uuid stores a UUID: native on PostgreSQL, 32 hex digits on SQLite."""
    return str(value) if url.startswith("postgresql") else value.hex


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
async def test_upgrading_to_groups_keeps_direct_conversations_and_takes_groups(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = empty_database(backend, request, tmp_path)
    config = alembic_config(url)
    # Whatever revision comes right before 0005 (the lead re-chains revisions at merge).
    await asyncio.to_thread(command.upgrade, config, "0005-1")
    conversation, message = await _write_before_groups(url)

    await asyncio.to_thread(command.upgrade, config, "head")

    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            direct = await conversation_sql.get_conversation(conn, conversation)
            kept = await message_sql.get_message(conn, message)
            group_id, created = await group_sql.create_group(
                conn,
                conversation_id=uuid.uuid4(),
                title="After the upgrade",
                created_by=ALICE,
                client_conversation_id="k",
                members=[ALICE, BOB, CAROL],
                created_at=datetime.now(UTC),
            )
            group = await conversation_sql.get_conversation(conn, group_id)
            listed = await conversation_sql.list_conversations(
                conn, user_id=BOB, limit=10, before=None
            )
    finally:
        await engine.dispose()
    assert direct is not None and direct.kind == "direct"
    assert (direct.participant_ids, direct.title, direct.created_by) == ((ALICE, BOB), None, None)
    assert kept is not None and (kept.content, kept.status) == ("old", "delivered")
    assert created and group is not None
    assert (group.kind, group.participant_ids) == ("group", (ALICE, BOB, CAROL))
    unread = {s.conversation.id: s.unread_count for s in listed}
    assert unread == {conversation: 1, group_id: 0}


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
async def test_the_migrated_schema_is_the_schema_the_code_describes(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """tables.py (what the store writes) and the migrations (what databases hold) agree."""
    url = empty_database(backend, request, tmp_path)
    await asyncio.to_thread(command.upgrade, alembic_config(url), "head")
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            differences = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), tables.metadata)
            )
    finally:
        await engine.dispose()
    assert differences == []
