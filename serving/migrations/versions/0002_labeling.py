"""The labeling workspace: accounts, the item pool, leases and labels.

Revision ID: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.String(200), nullable=False),
        sa.Column("disabled", sa.Boolean, nullable=False),
        sa.Column("failed_logins", sa.Integer, nullable=False),
        sa.Column("last_failed_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "label_items",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("text_key", sa.String(64), nullable=False, unique=True),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("external_id", sa.String(200), nullable=True),
        sa.Column("channel", sa.String(32), nullable=True),
        sa.Column("author", JSON, nullable=True),
        sa.Column("context", JSON, nullable=True),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("model_version", sa.String(200), nullable=True),
        sa.Column("suggestion", JSON, nullable=True),
        sa.Column("uncertainty", sa.Float, nullable=False),
        sa.Column("priority", sa.Float, nullable=False),
        sa.Column("audit", sa.Boolean, nullable=False),
        sa.Column("rand", sa.Float, nullable=False),
        sa.Column("needed", sa.Integer, nullable=False),
        sa.Column("done", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("embedding", sa.LargeBinary, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=True),
    )
    op.create_index("ix_label_items_queue", "label_items", ["state", "audit", "priority"])
    op.create_index("ix_label_items_audit", "label_items", ["state", "audit", "rand"])
    op.create_index("ix_label_items_expires", "label_items", ["expires_at"])
    op.create_table(
        "label_leases",
        sa.Column(
            "item_id",
            sa.Integer,
            sa.ForeignKey("label_items.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("leased_at", TS, nullable=False),
    )
    op.create_index("ix_label_leases_user", "label_leases", ["user_id", "expires_at"])
    op.create_table(
        "labels",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "item_id",
            sa.Integer,
            sa.ForeignKey("label_items.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("labels", JSON, nullable=True),
        sa.Column("suggestion", JSON, nullable=True),
        sa.Column("model_version", sa.String(200), nullable=True),
        sa.Column("changed", JSON, nullable=True),
        sa.Column("note", sa.Text, nullable=True),
        sa.Column("idempotency_key", sa.String(100), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("retracted_at", TS, nullable=True),
        sa.Column("duration_ms", sa.Integer, nullable=True),
        sa.UniqueConstraint("user_id", "idempotency_key", name="uq_labels_idempotency"),
    )
    op.create_index("ix_labels_item", "labels", ["item_id", "user_id"])
    op.create_index("ix_labels_user_time", "labels", ["user_id", "created_at"])


def downgrade() -> None:
    op.drop_table("labels")
    op.drop_table("label_leases")
    op.drop_table("label_items")
    op.drop_table("users")
