"""The database schema (SQLAlchemy Core), shared by the store and the Alembic migrations.

Core rather than the ORM: every statement on the hot path is written out in ``store.py`` and
``storage/``, and the same tables run on PostgreSQL (production) and SQLite (the embedded default).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
    text,
)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both backends (SQLite has no timestamptz)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.__class__ is datetime and value.tzinfo is UTC:
            return value  # asyncpg's timestamptz, every row of every read: the fast path
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

USER_ID = String(128)
MESSAGE_STATUSES = ("sent", "delivered", "read")

# A pair of users has exactly one conversation: the pair is stored in sorted order and unique,
# so two racing createConversation calls collide on the constraint instead of making two rows.
conversations = Table(
    "conversations",
    metadata,
    Column("id", Uuid(), primary_key=True),
    # The pair of a direct conversation; NULL for a group (whose members are only in
    # ``participants``), so groups never collide on the pair's constraint.
    Column("user_low", USER_ID, nullable=True),
    Column("user_high", USER_ID, nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    # Schema 0005 (groups): "direct" or "group"; a group's title and creator, and the creator's
    # idempotency key (a repeated createConversation returns the same group).
    Column("kind", String(8), nullable=False, server_default="direct"),
    Column("title", String(100), nullable=True),
    Column("created_by", USER_ID, nullable=True),
    Column("client_conversation_id", String(64), nullable=True),
    UniqueConstraint("user_low", "user_high"),
    UniqueConstraint("created_by", "client_conversation_id"),
    CheckConstraint("user_low < user_high", name="sorted_pair"),
    CheckConstraint("kind IN ('direct', 'group')", name="known_kind"),
)

participants = Table(
    "participants",
    metadata,
    Column(
        "conversation_id",
        Uuid(),
        ForeignKey("conversations.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("user_id", USER_ID, primary_key=True),
    # Schema 0005 (groups; NULL in direct conversations, which have no such state): when the
    # member joined (they see messages from then on), and their read position, the last message
    # they read as (created_at, id). markRead moves the position: one row whatever the group's size.
    Column("joined_at", UTCDateTime(), nullable=True),
    Column("read_through_at", UTCDateTime(), nullable=True),
    Column("read_through_id", Uuid(), nullable=True),
    Index(None, "user_id", "conversation_id"),
)

# Schema 0005: which member's devices received which group message (markDelivered takes at most
# 100 ids, so a call writes at most 100 rows, whatever the group's size).
message_deliveries = Table(
    "message_deliveries",
    metadata,
    Column(
        "message_id",
        Uuid(),
        ForeignKey("messages.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("user_id", USER_ID, primary_key=True),
    Column("delivered_at", UTCDateTime(), nullable=False),
)

# Schema 0005: each group markRead that moved a member's read position, appended (one row per
# call), so getReceipts can say when a member read a given message: the first mark at or past it.
read_marks = Table(
    "read_marks",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    ),
    Column(
        "conversation_id",
        Uuid(),
        ForeignKey("conversations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("user_id", USER_ID, nullable=False),
    Column("through_at", UTCDateTime(), nullable=False),
    Column("through_id", Uuid(), nullable=False),
    Column("read_at", UTCDateTime(), nullable=False),
    Index(None, "conversation_id", "user_id", "through_at"),
)

messages = Table(
    "messages",
    metadata,
    Column("id", Uuid(), primary_key=True),
    Column(
        "conversation_id",
        Uuid(),
        ForeignKey("conversations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("author_id", USER_ID, nullable=False),
    Column("content", Text(), nullable=False),
    Column("status", String(16), nullable=False, server_default="sent"),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("client_message_id", String(64), nullable=True),
    # The cluster-wide stream position of schema 0001, written only by pods of that release during
    # a rolling upgrade (a trigger of migration 0002 logs their messages); NULL for newer rows.
    # Unique where set (partial indexes since 0008: the NULLs of new rows are not indexed).
    Column("stream_pos", BigInteger(), nullable=True),
    # Set by an edit (the content is replaced; no earlier version is kept) and by a delete (the
    # content is erased to "" and the row stays as a tombstone). Schema 0003.
    Column("edited_at", UTCDateTime(), nullable=True),
    Column("deleted_at", UTCDateTime(), nullable=True),
    UniqueConstraint("author_id", "client_message_id"),
    CheckConstraint("status IN ('sent', 'delivered', 'read')", name="known_status"),
    # History pages: newest first within a conversation, keyset on (created_at, id).
    Index("ix_messages_conversation_id_created_at", "conversation_id", "created_at", "id"),
    Index(
        "uq_messages_stream_pos",
        "stream_pos",
        unique=True,
        postgresql_where=text("stream_pos IS NOT NULL"),
        sqlite_where=text("stream_pos IS NOT NULL"),
    ),
    Index(
        "ix_messages_conversation_id_stream_pos",
        "conversation_id",
        "stream_pos",
        postgresql_where=text("stream_pos IS NOT NULL"),
        sqlite_where=text("stream_pos IS NOT NULL"),
    ),
)

# Schema 0001's one-row counter, kept only for pods of that release during a rolling upgrade: the
# write path no longer takes its row lock (see user_streams).
message_stream = Table(
    "message_stream",
    metadata,
    Column("id", BigInteger(), primary_key=True),
    Column("position", BigInteger(), nullable=False),
)

# Each user's change log: every change to a message of their conversations (created, a status
# moved; later edits, deletes, reactions) takes the next position of every participant's log.
# ``syncToken`` is a position in the caller's log. A user's counter row is locked by the
# transactions that append to their log, so a user's positions become visible in order (nothing
# commits below a visible position later), while transactions touching different users never
# wait for each other: there is no cluster-wide lock or row on the write path.
user_streams = Table(
    "user_streams",
    metadata,
    Column("user_id", USER_ID, primary_key=True),
    Column("position", BigInteger(), nullable=False),
)

user_changes = Table(
    "user_changes",
    metadata,
    Column("user_id", USER_ID, primary_key=True),
    Column("position", BigInteger(), primary_key=True),
    # A message's id, without a foreign key since 0008 (it cost a locking lookup per log row
    # while the counter rows are held; messages are never deleted, and every read joins
    # ``messages``).
    Column("message_id", Uuid(), nullable=False),
    Column("kind", String(16), nullable=False),
    # Who made the change (the author for "created", the marker for a status).
    Column("actor_id", USER_ID, nullable=True),
    Column("changed_at", UTCDateTime(), nullable=False),
    # The emoji of a "reacted"/"unreacted" entry (schema 0003), so healing can replay the event.
    Column("emoji", String(16), nullable=True),
    Index(None, "message_id"),
)

# Who blocks whom (schema 0004). A row means ``blocker_id`` blocks ``blocked_id``; the rules
# (blocking.py) apply it both ways where the contract says so. The primary key answers "does A
# block any of these" and the second index "is A blocked by any of these", so a check of one
# user against a set of others is one query over two index ranges.

blocks = Table(
    "blocks",
    metadata,
    Column("blocker_id", USER_ID, primary_key=True),
    Column("blocked_id", USER_ID, primary_key=True),
    Column("created_at", UTCDateTime(), nullable=False),
    CheckConstraint("blocker_id <> blocked_id", name="not_self"),
    Index(None, "blocked_id", "blocker_id"),
)

# Reports of messages, for moderators (schema 0004). No copy of the content is kept: deleting a
# message erases its content everywhere in the database; the ``message.reported`` webhook carries
# the content as it was when reported, to the moderation system that needs it.
reports = Table(
    "reports",
    metadata,
    Column("id", Uuid(), primary_key=True),
    Column(
        "message_id",
        Uuid(),
        ForeignKey("messages.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column(
        "conversation_id",
        Uuid(),
        ForeignKey("conversations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("reporter_id", USER_ID, nullable=False),
    Column("author_id", USER_ID, nullable=False),
    Column("reason", String(16), nullable=False),
    Column("note", Text(), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    # One report per reporter and message: a repeat returns the first (moderators see one).
    UniqueConstraint("message_id", "reporter_id"),
    CheckConstraint("reason IN ('spam', 'abuse', 'other')", name="known_reason"),
    # Moderators look for what one author was reported for, newest first.
    Index(None, "author_id", "created_at"),
)

# Who reacted to a message with which emoji: one row per (message, emoji, user), so setting a
# reaction twice is one row, and a delete erases them with the message's content. Schema 0003.
message_reactions = Table(
    "message_reactions",
    metadata,
    Column(
        "message_id",
        Uuid(),
        ForeignKey("messages.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("emoji", String(16), primary_key=True),
    Column("user_id", USER_ID, primary_key=True),
    Column("created_at", UTCDateTime(), nullable=False),
)

# Attachments (migration 0006): one row per createUpload. ``message_id`` is NULL until a
# sendMessage attaches the upload (then it never changes); ``doomed_at`` is set when the message's
# deletion erased it (its name is blanked at once, its object deleted just after the commit or by
# the next sweep). The sweeper deletes the objects of unattached rows past the TTL and of doomed
# rows, then the rows: every replica runs it, and deleting an object twice is harmless.
attachments = Table(
    "attachments",
    metadata,
    Column("id", Uuid(), primary_key=True),
    Column(
        "conversation_id",
        Uuid(),
        ForeignKey("conversations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("owner_id", USER_ID, nullable=False),
    Column("file_name", String(255), nullable=False),
    Column("content_type", String(255), nullable=False),
    Column("size_bytes", BigInteger(), nullable=False),
    Column("object_key", String(512), nullable=False, unique=True),
    Column("created_at", UTCDateTime(), nullable=False),
    # A message that is removed outright (its conversation deleted) leaves its uploads
    # unattached and old, so the sweeper deletes their objects.
    Column("message_id", Uuid(), ForeignKey("messages.id", ondelete="SET NULL"), nullable=True),
    Column("ordinal", BigInteger(), nullable=False, server_default="0"),
    Column("doomed_at", UTCDateTime(), nullable=True),
    CheckConstraint("size_bytes >= 0", name="size_not_negative"),
    Index(None, "message_id", "ordinal"),
    Index(None, "created_at"),
)


# Webhooks (migration 0007). The outbox: one row per event and endpoint, written in the transaction
# of the change it reports, so no change goes without its event and no event without its change.
# ``id`` is the ``webhook-id`` (stable across retries); ``due_at`` is when the next attempt may
# start, and doubles as the lease of the replica that claimed it (set into the future while it
# sends: a replica that dies mid-delivery leaves the row due again when the lease runs out);
# ``attempts`` fences a late answer of an expired lease. Delivered rows are deleted.
webhook_outbox = Table(
    "webhook_outbox",
    metadata,
    Column("id", Uuid(), primary_key=True),
    Column("endpoint", String(2048), nullable=False),
    Column("event_type", String(64), nullable=False),
    Column("body", Text(), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("due_at", UTCDateTime(), nullable=False),
    Column("attempts", Integer(), nullable=False, server_default="0"),
    Column("last_error", String(200), nullable=True),
    Index(None, "due_at"),
)

# Pending push-notification checks: one per recipient and message (the key makes it at most one),
# written with the message; when due, a recipient none of whose devices marked the message
# delivered gets a ``notification.requested`` event, in the transaction that deletes the row.
webhook_notifications = Table(
    "webhook_notifications",
    metadata,
    Column(
        "message_id",
        Uuid(),
        ForeignKey("messages.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("user_id", USER_ID, primary_key=True),
    Column("due_at", UTCDateTime(), nullable=False),
    Index(None, "due_at"),
)

# Endpoints that answered ``410 Gone``: nothing more is sent to them (every replica reads it).
webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("url", String(2048), primary_key=True),
    Column("disabled_at", UTCDateTime(), nullable=False),
    Column("reason", String(200), nullable=False),
)
