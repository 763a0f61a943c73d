"""The labeling store on SQLite and PostgreSQL: migrations, the pool, leases, labels, undo,
agreement and review, and the active-learning order."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import inspect

from serving.labeling.queue import refresh_priorities
from serving.labeling.store import (
    LabelingError,
    LabelingStore,
    NewItem,
    QueueConfig,
    text_key,
)
from serving.labeling.tables import items_table
from serving.schemas import Agent
from serving.store import Store, agents_table, metadata
from tests.conftest import PG_URL, migration_head


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request, tmp_path):
    """A factory of empty stores on one back end (a new schema per store on PostgreSQL)."""
    made: list[Store] = []

    def make() -> Store:
        if request.param == "sqlite":
            s = Store(f"sqlite:///{tmp_path / f'l{len(made)}.db'}")
        else:
            s = Store(PG_URL, schema=request.getfixturevalue("pg_schemas")())
        made.append(s)
        return s

    yield make
    for s in made:
        s.dispose()


def workspace(backend, **cfg) -> LabelingStore:
    store = backend()
    store.upgrade()
    return LabelingStore(store, QueueConfig(**{"audit_share": 0.0, "agreement_share": 0.0, **cfg}))


def items(*texts: str, uncertainty: float | None = None) -> list[NewItem]:
    return [
        NewItem(
            text=t,
            text_key=text_key(t),
            uncertainty=uncertainty if uncertainty is not None else i / 100,
            suggestion={"topic": {"label": "a", "confidence": 0.6}},
            model_version="m1",
        )
        for i, t in enumerate(texts)
    ]


def users(ws: LabelingStore, *names: str, role: str = "evaluator") -> list[int]:
    return [ws.add_user(n, role, "x").id for n in names]


# -- migrations -------------------------------------------------------------------------------


def test_upgrade_creates_every_table_and_is_idempotent(backend):
    store = backend()
    assert store.revision() is None
    assert store.upgrade() == store.upgrade() == migration_head()
    names = set(inspect(store.engine).get_table_names(schema=store.schema))
    assert {"agents", "users", "label_items", "label_leases", "labels"} <= names


def test_a_database_from_before_migrations_keeps_its_agents(backend):
    store = backend()
    with store.engine.begin() as conn:  # what create_all made before migrations existed
        agents_table.create(conn)
    store.upsert_agent(Agent(id="kept"))
    assert store.upgrade() == migration_head()
    assert [a.id for a in store.list_agents()] == ["kept"]


def test_migrations_match_the_tables_the_code_queries(backend):
    """Autogenerate finds nothing to do: the migrations and the table definitions agree."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    import serving.labeling.tables  # noqa: F401

    store = backend()
    store.upgrade()
    with store.engine.connect() as conn:
        if store.schema:
            conn.exec_driver_sql(f'SET search_path TO "{store.schema}"')
        ctx = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                "include_schemas": False,
                "version_table_schema": store.schema,
            },
        )
        diff = [d for d in compare_metadata(ctx, metadata) if "alembic_version" not in str(d)]
    assert diff == []


# -- the pool ---------------------------------------------------------------------------------


def test_same_normalized_text_is_one_item(backend):
    ws = workspace(backend)
    first = ws.add_items(items("My bag is lost", "my  BAG is lost", "thanks"))
    assert (len(first.added), first.duplicates) == (2, 1)
    again = ws.add_items(items("MY BAG IS LOST", "new one"))
    assert (len(again.added), again.duplicates) == (1, 1)
    assert ws.pool_counts()["total"] == 3


def test_shares_of_audit_and_agreement_items(backend):
    ws = workspace(backend, audit_share=0.2, agreement_share=0.3, seed=7)
    ws.add_items(items(*[f"post {i}" for i in range(1000)]))
    with ws.store.engine.connect() as conn:
        rows = conn.execute(items_table.select()).all()
    audit = np.mean([r.audit for r in rows])
    double = np.mean([r.needed == 2 for r in rows])
    assert 0.16 < audit < 0.24 and 0.26 < double < 0.34


def test_expired_traffic_is_purged_unless_labeled(backend):
    ws = workspace(backend)
    past = datetime.now(UTC) - timedelta(days=1)
    batch = items("old a", "old b", "fresh")
    batch[0].expires_at = batch[1].expires_at = past
    ws.add_items(batch)
    (u,) = users(ws, "eva")
    labeled = next(i for i in ws.unlabeled_items() if i["text"] == "old a")
    ws.submit(u, labeled["id"], kind="label", labels={"topic": "a"}, idempotency_key="k")
    assert ws.purge_expired() == 1
    assert sorted(i["text"] for i in ws.unlabeled_items()) == ["fresh"]


# -- leases -----------------------------------------------------------------------------------


def test_most_uncertain_first_and_held_items_come_back(backend):
    ws = workspace(backend)
    ws.add_items(items("low", "mid", "high"))
    (u,) = users(ws, "eva")
    got = ws.next_items(u, n=2)
    assert [i["text"] for i in got] == ["high", "mid"]
    assert [i["text"] for i in ws.next_items(u, n=2)] == ["high", "mid"]  # same lease, renewed


def test_a_single_label_item_is_never_held_by_two(backend):
    ws = workspace(backend)
    ws.add_items(items(*[f"p{i}" for i in range(40)]))
    ids = users(ws, *[f"e{i}" for i in range(8)])
    held: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def take(u: int) -> None:
        try:
            held[u] = [i["id"] for i in ws.next_items(u, n=4)]
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=take, args=(u,)) for u in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    flat = [i for v in held.values() for i in v]
    assert len(flat) == 32 and len(set(flat)) == 32


def test_agreement_items_go_to_two_different_evaluators(backend):
    ws = workspace(backend, agreement_share=1.0)
    ws.add_items(items("only"))
    a, b, c = users(ws, "a", "b", "c")
    assert len(ws.next_items(a, n=3)) == 1
    assert len(ws.next_items(b, n=3)) == 1
    assert ws.next_items(c, n=3) == []


def test_an_abandoned_lease_returns_the_item(backend):
    ws = workspace(backend, lease_seconds=60)
    ws.add_items(items("lonely"))
    a, b = users(ws, "a", "b")
    now = datetime.now(UTC)
    assert len(ws.next_items(a, now=now)) == 1
    assert ws.next_items(b, now=now + timedelta(seconds=30)) == []
    assert [i["text"] for i in ws.next_items(b, now=now + timedelta(seconds=61))] == ["lonely"]


# -- labels -----------------------------------------------------------------------------------


def test_a_retry_with_the_same_key_counts_once(backend):
    ws = workspace(backend)
    ws.add_items(items("x"))
    (u,) = users(ws, "eva")
    (item,) = ws.next_items(u, n=1)
    first = ws.submit(u, item["id"], kind="label", labels={"topic": "b"}, idempotency_key="k1")
    again = ws.submit(u, item["id"], kind="label", labels={"topic": "b"}, idempotency_key="k1")
    assert first["replay"] is False and again["replay"] is True and again["id"] == first["id"]
    (rec,) = ws.records()
    assert rec["changed"] == ["topic"] and rec["suggestion"]["topic"]["label"] == "a"
    assert ws.get_item(item["id"])["state"] == "done"
    with pytest.raises(LabelingError) as e:
        ws.submit(u, item["id"], kind="label", labels={"topic": "c"}, idempotency_key="k2")
    assert e.value.status == 409


def test_concurrent_retries_of_one_label_count_once(backend):
    ws = workspace(backend)
    ws.add_items(items("x"))
    (u,) = users(ws, "eva")
    (item,) = ws.next_items(u, n=1)
    out: list[dict] = []

    def send() -> None:
        out.append(
            ws.submit(u, item["id"], kind="label", labels={"topic": "a"}, idempotency_key="same")
        )

    threads = [threading.Thread(target=send) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 6 and len({o["id"] for o in out}) == 1
    assert len(ws.records()) == 1


@pytest.mark.parametrize(
    ("first", "second", "state"),
    [({"topic": "a"}, {"topic": "a"}, "done"), ({"topic": "a"}, {"topic": "b"}, "review")],
    ids=["agree", "disagree"],
)
def test_two_answers_agree_or_go_to_review(backend, first, second, state):
    ws = workspace(backend, agreement_share=1.0)
    ws.add_items(items("x"))
    a, b = users(ws, "a", "b")
    (item,) = ws.next_items(a)
    ws.next_items(b)
    assert ws.submit(a, item["id"], kind="label", labels=first, idempotency_key="1")["state"] == (
        "open"
    )
    assert ws.submit(b, item["id"], kind="label", labels=second, idempotency_key="1")["state"] == (
        state
    )


def test_flag_goes_to_review_and_a_lead_resolves(backend):
    ws = workspace(backend)
    ws.add_items(items("what is this"))
    eva, lead = users(ws, "eva", "lead")
    (item,) = ws.next_items(eva)
    ws.submit(eva, item["id"], kind="flag", note="sarcasm?", idempotency_key="f")
    (waiting,) = ws.review_queue()
    assert waiting["id"] == item["id"] and waiting["answers"][0]["note"] == "sarcasm?"
    res = ws.resolve(lead, item["id"], {"topic": "b"}, idempotency_key="r")
    assert res["state"] == "resolved" and ws.review_queue() == []
    with pytest.raises(LabelingError):
        ws.undo(eva)


def test_undo_hands_the_item_back_first(backend):
    ws = workspace(backend)
    ws.add_items(items("one", "two", "three"))
    (u,) = users(ws, "eva")
    first, second = ws.next_items(u, n=2)
    ws.submit(u, first["id"], kind="label", labels={"topic": "a"}, idempotency_key="1")
    assert ws.get_item(first["id"])["state"] == "done"
    undone = ws.undo(u)
    assert undone is not None and undone["item_id"] == first["id"]
    assert ws.get_item(first["id"])["state"] == "open"
    assert [i["id"] for i in ws.next_items(u, n=2)] == [first["id"], second["id"]]
    ws.submit(u, first["id"], kind="label", labels={"topic": "b"}, idempotency_key="2")
    (rec,) = ws.records()
    assert rec["labels"] == {"topic": "b"}
    assert ws.undo(u)["item_id"] == first["id"]


def test_skip_is_not_shown_again_to_the_same_evaluator(backend):
    ws = workspace(backend)
    ws.add_items(items("only"))
    a, b = users(ws, "a", "b")
    (item,) = ws.next_items(a)
    ws.submit(a, item["id"], kind="skip", idempotency_key="s")
    assert ws.next_items(a) == []
    assert [i["id"] for i in ws.next_items(b)] == [item["id"]]


def test_a_late_label_is_kept_as_an_extra_opinion(backend):
    ws = workspace(backend, lease_seconds=1)
    ws.add_items(items("x"))
    a, b = users(ws, "a", "b")
    now = datetime.now(UTC)
    (item,) = ws.next_items(a, now=now - timedelta(seconds=5))  # a's lease has run out
    ws.next_items(b)
    ws.submit(b, item["id"], kind="label", labels={"topic": "a"}, idempotency_key="1")
    ws.submit(a, item["id"], kind="label", labels={"topic": "b"}, idempotency_key="1")
    assert len(ws.records()) == 2
    assert ws.get_item(item["id"])["state"] == "review"


# -- active learning --------------------------------------------------------------------------


@pytest.mark.parametrize("diversify", ["kcenter", "kmeans"])
def test_refresh_puts_diverse_uncertain_items_first(backend, diversify):
    ws = workspace(backend)
    rng = np.random.default_rng(0)
    base = rng.normal(size=16)
    batch = []
    for i in range(6):  # six near-copies of one post, all very uncertain
        it = items(f"dup {i}", uncertainty=0.9)[0]
        it.embedding = base + 0.01 * rng.normal(size=16)
        batch.append(it)
    other = items("different", uncertainty=0.8)[0]
    other.embedding = rng.normal(size=16)
    ws.add_items([*batch, other])
    assert refresh_priorities(ws, head=2, diversity_weight=0.5, diversify=diversify) == 2
    (u,) = users(ws, "eva")
    got = [i["text"] for i in ws.next_items(u, n=2)]
    assert got[0].startswith("dup") and got[1] == "different"


def test_the_open_count_follows_this_process_writes_between_recounts(backend):
    ws = workspace(backend)
    ws.add_items(items("a", "b", "c"))
    assert ws.open_count(max_age=3600) == 3
    ws.add_items(items("d"))
    (u,) = users(ws, "eva")
    (item,) = ws.next_items(u, n=1)
    ws.submit(u, item["id"], kind="label", labels={"topic": "a"}, idempotency_key="k1")
    assert ws.open_count(max_age=3600) == 3  # +1 added, -1 labeled; no recount
    ws.undo(u)
    assert ws.open_count(max_age=3600) == 4
    ws.submit(u, item["id"], kind="skip", idempotency_key="k2")  # skipped items stay open
    assert ws.open_count(max_age=3600) == 4 == ws.pool_counts()["open"]
