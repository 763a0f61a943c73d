"""The labeling workspace's tables, on the store's one ``MetaData`` (``serving.store``).

Alembic migrations (``serving/migrations``) create them; these definitions are what queries
are written against, and a test checks that the two agree.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from serving.store import Json, metadata

users_table = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("password_hash", String(200), nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("failed_logins", Integer, nullable=False, default=0),
    Column("last_failed_at", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

items_table = Table(
    "label_items",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # sha256 of the normalized text: near-identical posts are one item.
    Column("text_key", String(64), nullable=False, unique=True),
    Column("text", Text, nullable=False),
    Column("external_id", String(200), nullable=True),
    Column("channel", String(32), nullable=True),
    Column("author", Json, nullable=True),
    Column("context", Json, nullable=True),
    Column("source", String(32), nullable=False),
    Column("model_version", String(200), nullable=True),
    Column("suggestion", Json, nullable=True),
    Column("uncertainty", Float, nullable=False, default=0.0),
    Column("priority", Float, nullable=False, default=0.0),
    Column("audit", Boolean, nullable=False, default=False),
    Column("rand", Float, nullable=False),
    Column("needed", Integer, nullable=False, default=1),
    Column("done", Integer, nullable=False, default=0),
    # open: wants labels; done: single or agreed; review: disagreement or flag; resolved.
    Column("state", String(16), nullable=False, default="open"),
    Column("embedding", LargeBinary, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Index("ix_label_items_queue", "state", "audit", "priority"),
    Index("ix_label_items_audit", "state", "audit", "rand"),
    Index("ix_label_items_expires", "expires_at"),
)

leases_table = Table(
    "label_leases",
    metadata,
    Column(
        "item_id",
        Integer,
        ForeignKey("label_items.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("leased_at", DateTime(timezone=True), nullable=False),
    Index("ix_label_leases_user", "user_id", "expires_at"),
)

labels_table = Table(
    "labels",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("item_id", Integer, ForeignKey("label_items.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    # label: an evaluator's answer; skip; flag (unclear, with a note); resolve: a lead's verdict.
    Column("kind", String(16), nullable=False),
    Column("labels", Json, nullable=True),
    Column("suggestion", Json, nullable=True),
    Column("model_version", String(200), nullable=True),
    Column("changed", Json, nullable=True),
    Column("note", Text, nullable=True),
    Column("idempotency_key", String(100), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("retracted_at", DateTime(timezone=True), nullable=True),
    Column("duration_ms", Integer, nullable=True),
    UniqueConstraint("user_id", "idempotency_key", name="uq_labels_idempotency"),
    Index("ix_labels_item", "item_id", "user_id"),
    Index("ix_labels_user_time", "user_id", "created_at"),
)


def utcnow() -> datetime:
    """What every timestamp column is written with."""
    return datetime.now(UTC)


def aware(ts: datetime | None) -> datetime | None:
    """SQLite hands timestamps back naive; they were written in UTC."""
    if ts is None:
        return None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts
