"""Per-user change logs replace the cluster-wide message stream.

Every participant of a conversation gets a position in their own log for each change to one of its
messages; ``syncToken`` is such a position. Existing messages are logged as "created" in their old
stream order (the order clients have seen them in), so each user's log starts out holding every
message of their conversations.

Upgrading a live database: the backfill holds the ``message_stream`` row lock, so pods of the
previous release (which take that lock for every send) wait while it runs and resume after it;
their later messages still carry a ``stream_pos``, and on PostgreSQL a trigger logs them the way
the new code does, until every pod runs the new release (a later migration drops the trigger and
the old column). Status changes made by old pods during the rollout are not logged: their
messages' latest state is still what sync returns next time the message changes, and history shows
it at once.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

USER_ID = sa.String(128)

_LEGACY_TRIGGER_FUNCTION = """
CREATE FUNCTION messaging_log_legacy_message() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WITH targets AS (
        SELECT user_id FROM participants WHERE conversation_id = NEW.conversation_id
        ORDER BY user_id
    ), bumped AS (
        INSERT INTO user_streams AS s (user_id, position)
        SELECT user_id, 1 FROM targets ORDER BY user_id
        ON CONFLICT (user_id) DO UPDATE SET position = s.position + 1
        RETURNING s.user_id, s.position
    )
    INSERT INTO user_changes (user_id, position, message_id, kind, actor_id, changed_at)
    SELECT user_id, position, NEW.id, 'created', NEW.author_id, NEW.created_at FROM bumped;
    RETURN NULL;
END
$$
"""

_LEGACY_TRIGGER = """
CREATE TRIGGER messaging_log_legacy_message AFTER INSERT ON messages
FOR EACH ROW WHEN (NEW.stream_pos IS NOT NULL)
EXECUTE FUNCTION messaging_log_legacy_message()
"""


def upgrade() -> None:
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    with op.batch_alter_table("messages") as batch:
        batch.alter_column("stream_pos", existing_type=sa.BigInteger(), nullable=True)
    op.create_table(
        "user_streams",
        sa.Column("user_id", USER_ID, nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name="pk_user_streams"),
    )
    op.create_table(
        "user_changes",
        sa.Column("user_id", USER_ID, nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("message_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("actor_id", USER_ID, nullable=True),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name="fk_user_changes_message_id_messages",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", "position", name="pk_user_changes"),
    )
    op.create_index("ix_user_changes_message_id", "user_changes", ["message_id"])
    if postgres:
        # Old pods take this row lock for every send: holding it makes the backfill a clean cut.
        op.execute("SELECT position FROM message_stream WHERE id = 1 FOR UPDATE")
    op.execute(
        """
        INSERT INTO user_changes (user_id, position, message_id, kind, actor_id, changed_at)
        SELECT p.user_id,
               row_number() OVER (PARTITION BY p.user_id ORDER BY m.stream_pos),
               m.id, 'created', m.author_id, m.created_at
        FROM messages m JOIN participants p ON p.conversation_id = m.conversation_id
        """
    )
    op.execute(
        """
        INSERT INTO user_streams (user_id, position)
        SELECT user_id, max(position) FROM user_changes GROUP BY user_id
        """
    )
    if postgres:
        op.execute(_LEGACY_TRIGGER_FUNCTION)
        op.execute(_LEGACY_TRIGGER)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS messaging_log_legacy_message ON messages")
        op.execute("DROP FUNCTION IF EXISTS messaging_log_legacy_message()")
    # Messages written without a stream position get one after every older one, in id order.
    op.execute(
        """
        UPDATE messages SET stream_pos = numbered.pos FROM (
            SELECT id, (SELECT coalesce(max(stream_pos), 0) FROM messages)
                       + row_number() OVER (ORDER BY id) AS pos
            FROM messages WHERE stream_pos IS NULL
        ) AS numbered WHERE messages.id = numbered.id
        """
    )
    op.execute(
        "UPDATE message_stream SET position = (SELECT coalesce(max(stream_pos), 0) FROM messages)"
    )
    with op.batch_alter_table("messages") as batch:
        batch.alter_column("stream_pos", existing_type=sa.BigInteger(), nullable=False)
    op.drop_index("ix_user_changes_message_id", table_name="user_changes")
    op.drop_table("user_changes")
    op.drop_table("user_streams")
