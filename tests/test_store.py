"""The store on SQLite (a temp file) and PostgreSQL (a throwaway schema per test session)."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import delete, inspect
from sqlalchemy.exc import IntegrityError

from serving.schemas import Agent, AgentStatus
from serving.store import Store, agents_table, normalize_url
from tests.conftest import PG_URL


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = Store(f"sqlite:///{tmp_path / 'store.db'}")
    else:
        s = Store(PG_URL, schema=request.getfixturevalue("pg_schema"))
    s.create_all()
    yield s
    if request.param == "postgres":
        s.replace_agents([])  # the schema is shared by the session's tests
    s.dispose()


def agent(i: str, **kw) -> Agent:
    return Agent(
        id=i,
        name=f"Agent {i}",
        skills={"late_flight": 0.8},
        csat={"late_flight": 0.9},
        first_response_minutes={"late_flight": 12.5},
        **kw,
    )


def test_roundtrip_and_replace(store):
    assert store.list_agents() == []
    roster = [agent("b", languages=["en", "es"]), agent("a", status=AgentStatus.away)]
    store.replace_agents(roster)
    assert store.list_agents() == sorted(roster, key=lambda a: a.id)
    store.replace_agents([agent("c")])
    assert [a.id for a in store.list_agents()] == ["c"]
    store.replace_agents([])
    assert store.list_agents() == []


def test_replace_is_atomic(store):
    store.replace_agents([agent("keep")])
    dupes = [agent("x"), agent("x")]
    with pytest.raises(IntegrityError):
        store.replace_agents(dupes)
    assert [a.id for a in store.list_agents()] == ["keep"]


def test_upsert_get_delete(store):
    assert store.upsert_agent(agent("a")) is True
    assert store.upsert_agent(agent("a", caseload=4)) is False
    got = store.get_agent("a")
    assert got is not None and got.caseload == 4 and got.skills == {"late_flight": 0.8}
    assert store.get_agent("missing") is None
    assert store.delete_agent("a") is True
    assert store.delete_agent("a") is False
    assert store.list_agents() == []


def test_create_all_idempotent_and_writes_visible_to_new_store(store):
    store.upsert_agent(agent("a"))
    again = Store(store.url, schema=store.schema)
    again.create_all()
    assert [a.id for a in again.list_agents()] == ["a"]
    again.dispose()


def test_concurrent_writers_from_threads(store):
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for j in range(5):
                store.upsert_agent(agent(f"t{n}", caseload=j))
                store.list_agents()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [a.caseload for a in store.list_agents()] == [4] * 8


def test_sqlite_uses_wal(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'w.db'}")
    with s.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    s.dispose()


def test_sqlite_memory_shared_across_threads():
    s = Store("sqlite://")
    s.create_all()
    t = threading.Thread(target=s.upsert_agent, args=(agent("a"),))
    t.start()
    t.join()
    assert [a.id for a in s.list_agents()] == ["a"]


@pytest.mark.postgres
def test_postgres_tables_live_in_the_session_schema(pg_schema):
    s = Store(PG_URL, schema=pg_schema)
    s.create_all()
    assert "agents" in inspect(s.engine).get_table_names(schema=pg_schema)
    s.dispose()


def test_postgres_url_uses_psycopg3():
    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("sqlite:///x.db").drivername == "sqlite"


# -- the roster snapshot scoring reads ----------------------------------------------------------


def test_roster_snapshot_is_served_without_reading_again(store):
    store.replace_agents([agent("a")])
    first = store.roster(max_age=60)
    with store.engine.connect() as conn:  # a write behind the store's back (another process)
        conn.execute(delete(agents_table))
        conn.commit()
    assert store.cached_roster(max_age=60) is first
    assert [a.id for a in store.roster(max_age=60)] == ["a"]
    assert store.roster(max_age=0) == ()  # too old for this caller: read anew


@pytest.mark.parametrize(
    "write",
    [
        lambda s: s.replace_agents([agent("b")]),
        lambda s: s.upsert_agent(agent("b")),
        lambda s: s.delete_agent("a"),
    ],
    ids=["replace", "upsert", "delete"],
)
def test_writes_through_the_store_are_seen_at_once(store, write):
    store.replace_agents([agent("a")])
    before = {a.id for a in store.roster(max_age=60)}
    write(store)
    assert store.cached_roster(max_age=60) is None
    after = {a.id for a in store.roster(max_age=60)}
    assert after == {a.id for a in store.list_agents()} != before


def test_a_read_that_raced_a_write_is_not_kept(store, monkeypatch):
    """A snapshot read before a write commits must not be cached after it."""
    store.replace_agents([agent("a")])
    real = store.list_agents

    def read_then_write():
        rows = real()
        store.upsert_agent(agent("b"))  # lands while the reader holds the old rows
        return rows

    monkeypatch.setattr(store, "list_agents", read_then_write)
    assert [a.id for a in store.roster(max_age=60)] == ["a"]
    assert store.cached_roster(max_age=60) is None
    monkeypatch.setattr(store, "list_agents", real)
    assert [a.id for a in store.roster(max_age=60)] == ["a", "b"]
