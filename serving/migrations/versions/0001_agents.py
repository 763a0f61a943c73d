"""The agent roster, as the store created it before migrations existed.

Revision ID: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "agents",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("work_group", sa.String(100), nullable=False),
        sa.Column("languages", JSON, nullable=False),
        sa.Column("skills", JSON, nullable=False),
        sa.Column("capacity", sa.Integer, nullable=False),
        sa.Column("caseload", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("csat", JSON, nullable=False),
        sa.Column("first_response_minutes", JSON, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("agents")
