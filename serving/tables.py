"""The tables of customer context and casework, on the store's one ``MetaData``
(``serving.store``): contacts across channels and the handles linked to a customer
(``serving.contacts``), assignments and their outcomes (``serving.assignments``), routing
experiments (``serving.experiment_store``).

Migrations ``0004_assignments`` and ``0005_experiments`` create them; these definitions are
what queries are written against, and a test checks that the two agree.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Table,
    Text,
)

from serving.labeling.store import _sqlite_writer
from serving.store import Json, Store, metadata

# A customer's key in the contact history: "c:<customer id>", or "h:<handle>" for contacts
# from a social handle not (yet) linked to a customer. Prefixed so an id and a handle can
# never be the same key.
KEY_LENGTH = 210

contacts_table = Table(
    "contacts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("customer_key", String(KEY_LENGTH), nullable=False),
    Column("channel", String(32), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    # The contact's id in the system it came from: a retry with the same id is recorded once.
    Column("source_id", String(200), nullable=True, unique=True),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    # The history of one customer, newest first: the lookup and the per-customer cap.
    Index("ix_contacts_customer_at", "customer_key", "at"),
    Index("ix_contacts_at", "at"),
)

# A social handle (normalized: no leading @, case folded) linked to one customer.
handles_table = Table(
    "customer_handles",
    metadata,
    Column("handle", String(200), primary_key=True),
    Column("customer_key", String(KEY_LENGTH), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_customer_handles_customer", "customer_key"),
    Index("ix_customer_handles_updated", "updated_at"),
)

# One row per assigned post (the post id is the key: assigning a post twice is impossible).
assignments_table = Table(
    "assignments",
    metadata,
    Column("post_id", String(200), primary_key=True),
    Column("agent_id", String(200), nullable=False),
    Column("topic", String(200), nullable=False),
    Column("channel", String(32), nullable=False),
    Column("level", String(4), nullable=False),
    Column("score", Integer, nullable=False),
    # The served model's labels per task, for a correction to be compared with.
    Column("predicted", Json, nullable=False),
    # The post's text, kept while the case is open so that an agent's correction can enter
    # the labeling pool; erased when the case closes.
    Column("text", Text, nullable=True),
    Column("reasons", Json, nullable=False),
    Column("post_created_at", DateTime(timezone=True), nullable=False),
    Column("respond_by", DateTime(timezone=True), nullable=False),
    Column("assigned_at", DateTime(timezone=True), nullable=False),
    Column("closed_at", DateTime(timezone=True), nullable=True),
    # The routing experiment the post was routed under and its arm ("A"/"B"), or null.
    Column("experiment", String(100), nullable=True),
    Column("arm", String(1), nullable=True),
    Index("ix_assignments_assigned_at", "assigned_at"),
    Index("ix_assignments_agent", "agent_id", "closed_at"),
    Index("ix_assignments_experiment", "experiment", "arm"),
)

# The outcome of a case, one row per post; later feedback on the same post fills in or
# replaces fields (a CSAT survey often arrives after the case closed).
feedback_table = Table(
    "feedback",
    metadata,
    Column("post_id", String(200), primary_key=True),
    # Who handled it (may differ from the agent it was assigned to).
    Column("agent_id", String(200), nullable=False),
    # The topic the outcome counts for: the corrected one, else the assignment's.
    Column("topic", String(200), nullable=False),
    Column("channel", String(32), nullable=True),
    Column("first_response_minutes", Float, nullable=True),
    # log1p(first_response_minutes), written with it: estimates sum it in SQL (SQLite has no
    # portable LN).
    Column("log_response", Float, nullable=True),
    Column("resolved", Boolean, nullable=True),
    Column("csat", Integer, nullable=True),  # 1-5
    Column("nps", Integer, nullable=True),  # 0-10
    Column("corrected", Json, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_feedback_agent_topic", "agent_id", "topic"),
    Index("ix_feedback_updated", "updated_at"),
)


# Routing experiment configurations, one row per version (never updated: the audit trail);
# the highest version is in force.
experiments_table = Table(
    "experiments",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("name", String(100), nullable=False),
    Column("config", Json, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(200), nullable=False),
)


@contextmanager
def writing(store: Store, *lock: Table) -> Iterator[Connection]:
    """One write transaction, committed on exit. On SQLite this process's writers first queue
    on the database's one in-process lock (the labeling store's), so 32 threads writing at
    once wait their turn instead of polling SQLite's busy handler until it gives up."""
    writer = None if store.dialect == "postgresql" else _sqlite_writer(str(store.url))
    got = writer is not None and writer.acquire(timeout=30.0)
    try:
        with store._write(*lock) as conn:
            yield conn
    finally:
        if got:
            writer.release()  # type: ignore[union-attr]


def utcnow() -> datetime:
    """What every timestamp column is written with."""
    return datetime.now(UTC)


def aware(ts: datetime | None) -> datetime | None:
    """SQLite hands timestamps back naive; they were written in UTC."""
    if ts is None:
        return None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
