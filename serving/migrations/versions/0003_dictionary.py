"""The prioritization dictionary's versions (serving/dictionary.py).

Revision ID: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "dictionary_versions",
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("body", JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("note", sa.String(500), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("dictionary_versions")
