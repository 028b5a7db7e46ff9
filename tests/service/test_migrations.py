"""Schema migrations upgrade a live database in place, keeping what it holds."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import create_async_engine

from messaging import tables
from messaging.db import alembic_config
from messaging.records import NewMessage
from messaging.storage import conversations as conversation_sql
from messaging.storage import messages as message_sql
from tests.support.servers import PostgresServer
from tests.support.service import empty_database

ALICE, BOB, CAROL = "alice", "bob", "carol"


async def _write_with_schema_0001(url: str) -> tuple[list[uuid.UUID], uuid.UUID]:
    """Data as the previous release wrote it: stream positions from the one-row counter."""
    engine = create_async_engine(url)
    ab, ac = uuid.uuid4(), uuid.uuid4()
    now = datetime.now(UTC) - timedelta(hours=1)
    ids = []
    async with engine.begin() as conn:
        for conversation, other in ((ab, BOB), (ac, CAROL)):
            await conn.execute(
                tables.conversations.insert().values(
                    id=conversation, user_low=ALICE, user_high=other, created_at=now
                )
            )
            await conn.execute(
                tables.participants.insert().values(
                    [{"conversation_id": conversation, "user_id": u} for u in (ALICE, other)]
                )
            )
        for position, (conversation, status) in enumerate(
            [(ab, "read"), (ac, "sent"), (ab, "sent"), (ab, "delivered")], start=1
        ):
            message_id = uuid.uuid4()
            ids.append(message_id)
            await conn.execute(
                tables.messages.insert().values(
                    id=message_id,
                    conversation_id=conversation,
                    author_id=ALICE,
                    content=f"m{position}",
                    status=status,
                    created_at=now + timedelta(seconds=position),
                    client_message_id=None,
                    stream_pos=position,
                )
            )
        await conn.execute(tables.message_stream.update().values(position=4))
    await engine.dispose()
    return ids, ab


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
async def test_upgrading_from_the_first_schema_logs_every_message_for_every_participant(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = empty_database(backend, request, tmp_path)
    config = alembic_config(url)
    await asyncio.to_thread(command.upgrade, config, "0001")
    ids, ab = await _write_with_schema_0001(url)

    await asyncio.to_thread(command.upgrade, config, "head")

    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            heads = await message_sql.log_heads(conn, [ALICE, BOB, CAROL])
            alices, _ = await message_sql.created_after(conn, user_id=ALICE, after_pos=0, limit=10)
            bobs, _ = await message_sql.created_after(conn, user_id=BOB, after_pos=0, limit=10)
            carols = await message_sql.changed_since(conn, user_id=CAROL, after_pos=0, limit=10)
        # The new code writes into the upgraded database: positions continue after the backfill.
        async with engine.begin() as conn:
            new_id = uuid.uuid4()
            [(stored, created)] = await message_sql.insert_messages(
                conn,
                [NewMessage(new_id, ab, BOB, "after the upgrade", datetime.now(UTC), None)],
            )
    finally:
        await engine.dispose()
    assert heads == {ALICE: 4, BOB: 3, CAROL: 1}
    assert [m.id for m, _ in alices] == ids  # in the old stream order, not id order
    assert [p for _, p in alices] == [1, 2, 3, 4]
    assert [m.id for m, _ in bobs] == [ids[0], ids[2], ids[3]]
    assert [(m.id, m.status) for m, _ in carols] == [(ids[1], "sent")]
    assert [m.status for m, _ in alices] == ["read", "sent", "sent", "delivered"]
    assert created and dict(stored.positions) == {ALICE: 5, BOB: 4}


async def test_a_pod_of_the_previous_release_still_writing_during_the_rollout_is_logged(
    postgres_server: PostgresServer,
) -> None:
    """Old pods keep sending (with a stream position) until the rollout replaces them; a trigger
    logs their messages so synced devices do not miss them."""
    url = postgres_server.create_database(f"mig_{uuid.uuid4().hex[:8]}")
    config = alembic_config(url)
    await asyncio.to_thread(command.upgrade, config, "0001")
    _, ab = await _write_with_schema_0001(url)
    await asyncio.to_thread(command.upgrade, config, "head")
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            # What store.insert_messages of schema 0001 ran.
            await conn.execute(
                text(
                    "WITH counter AS (UPDATE message_stream SET position = position + 1 "
                    "WHERE id = 1 RETURNING position) "
                    "INSERT INTO messages (id, conversation_id, author_id, content, status, "
                    "created_at, client_message_id, stream_pos) "
                    "SELECT :id, :c, 'alice', 'old pod', 'sent', now(), NULL, position "
                    "FROM counter"
                ),
                {"id": uuid.uuid4(), "c": ab},
            )
        async with engine.connect() as conn:
            bobs = await message_sql.changed_since(conn, user_id=BOB, after_pos=3, limit=10)
    finally:
        await engine.dispose()
    assert [m.content for m, _ in bobs] == ["old pod"]
    assert [p for _, p in bobs] == [4]


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
async def test_upgrading_to_the_outbox_keeps_todays_data_and_new_messages_emit_events(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Migration 0007 adds the webhook tables to a database holding today's schema and data."""
    from messaging.outbox import Endpoint, Outbox  # noqa: PLC0415 - only this test needs them
    from tests.support.webhooks import SECRET  # noqa: PLC0415

    url = empty_database(backend, request, tmp_path)
    config = alembic_config(url)
    # Today's schema: everything before the outbox.
    await asyncio.to_thread(command.upgrade, config, "0006")
    engine = create_async_engine(url)
    conversation_id = uuid.uuid4()
    now = datetime.now(UTC)
    try:
        async with engine.begin() as conn:  # today's code writing today's schema
            await conversation_sql.get_or_create_conversation(
                conn, conversation_id=conversation_id, user_a=ALICE, user_b=BOB, created_at=now
            )
            before = await message_sql.insert_messages(
                conn,
                [NewMessage(uuid.uuid4(), conversation_id, ALICE, "old", now, None)],
            )
        await asyncio.to_thread(command.upgrade, config, "0007")

        events = Outbox([Endpoint("http://hooks.test/in", SECRET.encode(), frozenset())])
        new = NewMessage(uuid.uuid4(), conversation_id, BOB, "new", now, "k")
        [(old, _)] = before
        async with engine.begin() as conn:
            await message_sql.insert_messages(conn, [new], events=events.message_events([new]))
        async with engine.connect() as conn:
            history = await message_sql.history_page(
                conn, conversation_id=conversation_id, limit=10, before=None
            )
            rows = (await conn.execute(tables.webhook_outbox.select())).all()
            checks = (await conn.execute(tables.webhook_notifications.select())).all()
            heads = await message_sql.log_heads(conn, [ALICE, BOB])
    finally:
        await engine.dispose()
    assert sorted(m.content for m in history) == ["new", "old"]
    assert old.content == "old"
    assert heads == {ALICE: 2, BOB: 2}
    assert [(r.event_type, str(new.id) in r.body) for r in rows] == [("message.created", True)]
    assert [(c.message_id, c.user_id) for c in checks] == [(new.id, ALICE)]


_SEND_PATH_SCHEMA = """
SELECT 'fk' AS kind, conname AS name, '' AS definition FROM pg_constraint
WHERE conrelid = 'user_changes'::regclass AND contype = 'f'
UNION ALL
SELECT 'index', indexname, indexdef FROM pg_indexes
WHERE tablename = 'messages' AND indexname LIKE '%stream_pos%'
ORDER BY 1, 2
"""


async def test_the_lean_send_path_migration_keeps_legacy_positions_unique_and_downgrades(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Migration 0008 (PostgreSQL): no key check per log row, the legacy stream_pos indexes
    only over the rows that have one (still unique), and a downgrade restores 0007's schema."""
    url = empty_database("postgres", request, tmp_path)
    config = alembic_config(url)
    await asyncio.to_thread(command.upgrade, config, "0001")
    _, conversation_id = await _write_with_schema_0001(url)
    await asyncio.to_thread(command.upgrade, config, "0008")
    engine = create_async_engine(url)
    now = datetime.now(UTC)
    try:
        async with engine.connect() as conn:
            upgraded = (await conn.execute(text(_SEND_PATH_SCHEMA))).all()
        async with engine.begin() as conn:  # today's code: no stream_pos, logged as before
            [(message, stored)] = await message_sql.insert_messages(
                conn, [NewMessage(uuid.uuid4(), conversation_id, BOB, "new", now, "k")]
            )
        duplicate_refused = False
        try:
            async with engine.begin() as conn:  # a pod of release 0001 reusing a position
                await conn.execute(
                    tables.messages.insert().values(
                        id=uuid.uuid4(),
                        conversation_id=conversation_id,
                        author_id=ALICE,
                        content="dup",
                        status="sent",
                        created_at=now,
                        stream_pos=4,
                    )
                )
        except IntegrityError as exc:
            duplicate_refused = "uq_messages_stream_pos" in str(exc)
        await engine.dispose()
        await asyncio.to_thread(command.downgrade, config, "0007")
        async with engine.connect() as conn:
            downgraded = (await conn.execute(text(_SEND_PATH_SCHEMA))).all()
    finally:
        await engine.dispose()
    assert stored
    assert dict(message.positions) == {ALICE: 5, BOB: 4}
    assert duplicate_refused
    assert [(k, n) for k, n, _ in upgraded] == [
        ("index", "ix_messages_conversation_id_stream_pos"),
        ("index", "uq_messages_stream_pos"),
    ]
    assert all("WHERE (stream_pos IS NOT NULL)" in d for _, _, d in upgraded)
    assert [k for k, _, _ in downgraded] == ["fk", "index", "index"]
    assert not any("WHERE" in d for _, _, d in downgraded)
