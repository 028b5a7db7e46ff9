"""The webhook outbox, pending push-notification checks, and disabled endpoints.

Three new tables, nothing existing is touched: a live database upgrades in place while pods of the
previous release keep serving (they write no events; the new pods emit from the first change they
commit).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

USER_ID = sa.String(128)


def upgrade() -> None:
    op.create_table(
        "webhook_outbox",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("endpoint", sa.String(2048), nullable=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.String(200), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_outbox"),
    )
    op.create_index("ix_webhook_outbox_due_at", "webhook_outbox", ["due_at"])
    op.create_table(
        "webhook_notifications",
        sa.Column("message_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", USER_ID, nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name="fk_webhook_notifications_message_id_messages",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("message_id", "user_id", name="pk_webhook_notifications"),
    )
    op.create_index("ix_webhook_notifications_due_at", "webhook_notifications", ["due_at"])
    op.create_table(
        "webhook_endpoints",
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("url", name="pk_webhook_endpoints"),
    )


def downgrade() -> None:
    op.drop_table("webhook_endpoints")
    op.drop_index("ix_webhook_notifications_due_at", table_name="webhook_notifications")
    op.drop_table("webhook_notifications")
    op.drop_index("ix_webhook_outbox_due_at", table_name="webhook_outbox")
    op.drop_table("webhook_outbox")
