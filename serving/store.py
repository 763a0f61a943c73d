"""Persistent state of the service: SQLAlchemy Core over SQLite or PostgreSQL (psycopg 3).

One ``MetaData`` holds every table (``agents`` here, the labeling workspace's in
``serving.labeling.tables``); the Alembic migrations in ``serving/migrations`` create and
change them, run by ``Store.upgrade`` at start-up and by ``caretriage db upgrade``. Methods are
synchronous and commit before returning; the API calls them from the thread pool.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    delete,
    event,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.pool import StaticPool

from serving.schemas import Agent

metadata = MetaData()
Json = JSON().with_variant(JSONB(), "postgresql")

agents_table = Table(
    "agents",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("name", String(200), nullable=True),
    Column("work_group", String(100), nullable=False),
    Column("languages", Json, nullable=False),
    Column("skills", Json, nullable=False),
    Column("capacity", Integer, nullable=False),
    Column("caseload", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("csat", Json, nullable=False),
    Column("first_response_minutes", Json, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Every version of the prioritization dictionary ever put in force (serving/dictionary.py);
# the highest version is the live one. Rows are never updated: the history is the audit trail.
dictionary_table = Table(
    "dictionary_versions",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("body", Json, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("note", String(500), nullable=True),
)

_AGENT_FIELDS = [c.name for c in agents_table.columns if c.name != "updated_at"]
_SQLITE_BUSY_MS = 5000
MIGRATIONS = Path(__file__).with_name("migrations")
# Any constant, the same in every process: upgrades of one database take turns on it.
_MIGRATION_LOCK = 0x6361726574726961
_WRITE = "caretriage_write"  # execution option: this transaction will write


def normalize_url(url: str | URL) -> URL:
    """Accept ``postgres://`` and ``postgresql://`` and use psycopg 3 for them, the driver the
    project installs (SQLAlchemy would otherwise pick psycopg2)."""
    u = make_url(url)
    if u.drivername in {"postgres", "postgresql"}:
        u = u.set(drivername="postgresql+psycopg")
    return u


def describe_url(url: str | URL) -> str:
    """The URL fit for a message: never its password."""
    return make_url(url).render_as_string(hide_password=True)


def _make_engine(url: URL) -> Engine:
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url, memory=url.database in {None, "", ":memory:"})
    return create_engine(url, pool_pre_ping=True, hide_parameters=True)


def _sqlite_engine(url: URL, *, memory: bool) -> Engine:
    kwargs: dict[str, Any] = {
        "connect_args": {"check_same_thread": False, "timeout": 30},
        # SQLAlchemy's error text would otherwise carry the statement's values: whole rows.
        "hide_parameters": True,
    }
    if memory:
        # One shared connection, or every pooled connection would see its own empty database.
        kwargs["poolclass"] = StaticPool
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide when transactions begin (see "begin" below).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        if not memory:
            cur.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
            cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # A writing transaction takes the write lock up front, so it waits (busy_timeout) for
        # another writer instead of failing with "database is locked" when upgrading later.
        immediate = conn.get_execution_options().get(_WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _row_to_agent(row: Any) -> Agent:
    m = row._mapping
    return Agent.model_validate({k: m[k] for k in _AGENT_FIELDS})


def _agent_to_row(agent: Agent, now: datetime) -> dict[str, Any]:
    row = agent.model_dump(mode="json")
    return {**{k: row[k] for k in _AGENT_FIELDS}, "updated_at": now}


class Store:
    """The service's database. ``schema`` (PostgreSQL only) puts every table in that schema,
    which lets test sessions and deployments share a server without colliding."""

    def __init__(self, url: str | URL, *, schema: str | None = None) -> None:
        self.url = normalize_url(url)
        self.schema = schema
        if schema and self.url.get_backend_name() == "sqlite":
            raise ValueError("a schema is only supported on PostgreSQL")
        engine = _make_engine(self.url)
        if schema:
            engine = engine.execution_options(schema_translate_map={None: schema})
        self.engine: Engine = engine
        # The roster as scoring reads it: a snapshot, dropped by every write through this
        # store and re-read once it is older than the caller's ``max_age`` (other processes).
        self._roster: tuple[float, tuple[Agent, ...]] | None = None
        self._generation = 0
        self._roster_lock = threading.Lock()

    @property
    def dialect(self) -> str:
        return self.url.get_backend_name()

    def upgrade(self, revision: str = "head") -> str | None:
        """Bring the schema to ``revision`` with the Alembic migrations in
        ``serving/migrations`` (idempotent) and return the revision now in force. A database
        created before migrations existed (an ``agents`` table, no version table) is stamped
        as the first revision, so its rows are kept. Concurrent upgrades serialize: SQLite's
        write lock, a PostgreSQL advisory lock."""
        from alembic import command
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self._write() as conn:
            if self.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
                if self.schema:
                    quoted = conn.dialect.identifier_preparer.quote(self.schema)
                    conn.execute(text(f"SET LOCAL search_path TO {quoted}"))
            cfg.attributes["connection"] = conn
            cfg.attributes["schema"] = self.schema
            names = set(inspect(conn).get_table_names(schema=self.schema))
            if "agents" in names and "alembic_version" not in names:
                command.stamp(cfg, "0001")
            command.upgrade(cfg, revision)
            ctx = MigrationContext.configure(conn, opts={"version_table_schema": self.schema})
            return ctx.get_current_revision()

    def create_all(self) -> None:
        """Old name of ``upgrade``: the tables are made by the migrations."""
        self.upgrade()

    def revision(self) -> str | None:
        """The schema revision in force (None for an empty database)."""
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"version_table_schema": self.schema})
            return ctx.get_current_revision()

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _write(self, *lock: Table) -> Iterator[Connection]:
        """One committed-on-exit write transaction; on PostgreSQL, ``lock`` tables are locked
        so concurrent writers of the same table serialize instead of conflicting."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(**{_WRITE: True})
            with conn.begin():
                if self.dialect == "postgresql":
                    quote = conn.dialect.identifier_preparer.quote
                    for table in lock:
                        name = quote(table.name)
                        if self.schema:
                            name = f"{quote(self.schema)}.{name}"
                        conn.execute(text(f"LOCK TABLE {name} IN SHARE ROW EXCLUSIVE MODE"))
                yield conn

    # -- agents -------------------------------------------------------------------------------

    def list_agents(self) -> list[Agent]:
        """The roster, ordered by id."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(agents_table).order_by(agents_table.c.id)).all()
        return [_row_to_agent(r) for r in rows]

    def cached_roster(self, max_age: float) -> tuple[Agent, ...] | None:
        """The roster snapshot if it is at most ``max_age`` seconds old, else None. Never
        touches the database, so the event loop may call it."""
        snap = self._roster
        if snap is None or time.monotonic() - snap[0] > max_age:
            return None
        return snap[1]

    def roster(self, max_age: float) -> tuple[Agent, ...]:
        """The roster for scoring: the snapshot when fresh enough, else read anew. Writes
        through this store are seen at once; writes by another process within ``max_age``."""
        cached = self.cached_roster(max_age)
        if cached is not None:
            return cached
        with self._roster_lock:
            generation = self._generation
        taken = time.monotonic()
        agents = tuple(self.list_agents())
        with self._roster_lock:
            if generation == self._generation:  # no write landed while we were reading
                self._roster = (taken, agents)
        return agents

    def _invalidate_roster(self) -> None:
        with self._roster_lock:
            self._generation += 1
            self._roster = None

    def get_agent(self, agent_id: str) -> Agent | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(agents_table).where(agents_table.c.id == agent_id)).first()
        return _row_to_agent(row) if row is not None else None

    def replace_agents(self, agents: Sequence[Agent]) -> None:
        """Swap the whole roster in one transaction: readers see the old or the new, never a
        mix. Duplicate ids are the caller's to refuse (they violate the primary key here)."""
        now = datetime.now(UTC)
        rows = [_agent_to_row(a, now) for a in agents]
        with self._write(agents_table) as conn:
            conn.execute(delete(agents_table))
            if rows:
                conn.execute(insert(agents_table), rows)
        self._invalidate_roster()

    def upsert_agent(self, agent: Agent) -> bool:
        """Insert or replace one agent; True if it was new. The write lock taken by ``_write``
        makes update-then-insert race-free on both back ends without dialect-specific SQL."""
        row = _agent_to_row(agent, datetime.now(UTC))
        with self._write(agents_table) as conn:
            updated = conn.execute(
                update(agents_table).where(agents_table.c.id == agent.id).values(**row)
            ).rowcount
            if not updated:
                conn.execute(insert(agents_table).values(**row))
        self._invalidate_roster()
        return not updated

    def delete_agent(self, agent_id: str) -> bool:
        """Remove one agent; True if it existed."""
        with self._write(agents_table) as conn:
            result = conn.execute(delete(agents_table).where(agents_table.c.id == agent_id))
        self._invalidate_roster()
        return result.rowcount > 0
