"""Export files, Label Studio interchange and item uploads (formats, labelstudio, uploads)."""

from __future__ import annotations

import copy
import json
import sys
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from serving.labeling.formats import (
    export_columns,
    flatten_row,
    read_export,
    write_jsonl,
    write_parquet,
)
from serving.labeling.labelstudio import from_label_studio, label_studio_config, to_label_studio
from serving.labeling.uploads import MAX_ROWS, RowError, UploadRow, parse_upload

TASKS = ("actionability", "sentiment", "topic")


def _row(item_id: int, evaluator: str, labels: dict[str, str], **over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "item_id": item_id,
        "text": f"post {item_id}: my bag never arrived 😡\nline two\u2028sep",
        "text_key": f"k{item_id}",
        "channel": "twitter",
        "author": {"handle": "@kim", "followers": 25000, "verified": True},
        "source": "upload",
        "labels": labels,
        "evaluator": evaluator,
        "role": "evaluator",
        "labeled_at": "2024-03-05T14:00:00Z",
        "model_version": "minilm-1",
        "suggestion": {
            "topic": {"label": "lost_luggage", "confidence": 0.91},
            "sentiment": {"label": "negative", "confidence": 0.5},
        },
        "changed": [],
        "status": "single",
        "final": False,
        "kind": "label",
    }
    row.update(over)
    return row


@pytest.fixture
def rows() -> list[dict[str, Any]]:
    return [
        _row(1, "ana", {"topic": "lost_luggage", "sentiment": "negative"}, final=True),
        _row(
            2,
            "ana",
            {"topic": "late_flight", "sentiment": "neutral"},
            changed=["topic", "sentiment"],
            status="disagreed",
            labeled_at="2024-03-05T14:01:30.250000Z",
        ),
        _row(
            2,
            "bo",
            {"topic": "lost_luggage", "sentiment": "neutral"},
            changed=["sentiment"],
            status="disagreed",
            labeled_at=datetime(2024, 3, 5, 16, 2, tzinfo=timezone(timedelta(hours=2))),
        ),
        _row(
            2,
            "lead",
            {"topic": "late_flight", "sentiment": "neutral"},
            role="lead",
            kind="resolve",
            status="resolved",
            final=True,
            labeled_at="2024-03-05T14:10:00Z",
        ),
        _row(
            3,
            "bo",
            {"topic": "bad_flight"},
            channel=None,
            author=None,
            suggestion=None,
            model_version=None,
            status="pending",
        ),
    ]


def _expected(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows as read back: timestamps as ISO-8601 UTC strings."""
    out = copy.deepcopy(rows)
    out[2]["labeled_at"] = "2024-03-05T14:02:00Z"
    return out


# --------------------------------------------------------------------------- export files


def test_flat_row_has_the_documented_columns_in_order(rows: list[dict[str, Any]]) -> None:
    flat = flatten_row(rows[1], TASKS)
    assert list(flat) == export_columns(TASKS)
    assert export_columns(["topic"]) == [
        "item_id", "text", "text_key", "channel", "author_json", "source", "labels_json",
        "label_topic", "evaluator", "role", "labeled_at", "model_version", "suggestion_json",
        "suggested_topic", "confidence_topic", "changed", "status", "final", "kind",
    ]  # fmt: skip
    assert flat["label_topic"] == "late_flight" and flat["label_actionability"] is None
    assert flat["suggested_topic"] == "lost_luggage" and flat["confidence_topic"] == 0.91
    assert flat["suggested_actionability"] is None and flat["confidence_actionability"] is None
    assert json.loads(flat["labels_json"]) == rows[1]["labels"]
    assert json.loads(flat["suggestion_json"]) == rows[1]["suggestion"]
    assert json.loads(flat["author_json"]) == rows[1]["author"]
    assert flat["labeled_at"] == "2024-03-05T14:01:30.250000Z"
    assert flatten_row(rows[2], TASKS)["labeled_at"] == "2024-03-05T14:02:00Z"  # +02:00 -> UTC


@pytest.mark.parametrize("writer", [write_jsonl, write_parquet], ids=["jsonl", "parquet"])
def test_export_round_trips_through_read_export(
    tmp_path: Path, rows: list[dict[str, Any]], writer: Any
) -> None:
    path = tmp_path / ("labels.jsonl" if writer is write_jsonl else "labels.parquet")
    assert writer(rows, path, tasks=TASKS) == len(rows)
    assert read_export(path) == _expected(rows)


def test_task_columns_cover_tasks_given_and_found(tmp_path: Path, rows: list[dict[str, Any]]):
    write_jsonl(rows, tmp_path / "a.jsonl", tasks=["zeta"])
    first = json.loads((tmp_path / "a.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert list(first) == export_columns(["sentiment", "topic", "zeta"])


def test_datasets_loads_jsonl_and_parquet_identically(
    tmp_path: Path, rows: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    write_jsonl(rows, tmp_path / "labels.jsonl", tasks=TASKS)
    write_parquet(rows, tmp_path / "labels.parquet", tasks=TASKS)
    cache = str(tmp_path / "hf-cache")
    from_json = datasets.load_dataset(
        "json", data_files=str(tmp_path / "labels.jsonl"), split="train", cache_dir=cache
    )
    from_parquet = datasets.load_dataset(
        "parquet", data_files=str(tmp_path / "labels.parquet"), split="train", cache_dir=cache
    )
    assert from_json.column_names == from_parquet.column_names == export_columns(TASKS)
    assert from_json.to_list() == from_parquet.to_list()
    assert from_parquet.to_list() == [flatten_row(r, TASKS) for r in rows]
    assert from_parquet.features["confidence_topic"].dtype == "float64"
    assert from_parquet.features["final"].dtype == "bool"
    assert [r["label_topic"] for r in from_parquet.to_list()] == [
        "lost_luggage", "late_flight", "lost_luggage", "late_flight", "bad_flight"
    ]  # fmt: skip
    assert [r for r in from_parquet if r["final"]] == [
        flatten_row(rows[0], TASKS),
        flatten_row(rows[3], TASKS),
    ]


def test_parquet_without_pyarrow_names_the_extra(
    tmp_path: Path, rows: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow -> ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(RuntimeError, match=r"pip install caretriage\[parquet\]"):
        write_parquet(rows, tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists()


def test_export_refuses_a_row_missing_a_contract_field(rows: list[dict[str, Any]]) -> None:
    del rows[0]["evaluator"]
    with pytest.raises(KeyError, match="evaluator"):
        flatten_row(rows[0], TASKS)


# --------------------------------------------------------------------------- Label Studio


def _items() -> list[dict[str, Any]]:
    unlabeled = {
        "item_id": 9,
        "text": "is my flight on time?",
        "channel": "chat",
        "author": None,
        "source": "traffic",
        "model_version": "minilm-2",
        "suggestion": {"topic": {"label": "late_flight", "confidence": 0.42}},
    }
    return [unlabeled]


def test_label_studio_round_trip_keeps_every_label(rows: list[dict[str, Any]]) -> None:
    tasks = json.loads(json.dumps(to_label_studio(rows, _items())))
    items, errors = from_label_studio(tasks, list(TASKS))
    assert errors == []
    by_id = {it.item_id: it for it in items}
    assert sorted(by_id) == [1, 2, 3, 9]
    for row in _expected(rows):
        item = by_id[row["item_id"]]
        assert item.text == row["text"]
        got = [
            (a.evaluator, a.labels, a.labeled_at, a.ground_truth, a.kind)
            for a in item.annotations
            if a.evaluator == row["evaluator"] and a.labeled_at == row["labeled_at"]
        ]
        want = (row["evaluator"], row["labels"], row["labeled_at"], row["final"], row["kind"])
        assert got == [want]
    assert sum(len(it.annotations) for it in items) == len(rows)
    assert by_id[9].annotations == []
    assert by_id[9].suggestion == {"topic": {"label": "late_flight", "confidence": 0.42}}
    assert by_id[9].model_version == "minilm-2"
    assert by_id[1].suggestion == rows[0]["suggestion"]
    assert by_id[3].suggestion is None and by_id[3].channel is None


def test_resolve_kind_needs_meta_that_lines_up(rows: list[dict[str, Any]]) -> None:
    (task,) = [t for t in to_label_studio(rows, []) if t["data"]["item_id"] == 2]

    def kinds(t: dict[str, Any]) -> list[str]:
        return [a.kind for a in from_label_studio([t], list(TASKS))[0][0].annotations]

    assert kinds(task) == ["label", "label", "resolve"]
    task["meta"]["caretriage"]["rows"].pop(0)  # meta no longer parallel: trust nothing
    assert kinds(task) == ["label", "label", "label"]
    del task["meta"]
    assert kinds(task) == ["label", "label", "label"]


def test_label_studio_tasks_follow_the_ls_format(rows: list[dict[str, Any]]) -> None:
    tasks = to_label_studio(rows, _items())
    assert [t["data"]["item_id"] for t in tasks] == [9, 1, 2, 3]  # items first, then rows'
    task = tasks[2]
    assert task["data"]["text"] == rows[1]["text"]
    ann = task["annotations"][0]
    assert ann["completed_by"] == {"email": "ana"}
    assert ann["created_at"] == "2024-03-05T14:01:30.250000Z"
    assert ann["was_cancelled"] is False
    assert {r["from_name"]: r["value"]["choices"] for r in ann["result"]} == {
        "sentiment": ["neutral"],
        "topic": ["late_flight"],
    }
    assert {(r["to_name"], r["type"]) for r in ann["result"]} == {("text", "choices")}
    assert [a["ground_truth"] for a in task["annotations"]] == [False, False, True]
    (pred,) = task["predictions"]
    assert pred["model_version"] == "minilm-1"
    assert pred["score"] == 0.5  # the least confident task
    assert {r["from_name"]: (r["value"]["choices"][0], r["score"]) for r in pred["result"]} == {
        "sentiment": ("negative", 0.5),
        "topic": ("lost_luggage", 0.91),
    }
    meta = task["meta"]["caretriage"]
    assert [(m["evaluator"], m["role"], m["kind"], m["status"]) for m in meta["rows"]] == [
        ("ana", "evaluator", "label", "disagreed"),
        ("bo", "evaluator", "label", "disagreed"),
        ("lead", "lead", "resolve", "resolved"),
    ]
    assert meta["rows"][0]["changed"] == ["topic", "sentiment"]
    assert meta["author"] == rows[1]["author"] and meta["text_key"] == "k2"
    assert tasks[3]["predictions"] == []


LS_EXPORT: list[Any] = [
    {  # 0: as Label Studio exports it: completed_by a user id, a cancelled annotation
        "id": 101,
        "data": {"text": "where is my bag"},
        "annotations": [
            {
                "id": 1,
                "completed_by": 7,
                "was_cancelled": False,
                "created_at": "2021-03-09T22:16:08.728353Z",
                "lead_time": 4.288,
                "result": [
                    {"from_name": "topic", "to_name": "text", "type": "choices",
                     "value": {"choices": ["lost_luggage"]}},
                    {"from_name": "mood", "to_name": "text", "type": "choices",
                     "value": {"choices": ["angry"]}},
                ],
            },
            {"id": 2, "completed_by": 8, "was_cancelled": True, "result": []},
        ],
        "predictions": [
            {"model_version": "m1", "score": 0.7,
             "result": [{"from_name": "topic", "to_name": "text", "type": "choices",
                         "value": {"choices": ["late_flight"]}}]},
        ],
    },
    {  # 1: text is the only string of data; completed_by a dict and a plain email
        "id": 102,
        "data": {"tweet": "late again", "n": 3},
        "annotations": [
            {"completed_by": {"id": 3, "email": "kim@example.com"},
             "created_at": "2021-03-10T08:00:00+01:00",
             "result": [{"from_name": "sentiment", "type": "choices",
                         "value": {"choices": ["negative"]}}]},
            {"completed_by": "lee@example.com",
             "result": [{"from_name": "mood", "type": "choices", "value": {"choices": ["x"]}}]},
        ],
    },
    {"id": 103, "data": {"a": "one", "b": "two"}},  # 2: no text: two strings, no 'text'
    "not a task",  # 3
    {  # 4: two choices for a single-choice task, and no completed_by
        "data": {"text": "meh"},
        "annotations": [
            {"completed_by": 1, "result": [{"from_name": "topic", "type": "choices",
                                            "value": {"choices": ["a", "b"]}}]},
            {"result": [{"from_name": "topic", "type": "choices", "value": {"choices": ["a"]}}]},
        ],
    },
]  # fmt: skip


def test_from_label_studio_parses_a_real_export_and_reports_problems() -> None:
    items, errors = from_label_studio(LS_EXPORT, ["topic", "sentiment"])
    assert [it.index for it in items] == [0, 1, 4]
    first, second, third = items
    assert (first.text, first.external_id, first.item_id) == ("where is my bag", "101", None)
    (ann,) = first.annotations  # the cancelled one is ignored
    assert (ann.evaluator, ann.labels, ann.lead_time) == (
        "ls-user-7",
        {"topic": "lost_luggage"},
        4.288,
    )
    assert ann.labeled_at == "2021-03-09T22:16:08.728353Z" and ann.kind == "label"
    assert first.suggestion == {"topic": {"label": "late_flight", "confidence": 0.7}}
    assert first.model_version == "m1"
    assert second.text == "late again"
    assert [(a.evaluator, a.labels, a.labeled_at) for a in second.annotations] == [
        ("kim@example.com", {"sentiment": "negative"}, "2021-03-10T07:00:00Z")
    ]
    assert third.annotations == []
    messages = [(e.index, e.message) for e in errors]
    unknown = [m for m in messages if "unknown from_name 'mood'" in m[1]]
    assert len(unknown) == 1 and unknown[0][0] == 0 and "2 result(s)" in unknown[0][1]
    assert any(i == 1 and "by lee@example.com: no labels" in m for i, m in messages)
    assert any(i == 2 and "no text" in m for i, m in messages)
    assert any(i == 3 and "not a task" in m for i, m in messages)
    assert any(i == 4 and "expected one choice" in m for i, m in messages)
    assert any(i == 4 and "completed_by" in m for i, m in messages)
    assert [e.index for e in errors] == sorted(e.index for e in errors)


@pytest.mark.parametrize("data", [{"data": {"text": "x"}}, None, "[]"])
def test_from_label_studio_wants_a_list(data: Any) -> None:
    items, errors = from_label_studio(data, ["topic"])
    assert items == [] and len(errors) == 1 and "list of tasks" in errors[0].message


def test_label_studio_config_is_valid_xml_with_every_label() -> None:
    schema = {"topic": ["late_flight", 'a "quoted" & <odd> label'], "sentiment": ["neg", "pos"]}
    root = ET.fromstring(label_studio_config(schema))
    assert root.tag == "View"
    (text,) = root.findall("Text")
    assert (text.get("name"), text.get("value")) == ("text", "$text")
    choices = root.findall("Choices")
    assert [(c.get("name"), c.get("toName"), c.get("choice")) for c in choices] == [
        ("topic", "text", "single"),
        ("sentiment", "text", "single"),
    ]
    got = {c.get("name"): [x.get("value") for x in c.findall("Choice")] for c in choices}
    assert got == schema


def test_label_studio_config_refuses_a_task_named_text() -> None:
    with pytest.raises(ValueError, match="clash"):
        label_studio_config({"text": ["a"]})


# --------------------------------------------------------------------------- uploads


def _up(text: str, filename: str | None = None, ctype: str | None = None, **kw: Any):
    return parse_upload(text.encode("utf-8"), filename, ctype, **kw)


def test_csv_upload_reads_known_columns_and_reports_unknown_once() -> None:
    data = (
        "id,Text,channel,author,handle,created_at,mood,extra\n"
        '42, hello there ,Twitter,"{""handle"": ""@kim"", ""followers"": 5}",,'
        "2024-03-05T14:00:00+01:00,x,y\n"
        "43,second,,,@lee,,x,y\n"
    )
    rows, errors = _up(data, "posts.csv")
    assert rows == [
        UploadRow("hello there", "42", "twitter", {"handle": "@kim", "followers": 5},
                  "2024-03-05T13:00:00Z", 2),
        UploadRow("second", "43", None, {"handle": "@lee"}, None, 3),
    ]  # fmt: skip
    assert errors == [RowError(1, "ignored columns: mood, extra", warning=True)]


def test_csv_quoted_newlines_report_the_line_where_the_record_starts() -> None:
    data = (
        "text,id\n"  # 1
        '"first\nspans\nthree lines",1\n'  # 2-4
        '"",2\n'  # 5: empty text
        '"bad and\nlong ' + "x" * 5000 + '",3\n'  # 6-7: too long
        "\n"  # 8: blank
        "ok,4\n"  # 9
        '"ab"c,5\n'  # 10: malformed quoting
        "fine,6\n"  # 11
        '"never closed,7\nmore\n'  # 12-13
    )
    rows, errors = _up(data, "x.csv")
    assert [(r.text, r.line) for r in rows] == [
        ("first\nspans\nthree lines", 2),
        ("ok", 9),
        ("fine", 11),
    ]
    assert [e.line for e in errors] == [5, 6, 10, 12]
    assert "empty 'text'" in errors[0].message
    assert "5013 characters" in errors[1].message
    assert errors[2].message.startswith("malformed CSV")
    assert errors[3].message.startswith("malformed CSV")


@pytest.mark.parametrize(
    ("data", "line", "needle"),
    [
        ("id,body\n1,hi\n", 1, "'text' column"),
        ("\n\nid;text\n1;hi\n", 3, "use commas"),
        ("hello world\nsecond\n", 1, "'text' column"),
    ],
)
def test_csv_without_a_text_header_is_refused(data: str, line: int, needle: str) -> None:
    rows, errors = _up(data, "x.csv")
    assert rows == [] and len(errors) == 1
    assert errors[0].line == line and needle in errors[0].message


@pytest.mark.parametrize(
    ("record", "needle"),
    [
        ("x" * 5001, "5001 characters"),
        ('"a\x00b"', "NUL"),
        ("hi,too,many", "3 fields but 2 columns"),
        ("hi,,extra_handle", "3 fields but 2 columns"),
        ("   ", None),  # a blank record is skipped silently
    ],
)
def test_csv_bad_rows(record: str, needle: str | None) -> None:
    rows, errors = _up(f"text,id\nok,1\n{record}\n", "x.csv")
    assert [r.text for r in rows] == ["ok"]
    if needle is None:
        assert errors == []
    else:
        assert [e.line for e in errors] == [3] and needle in errors[0].message


def test_csv_text_of_exactly_the_limit_is_kept_and_fewer_fields_are_fine() -> None:
    rows, errors = _up("id,text,channel\n1," + "y" * 5000 + "\n", "x.csv")
    assert errors == [] and len(rows[0].text) == 5000 and rows[0].channel is None


def test_jsonl_upload_keeps_good_lines_and_reports_bad_ones_by_physical_line() -> None:
    lines = [
        '{"text": "one", "id": 7, "channel": "email", "author": {"handle": "@a"}}',  # 1
        "",  # 2
        '{"text": "two\u2028still two", "created_at": "2024-03-05T14:00:00", "x": 1}',  # 3
        "{not json",  # 4
        '["text"]',  # 5
        '{"id": 9}',  # 6
        '{"text": 5}',  # 7
        '{"text": "ok", "author": 3}',  # 8
        '{"text": "ok", "created_at": "yesterday"}',  # 9
        '{"text": "ok", "created_at": 1700000000}',  # 10
        '{"text": "three", "handle": "@h", "x": 2, "y": 3}\r',  # 11
    ]
    rows, errors = _up("\n".join(lines) + "\n", "posts.jsonl")
    assert rows == [
        UploadRow("one", "7", "email", {"handle": "@a"}, None, 1),
        UploadRow("two\u2028still two", None, None, None, "2024-03-05T14:00:00Z", 3),
        UploadRow("three", None, None, {"handle": "@h"}, None, 11),
    ]
    assert [(e.line, e.warning) for e in errors] == [
        (3, True), (4, False), (5, False), (6, False), (7, False), (8, False), (9, False),
        (10, False), (11, True),
    ]  # fmt: skip
    messages = [e.message for e in errors]
    assert messages[0] == "ignored fields: x" and messages[-1] == "ignored fields: y"
    assert messages[1].startswith("invalid JSON")
    assert "expected a JSON object, got list" in messages[2]
    assert "empty 'text'" in messages[3] and "must be a string" in messages[4]
    assert "'author'" in messages[5] and "'created_at'" in messages[6]
    assert "'created_at'" in messages[7]


@pytest.mark.parametrize(
    ("data", "filename", "ctype", "expected"),
    [
        ('{"text": "a"}\n', None, None, "a"),  # sniffed: '{' means JSONL
        ('  \n{"text": "a"}\n', None, "application/octet-stream", "a"),
        ("text\na\n", None, None, "a"),  # sniffed: CSV
        ("text\na\n", None, "text/csv; charset=utf-8", "a"),
        ('{"text": "a"}\n', None, "application/x-ndjson", "a"),
        ('{"text": "a"}\n', "X.NDJSON", "text/csv", "a"),  # the file name wins
        ('{"text": "a"}\n', "a.json-lines", None, "a"),
        ("text\na\n", "a.csv", "application/x-ndjson", "a"),
        ('{"text": "a"}\n', "a.csv", None, None),  # read as CSV: no 'text' header
    ],
)
def test_format_detection(
    data: str, filename: str | None, ctype: str | None, expected: str | None
) -> None:
    rows, errors = _up(data, filename, ctype)
    assert [r.text for r in rows] == ([] if expected is None else [expected])
    assert bool(errors) == (expected is None)


def test_utf8_bom_is_accepted_and_other_encodings_are_refused_with_a_line() -> None:
    rows, errors = parse_upload("\ufefftext\ncafé\n".encode(), "a.csv", None)
    assert errors == [] and rows[0].text == "café"
    rows, errors = parse_upload("text\nok\ncaf\xe9\n".encode("latin-1"), "a.csv", None)
    assert rows == [] and [e.line for e in errors] == [3] and "UTF-8" in errors[0].message


@pytest.mark.parametrize(
    ("data", "line", "needle"),
    [
        ("", 0, "no rows"),
        ("text\n", 0, "no rows"),
        ("\n\n", 0, "no rows"),
        ('\n[{"text": "a"}]', 2, "JSON array"),
    ],
)
def test_files_without_rows(data: str, line: int, needle: str) -> None:
    rows, errors = _up(data)
    assert rows == [] and len(errors) == 1
    assert errors[0].line == line and needle in errors[0].message


def test_row_limit_at_the_default_reports_the_rest_without_crashing() -> None:
    data = "text\n" + "x\n" * (MAX_ROWS + 5)
    rows, errors = _up(data, "big.csv")
    assert len(rows) == MAX_ROWS and rows[-1].line == MAX_ROWS + 1
    assert [e.line for e in errors] == [MAX_ROWS + 2]
    assert f"more than {MAX_ROWS} rows" in errors[0].message


def test_row_limit_counts_bad_jsonl_rows_too() -> None:
    data = '{"text": "a"}\nnope\n\n{"text": "b"}\n{"text": "c"}\n'
    rows, errors = _up(data, "a.jsonl", max_rows=2)
    assert [r.text for r in rows] == ["a"]
    assert [e.line for e in errors] == [2, 4] and "more than 2 rows" in errors[1].message


def test_a_flood_of_errors_is_summarized() -> None:
    rows, errors = _up("nope\n" * 1500, "a.jsonl")
    assert rows == [] and len(errors) == 1001
    assert errors[-1] == RowError(1001, "500 more errors")


def test_labeled_at_accepts_aware_datetimes(tmp_path: Path, rows: list[dict[str, Any]]) -> None:
    rows[0]["labeled_at"] = datetime(2024, 3, 5, 14, 0, 0, 1, tzinfo=UTC)
    write_jsonl(rows[:1], tmp_path / "a.jsonl")
    assert read_export(tmp_path / "a.jsonl")[0]["labeled_at"] == "2024-03-05T14:00:00.000001Z"
