"""Customer context and casework: contacts across channels, handles linked to a customer,
assignments and their outcomes (serving/tables.py).

Revision ID: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)
KEY = sa.String(210)


def upgrade() -> None:
    op.create_table(
        "contacts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("customer_key", KEY, nullable=False),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("source_id", sa.String(200), nullable=True, unique=True),
        sa.Column("recorded_at", TS, nullable=False),
    )
    op.create_index("ix_contacts_customer_at", "contacts", ["customer_key", "at"])
    op.create_index("ix_contacts_at", "contacts", ["at"])
    op.create_table(
        "customer_handles",
        sa.Column("handle", sa.String(200), primary_key=True),
        sa.Column("customer_key", KEY, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_index("ix_customer_handles_customer", "customer_handles", ["customer_key"])
    op.create_index("ix_customer_handles_updated", "customer_handles", ["updated_at"])
    op.create_table(
        "assignments",
        sa.Column("post_id", sa.String(200), primary_key=True),
        sa.Column("agent_id", sa.String(200), nullable=False),
        sa.Column("topic", sa.String(200), nullable=False),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("level", sa.String(4), nullable=False),
        sa.Column("score", sa.Integer, nullable=False),
        sa.Column("predicted", JSON, nullable=False),
        sa.Column("text", sa.Text, nullable=True),
        sa.Column("reasons", JSON, nullable=False),
        sa.Column("post_created_at", TS, nullable=False),
        sa.Column("respond_by", TS, nullable=False),
        sa.Column("assigned_at", TS, nullable=False),
        sa.Column("closed_at", TS, nullable=True),
    )
    op.create_index("ix_assignments_assigned_at", "assignments", ["assigned_at"])
    op.create_index("ix_assignments_agent", "assignments", ["agent_id", "closed_at"])
    op.create_table(
        "feedback",
        sa.Column("post_id", sa.String(200), primary_key=True),
        sa.Column("agent_id", sa.String(200), nullable=False),
        sa.Column("topic", sa.String(200), nullable=False),
        sa.Column("channel", sa.String(32), nullable=True),
        sa.Column("first_response_minutes", sa.Float, nullable=True),
        sa.Column("log_response", sa.Float, nullable=True),
        sa.Column("resolved", sa.Boolean, nullable=True),
        sa.Column("csat", sa.Integer, nullable=True),
        sa.Column("nps", sa.Integer, nullable=True),
        sa.Column("corrected", JSON, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_index("ix_feedback_agent_topic", "feedback", ["agent_id", "topic"])
    op.create_index("ix_feedback_updated", "feedback", ["updated_at"])


def downgrade() -> None:
    op.drop_table("feedback")
    op.drop_table("assignments")
    op.drop_table("customer_handles")
    op.drop_table("contacts")
