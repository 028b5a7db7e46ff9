"""Edits, deletes and reactions: two nullable columns on messages, a reactions table, and the
emoji of reaction entries in the per-user change logs.

Upgrading a live database: every change is additive and needs no rewrite of existing rows. The new
columns are nullable without a default (PostgreSQL adds them without touching the table's rows),
so messages written before the upgrade read as never edited, never deleted, with no reactions;
pods of the previous release keep writing messages and change-log entries exactly as before
(their INSERTs name their columns, and the new ones stay NULL). The reactions table is new and
empty.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

USER_ID = sa.String(128)


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("edited_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("user_changes") as batch:
        batch.add_column(sa.Column("emoji", sa.String(16), nullable=True))
    op.create_table(
        "message_reactions",
        sa.Column("message_id", sa.Uuid(), nullable=False),
        sa.Column("emoji", sa.String(16), nullable=False),
        sa.Column("user_id", USER_ID, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name="fk_message_reactions_message_id_messages",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("message_id", "emoji", "user_id", name="pk_message_reactions"),
    )


def downgrade() -> None:
    op.drop_table("message_reactions")
    with op.batch_alter_table("user_changes") as batch:
        batch.drop_column("emoji")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("deleted_at")
        batch.drop_column("edited_at")
