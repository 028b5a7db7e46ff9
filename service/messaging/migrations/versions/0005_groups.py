"""Group conversations and per-member receipts.

A conversation gets a ``kind`` ("direct" for every existing row, by the column's default), a
title, a creator and the creator's idempotency key; a group's pair columns are NULL (its members
are only in ``participants``). Each participant row gets when the member joined and its read
position (NULL in direct conversations, whose state stays on the message). Deliveries of group
messages are rows of ``message_deliveries``; each markRead that moves a member's position appends
one row to ``read_marks``, from which getReceipts says when a message was read.

Upgrading a live database: every change adds a nullable column, a column with a default, or a new
table, and relaxes NOT NULL on the pair; on PostgreSQL none of them rewrites a table, so pods of
the previous release keep working during the rollout (they never see a group: groups are only
made by the new release).

Revision ID: 0005
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

USER_ID = sa.String(128)


def upgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.alter_column("user_low", existing_type=USER_ID, nullable=True)
        batch.alter_column("user_high", existing_type=USER_ID, nullable=True)
        batch.add_column(sa.Column("kind", sa.String(8), nullable=False, server_default="direct"))
        batch.add_column(sa.Column("title", sa.String(100), nullable=True))
        batch.add_column(sa.Column("created_by", USER_ID, nullable=True))
        batch.add_column(sa.Column("client_conversation_id", sa.String(64), nullable=True))
        batch.create_unique_constraint(
            "uq_conversations_created_by_client_conversation_id",
            ["created_by", "client_conversation_id"],
        )
        batch.create_check_constraint(
            op.f("ck_conversations_known_kind"), "kind IN ('direct', 'group')"
        )
    with op.batch_alter_table("participants") as batch:
        batch.add_column(sa.Column("joined_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("read_through_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("read_through_id", sa.Uuid(), nullable=True))
    op.create_table(
        "message_deliveries",
        sa.Column("message_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", USER_ID, nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name="fk_message_deliveries_message_id_messages",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("message_id", "user_id", name="pk_message_deliveries"),
    )
    op.create_table(
        "read_marks",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("conversation_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", USER_ID, nullable=False),
        sa.Column("through_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("through_id", sa.Uuid(), nullable=False),
        sa.Column("read_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name="fk_read_marks_conversation_id_conversations",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_read_marks"),
    )
    op.create_index(
        "ix_read_marks_conversation_id_user_id_through_at",
        "read_marks",
        ["conversation_id", "user_id", "through_at"],
    )


def downgrade() -> None:
    op.drop_index("ix_read_marks_conversation_id_user_id_through_at", table_name="read_marks")
    op.drop_table("read_marks")
    op.drop_table("message_deliveries")
    with op.batch_alter_table("participants") as batch:
        batch.drop_column("read_through_id")
        batch.drop_column("read_through_at")
        batch.drop_column("joined_at")
    op.execute("DELETE FROM conversations WHERE kind = 'group'")
    with op.batch_alter_table("conversations") as batch:
        batch.drop_constraint(op.f("ck_conversations_known_kind"), type_="check")
        batch.drop_constraint("uq_conversations_created_by_client_conversation_id", type_="unique")
        batch.drop_column("client_conversation_id")
        batch.drop_column("created_by")
        batch.drop_column("title")
        batch.drop_column("kind")
        batch.alter_column("user_high", existing_type=USER_ID, nullable=False)
        batch.alter_column("user_low", existing_type=USER_ID, nullable=False)
