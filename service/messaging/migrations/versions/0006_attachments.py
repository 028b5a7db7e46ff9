"""Attachments: one row per upload, attached to at most one message.

A new table only, so upgrading a live database is instant and takes no lock that a running pod
of the previous release waits on; those pods never read or write it (they do not know
attachments), and messages they store simply have none.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

USER_ID = sa.String(128)


def upgrade() -> None:
    op.create_table(
        "attachments",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column(
            "conversation_id",
            sa.Uuid(),
            sa.ForeignKey(
                "conversations.id",
                ondelete="CASCADE",
                name="fk_attachments_conversation_id_conversations",
            ),
            nullable=False,
        ),
        sa.Column("owner_id", USER_ID, nullable=False),
        sa.Column("file_name", sa.String(255), nullable=False),
        sa.Column("content_type", sa.String(255), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("object_key", sa.String(512), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "message_id",
            sa.Uuid(),
            sa.ForeignKey(
                "messages.id", ondelete="SET NULL", name="fk_attachments_message_id_messages"
            ),
            nullable=True,
        ),
        sa.Column("ordinal", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("doomed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("size_bytes >= 0", name="ck_attachments_size_not_negative"),
        sa.PrimaryKeyConstraint("id", name="pk_attachments"),
        sa.UniqueConstraint("object_key", name="uq_attachments_object_key"),
    )
    op.create_index("ix_attachments_message_id_ordinal", "attachments", ["message_id", "ordinal"])
    op.create_index("ix_attachments_created_at", "attachments", ["created_at"])


def downgrade() -> None:
    op.drop_table("attachments")
