"""Migration 0006 (attachments) upgrades a live PostgreSQL database in place, keeping its data.

The data is written with the schema just before 0006, whatever that is once revisions are
chained (read from the migration itself), by the store functions of the release before.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import create_async_engine

from messaging.db import alembic_config
from messaging.records import NewMessage
from messaging.storage import attachments as sql
from messaging.storage import conversations as conversation_sql
from messaging.storage import messages as message_sql
from tests.support.servers import PostgresServer


async def test_upgrading_to_0006_keeps_every_message_and_adds_attachments(
    postgres_server: PostgresServer,
) -> None:
    url = postgres_server.create_database(f"mig7_{uuid.uuid4().hex[:8]}")
    config = alembic_config(url)
    before = ScriptDirectory.from_config(config).get_revision("0006").down_revision
    assert isinstance(before, str)
    await asyncio.to_thread(command.upgrade, config, before)

    engine = create_async_engine(url)
    now = datetime.now(UTC) - timedelta(minutes=5)
    try:
        async with engine.begin() as conn:
            conversation, _ = await conversation_sql.get_or_create_conversation(
                conn, conversation_id=uuid.uuid4(), user_a="alice", user_b="bob", created_at=now
            )
            written = await message_sql.insert_messages(
                conn,
                [
                    NewMessage(uuid.uuid4(), conversation.id, "alice", f"m{i}", now, None)
                    for i in range(3)
                ],
            )
        await asyncio.to_thread(command.upgrade, config, "0006")
        async with engine.begin() as conn:
            kept = await message_sql.history_page(
                conn, conversation_id=conversation.id, limit=10, before=None
            )
            upload_id = uuid.uuid4()
            await sql.insert_upload(
                conn,
                sql.Upload(
                    id=upload_id,
                    conversation_id=conversation.id,
                    owner_id="alice",
                    file_name="a.png",
                    content_type="image/png",
                    size_bytes=3,
                    object_key=f"{conversation.id}/{upload_id}",
                    created_at=datetime.now(UTC),
                    message_id=None,
                    doomed_at=None,
                ),
            )
            first = written[0][0].id
            attached = await sql.attach(
                conn,
                message_id=first,
                owner_id="alice",
                conversation_id=conversation.id,
                ids=[upload_id],
                created_after=now,
            )
            found = await sql.of_messages(conn, [m.id for m, _ in written])
    finally:
        await engine.dispose()
    assert sorted(m.content for m in kept) == ["m0", "m1", "m2"]
    assert attached == 1
    assert [u.id for u in found[first]] == [upload_id]
