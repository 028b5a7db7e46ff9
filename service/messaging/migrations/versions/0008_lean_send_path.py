"""Less work per sent message, most of it while the counter rows are locked.

Every send's statement locks the participants' counter rows (``user_streams``) and holds them
until its commit; the other replica's batches, which touch the same users, wait that long. This
migration takes two costs out of each message (measured with ``bench.ab --statements``, window
1, 50 users: the batch statement 8.2 -> 5.2 ms mean, 19.2 -> 16.1 WAL records per message):

- The foreign key from ``user_changes.message_id`` to ``messages``: it ran one lookup of the
  message, with a row lock (``FOR KEY SHARE``, a WAL record), for every log row, after the
  counter rows were locked. Every log row is written by the statement that inserts its message
  or by a transaction that just read it, and messages are never deleted (a delete is a
  tombstone), so the key guarded nothing the write path does not already; every read joins the
  log to ``messages``, so a row whose message were removed by hand would not be served.
- The legacy ``stream_pos`` indexes of schema 0001 (its unique index, and the one on
  ``(conversation_id, stream_pos)``) indexed a NULL for every new message: they become partial
  (``WHERE stream_pos IS NOT NULL``), so they still serve and guard the rows pods of that release
  write, and cost new messages nothing.

Both backends (SQLite recreates the two tables, as its ALTER cannot drop constraints). Safe
while older pods serve: they write the same rows.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


_LEGACY = sa.text("stream_pos IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("user_changes") as batch:
        batch.drop_constraint("fk_user_changes_message_id_messages", type_="foreignkey")
    with op.batch_alter_table("messages") as batch:
        batch.drop_constraint("uq_messages_stream_pos", type_="unique")
        batch.drop_index("ix_messages_conversation_id_stream_pos")
    op.create_index(
        "uq_messages_stream_pos",
        "messages",
        ["stream_pos"],
        unique=True,
        postgresql_where=_LEGACY,
        sqlite_where=_LEGACY,
    )
    op.create_index(
        "ix_messages_conversation_id_stream_pos",
        "messages",
        ["conversation_id", "stream_pos"],
        postgresql_where=_LEGACY,
        sqlite_where=_LEGACY,
    )


def downgrade() -> None:
    op.drop_index("ix_messages_conversation_id_stream_pos", table_name="messages")
    op.drop_index("uq_messages_stream_pos", table_name="messages")
    with op.batch_alter_table("messages") as batch:
        batch.create_unique_constraint("uq_messages_stream_pos", ["stream_pos"])
        batch.create_index(
            "ix_messages_conversation_id_stream_pos", ["conversation_id", "stream_pos"]
        )
    with op.batch_alter_table("user_changes") as batch:
        batch.create_foreign_key(
            "fk_user_changes_message_id_messages",
            "messages",
            ["message_id"],
            ["id"],
            ondelete="CASCADE",
        )
