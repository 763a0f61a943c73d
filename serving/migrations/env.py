"""Alembic environment: run by ``serving.store.Store.upgrade`` with a live connection (and,
on PostgreSQL, the schema the store lives in); never from an ``alembic.ini``."""

from __future__ import annotations

from alembic import context

# Imported to register their tables on the metadata (labeling; contacts and casework).
import serving.labeling.tables
import serving.tables  # noqa: F401
from serving.store import metadata

config = context.config
connection = config.attributes["connection"]
schema = config.attributes.get("schema")

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table_schema=schema,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
