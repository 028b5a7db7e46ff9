"""Blocks between users, and reports of messages.

Two new tables, nothing else changes: pods of the previous release keep running during the
rollout (they neither read nor write these tables, so a block made on a new pod is not enforced
by old pods until they are replaced; the rollout of one Deployment is short).

Revision ID: 0004
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

USER_ID = sa.String(128)


def upgrade() -> None:
    op.create_table(
        "blocks",
        sa.Column("blocker_id", USER_ID, nullable=False),
        sa.Column("blocked_id", USER_ID, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("blocker_id", "blocked_id", name="pk_blocks"),
        sa.CheckConstraint("blocker_id <> blocked_id", name="ck_blocks_not_self"),
    )
    op.create_index("ix_blocks_blocked_id_blocker_id", "blocks", ["blocked_id", "blocker_id"])
    op.create_table(
        "reports",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("message_id", sa.Uuid(), nullable=False),
        sa.Column("conversation_id", sa.Uuid(), nullable=False),
        sa.Column("reporter_id", USER_ID, nullable=False),
        sa.Column("author_id", USER_ID, nullable=False),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_reports"),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name="fk_reports_message_id_messages",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name="fk_reports_conversation_id_conversations",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("message_id", "reporter_id", name="uq_reports_message_id_reporter_id"),
        sa.CheckConstraint("reason IN ('spam', 'abuse', 'other')", name="ck_reports_known_reason"),
    )
    op.create_index("ix_reports_author_id_created_at", "reports", ["author_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_reports_author_id_created_at", table_name="reports")
    op.drop_table("reports")
    op.drop_index("ix_blocks_blocked_id_blocker_id", table_name="blocks")
    op.drop_table("blocks")
