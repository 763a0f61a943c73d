"""Export and import on a real store: every label leaves with its provenance, loads with
``datasets``, and a Label Studio round trip into an empty store keeps every label."""

from __future__ import annotations

import json

import pytest

from features.text import normalize_text
from serving.labeling import formats
from serving.labeling.export import export_rows, export_tasks, import_label_studio, write_export
from serving.labeling.store import LabelingStore, NewItem, QueueConfig, text_key
from serving.store import Store

TASKS = ["actionability", "sentiment", "topic"]


def answer(topic: str, sentiment: str = "negative") -> dict[str, str]:
    return {"topic": topic, "sentiment": sentiment, "actionability": "actionable"}


def make(tmp_path, name: str, agreement: float = 0.0) -> LabelingStore:
    store = Store(f"sqlite:///{tmp_path / name}")
    store.upgrade()
    return LabelingStore(store, QueueConfig(audit_share=0.0, agreement_share=agreement))


@pytest.fixture
def labeled(tmp_path) -> LabelingStore:
    """Two single-labeled items, one agreed, one disagreed then resolved, one disagreed."""
    ws = make(tmp_path, "a.db")
    texts = ["bag lost", "thanks", "late again", "seat broken", "meh"]
    ws.add_items(
        [
            NewItem(
                text=t,
                text_key=text_key(normalize_text(t)),
                model_version="m1",
                suggestion={"topic": {"label": "lost_luggage", "confidence": 0.7}},
            )
            for t in texts
        ]
    )
    eva = ws.add_user("eva", "evaluator", "x").id
    bo = ws.add_user("bo", "evaluator", "x").id
    lead = ws.add_user("lee", "lead", "x").id
    ids = {i["text"]: i["id"] for i in ws.all_items()}
    with ws.store.engine.begin() as conn:  # three items want two labels
        from serving.labeling.tables import items_table as items

        conn.execute(
            items.update()
            .where(items.c.id.in_([ids["late again"], ids["seat broken"], ids["meh"]]))
            .values(needed=2)
        )
    for n, (text, who, labels) in enumerate(
        [
            ("bag lost", eva, answer("lost_luggage")),
            ("thanks", eva, answer("other", "positive")),
            ("late again", eva, answer("late_flight")),
            ("late again", bo, answer("late_flight")),
            ("seat broken", eva, answer("other")),
            ("seat broken", bo, answer("damaged_luggage")),
            ("meh", eva, answer("other")),
            ("meh", bo, answer("late_flight")),
        ]
    ):
        ws.submit(who, ids[text], kind="label", labels=labels, idempotency_key=f"k{n}")
    ws.resolve(lead, ids["seat broken"], answer("other"), idempotency_key="r1")
    return ws


def test_rows_carry_status_and_one_final_row_per_finished_item(labeled):
    rows = export_rows(labeled)
    assert len(rows) == 9
    by_text: dict[str, list[dict]] = {}
    for r in rows:
        by_text.setdefault(r["text"], []).append(r)
    status = {t: {r["status"] for r in rs} for t, rs in by_text.items()}
    assert status == {
        "bag lost": {"single"},
        "thanks": {"single"},
        "late again": {"agreed"},
        "seat broken": {"resolved"},
        "meh": {"disagreed"},
    }
    finals = {t: [r for r in rs if r["final"]] for t, rs in by_text.items()}
    assert [len(finals[t]) for t in ("bag lost", "thanks", "late again", "seat broken")] == [
        1,
        1,
        1,
        1,
    ]
    assert finals["meh"] == []
    assert finals["seat broken"][0]["kind"] == "resolve"
    assert finals["seat broken"][0]["evaluator"] == "lee"
    thanks = by_text["thanks"][0]
    assert thanks["changed"] == ["topic"] and thanks["model_version"] == "m1"
    assert thanks["suggestion"]["topic"]["label"] == "lost_luggage"


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_export_files_load_with_datasets(labeled, tmp_path, fmt, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from datasets import load_dataset

    path = tmp_path / f"labels.{fmt}"
    assert write_export(labeled, str(path), fmt, TASKS) == 9
    ds = load_dataset("json" if fmt == "jsonl" else "parquet", data_files=str(path))["train"]
    assert ds.num_rows == 9
    final = ds.filter(lambda r: r["final"])
    assert sorted(final["label_topic"]) == sorted(["lost_luggage", "other", "late_flight", "other"])
    assert set(ds["evaluator"]) == {"eva", "bo", "lee"}
    back = formats.read_export(path)
    assert [r["labels"] for r in back] == [r["labels"] for r in export_rows(labeled)]


def test_label_studio_round_trip_keeps_every_label(labeled, tmp_path):
    tasks = json.loads(json.dumps(export_tasks(labeled)))
    assert len(tasks) == 5
    fresh = make(tmp_path, "b.db")
    report = import_label_studio(fresh, tasks, TASKS, normalize_text)
    assert report.errors == []
    assert (report.items_added, report.labels_added) == (5, 9)

    def key(r: dict) -> tuple:
        return (r["text"], r["evaluator"], json.dumps(r["labels"], sort_keys=True), r["kind"])

    before = sorted(key(r) for r in export_rows(labeled))
    after = sorted(key(r) for r in export_rows(fresh))
    assert after == before
    times = {(r["text"], r["evaluator"]): r["labeled_at"] for r in export_rows(labeled)}
    for r in export_rows(fresh):
        assert abs((r["labeled_at"] - times[(r["text"], r["evaluator"])]).total_seconds()) < 1
    again = import_label_studio(fresh, tasks, TASKS, normalize_text)
    assert (again.items_added, again.labels_added, again.labels_known) == (0, 0, 9)


def test_unlabeled_items_leave_as_tasks_with_predictions(tmp_path):
    ws = make(tmp_path, "c.db")
    ws.add_items(
        [
            NewItem(
                text="where is my bag",
                text_key=text_key("where is my bag"),
                model_version="m2",
                suggestion={"topic": {"label": "lost_luggage", "confidence": 0.55}},
            )
        ]
    )
    (task,) = export_tasks(ws)
    assert task["annotations"] == []
    (pred,) = task["predictions"]
    assert pred["model_version"] == "m2"
    assert pred["result"][0]["value"]["choices"] == ["lost_luggage"]


def test_our_own_export_imported_back_adds_nothing(labeled):
    tasks = json.loads(json.dumps(export_tasks(labeled)))
    before = export_rows(labeled)
    report = import_label_studio(labeled, tasks, TASKS, normalize_text)
    assert (report.items_added, report.labels_added, report.labels_known) == (0, 0, 9)
    assert len(export_rows(labeled)) == len(before)
