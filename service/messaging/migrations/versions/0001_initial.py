"""Conversations, participants, messages and the commit-ordered message stream.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

USER_ID = sa.String(128)


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_low", USER_ID, nullable=False),
        sa.Column("user_high", USER_ID, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_conversations"),
        sa.UniqueConstraint("user_low", "user_high", name="uq_conversations_user_low_user_high"),
        sa.CheckConstraint("user_low < user_high", name=op.f("ck_conversations_sorted_pair")),
    )
    op.create_table(
        "participants",
        sa.Column("conversation_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", USER_ID, nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name="fk_participants_conversation_id_conversations",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("conversation_id", "user_id", name="pk_participants"),
    )
    op.create_index(
        "ix_participants_user_id_conversation_id", "participants", ["user_id", "conversation_id"]
    )
    op.create_table(
        "messages",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("conversation_id", sa.Uuid(), nullable=False),
        sa.Column("author_id", USER_ID, nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), server_default="sent", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("client_message_id", sa.String(64), nullable=True),
        sa.Column("stream_pos", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name="fk_messages_conversation_id_conversations",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_messages"),
        sa.UniqueConstraint(
            "author_id", "client_message_id", name="uq_messages_author_id_client_message_id"
        ),
        sa.UniqueConstraint("stream_pos", name="uq_messages_stream_pos"),
        sa.CheckConstraint(
            "status IN ('sent', 'delivered', 'read')", name=op.f("ck_messages_known_status")
        ),
    )
    op.create_index(
        "ix_messages_conversation_id_created_at",
        "messages",
        ["conversation_id", "created_at", "id"],
    )
    op.create_index(
        "ix_messages_conversation_id_stream_pos", "messages", ["conversation_id", "stream_pos"]
    )
    stream = op.create_table(
        "message_stream",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_message_stream"),
    )
    op.bulk_insert(stream, [{"id": 1, "position": 0}])


def downgrade() -> None:
    op.drop_table("message_stream")
    op.drop_index("ix_messages_conversation_id_stream_pos", table_name="messages")
    op.drop_index("ix_messages_conversation_id_created_at", table_name="messages")
    op.drop_table("messages")
    op.drop_index("ix_participants_user_id_conversation_id", table_name="participants")
    op.drop_table("participants")
    op.drop_table("conversations")
