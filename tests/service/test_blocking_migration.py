"""Migration 0004 (blocks and reports) upgrades a live database in place, keeping its data.

The database is brought to whatever revision precedes 0004 (the chain may grow before it), data is
written there with plain SQL of the columns every earlier schema has, and then it is upgraded to
the head: the old data is untouched and blocks and reports work over it.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import String, Uuid, column, insert, inspect, table
from sqlalchemy.ext.asyncio import create_async_engine

from messaging.db import alembic_config
from messaging.storage import blocking, reports
from messaging.storage import messages as message_sql
from messaging.storage.reports import ReportRecord
from messaging.tables import UTCDateTime
from tests.support.servers import PostgresServer
from tests.support.service import empty_database

ALICE, BOB = "alice", "bob"


def _before_0004() -> str:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    previous = script.get_revision("0004").down_revision
    assert isinstance(previous, str)
    return previous


# Only the columns every schema before 0004 has, typed as the application types them.
_conversations = table(
    "conversations",
    column("id", Uuid()),
    column("user_low", String()),
    column("user_high", String()),
    column("created_at", UTCDateTime()),
)
_participants = table(
    "participants", column("conversation_id", Uuid()), column("user_id", String())
)
_messages = table(
    "messages",
    column("id", Uuid()),
    column("conversation_id", Uuid()),
    column("author_id", String()),
    column("content", String()),
    column("status", String()),
    column("created_at", UTCDateTime()),
)


async def _write_before_0004(url: str) -> tuple[uuid.UUID, uuid.UUID]:
    engine = create_async_engine(url)
    conversation, message = uuid.uuid4(), uuid.uuid4()
    at = datetime.now(UTC) - timedelta(hours=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                insert(_conversations).values(
                    id=conversation, user_low=ALICE, user_high=BOB, created_at=at
                )
            )
            await conn.execute(
                insert(_participants).values(
                    [{"conversation_id": conversation, "user_id": u} for u in (ALICE, BOB)]
                )
            )
            await conn.execute(
                insert(_messages).values(
                    id=message,
                    conversation_id=conversation,
                    author_id=ALICE,
                    content="written before 0004",
                    status="sent",
                    created_at=at,
                )
            )
    finally:
        await engine.dispose()
    return conversation, message


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
async def test_upgrading_to_0004_keeps_the_data_and_blocks_and_reports_work_on_it(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = empty_database(backend, request, tmp_path)
    config = alembic_config(url)
    await asyncio.to_thread(command.upgrade, config, _before_0004())
    conversation, message_id = await _write_before_0004(url)

    await asyncio.to_thread(command.upgrade, config, "head")

    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            message = await message_sql.get_message(conn, message_id)
            await blocking.add_block(conn, blocker_id=BOB, blocked_id=ALICE, at=datetime.now(UTC))
            stored, created = await reports.add_report(
                conn,
                ReportRecord(
                    id=uuid.uuid4(),
                    message_id=message_id,
                    conversation_id=conversation,
                    reporter_id=BOB,
                    author_id=ALICE,
                    reason="spam",
                    note=None,
                    created_at=datetime.now(UTC),
                ),
            )
        async with engine.connect() as conn:
            relations = await blocking.relations(conn, user_id=ALICE, others=[BOB])
            found = await reports.get_report(conn, stored.id)
    finally:
        await engine.dispose()
    assert message is not None and message.content == "written before 0004"
    assert relations == {(BOB, ALICE)}
    assert created and found == stored


async def test_0004_downgrades_cleanly_and_upgrades_again(postgres_server: PostgresServer) -> None:
    url = postgres_server.create_database(f"mig_{uuid.uuid4().hex[:8]}")
    config = alembic_config(url)
    await asyncio.to_thread(command.upgrade, config, "0004")
    await _write_before_0004(url)
    await asyncio.to_thread(command.downgrade, config, _before_0004())
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            names = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    finally:
        await engine.dispose()
    await asyncio.to_thread(command.upgrade, config, "head")
    assert "blocks" not in names and "reports" not in names
    assert "messages" in names
