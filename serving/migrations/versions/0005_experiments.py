"""Routing experiments: their configuration's versions, and each assignment's experiment and
arm (serving/tables.py, serving/experiment_store.py).

Revision ID: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("config", JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
    )
    op.add_column("assignments", sa.Column("experiment", sa.String(100), nullable=True))
    op.add_column("assignments", sa.Column("arm", sa.String(1), nullable=True))
    op.create_index("ix_assignments_experiment", "assignments", ["experiment", "arm"])


def downgrade() -> None:
    op.drop_index("ix_assignments_experiment", table_name="assignments")
    with op.batch_alter_table("assignments") as batch:
        batch.drop_column("arm")
        batch.drop_column("experiment")
    op.drop_table("experiments")
