"""Label export files, Label Studio interchange and item uploads: pure functions, no database.

Export layout (the contract training reads; identical in JSONL and Parquet, one row per label
given, so ``datasets.load_dataset("json"|"parquet", ...)`` yields the same table from either):

=============================  ==============  ===============================================
column                         type            what
=============================  ==============  ===============================================
item_id                        int64
text, text_key                 string
channel                        string | null
author_json                    string | null   the author dict as JSON
source                         string
labels_json                    string          {task: label} as JSON (the source of truth)
label_<task>                   string | null   one per task, flattened from ``labels``
evaluator, role                string
labeled_at                     string          ISO-8601 UTC, ``Z`` suffix
model_version                  string | null
suggestion_json                string | null   {task: {"label", "confidence"}} as JSON
suggested_<task>               string | null   one per task: the suggested label
confidence_<task>              float64 | null  one per task: its confidence
changed                        list<string>    tasks where the label differs from the suggestion
status, kind                   string
final                          bool            True on the row holding the item's final labels
=============================  ==============  ===============================================

Task columns are sorted by task name and exist for every task of ``tasks`` and every task found
in the rows, so a task nobody labeled yet still has its (null) column. Nested values are JSON
strings *and* flat columns: the flat ones are what training selects; the JSON ones round-trip
whatever a dict holds. ``read_export`` turns either file back into export rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

Row = Mapping[str, Any]


def iso_utc(value: datetime | str) -> str:
    """ISO-8601 UTC with a ``Z`` suffix (naive means UTC); ValueError when unparsable."""
    dt = value if isinstance(value, datetime) else datetime.fromisoformat(value.strip())
    dt = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    return dt.isoformat().replace("+00:00", "Z")


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)


# --------------------------------------------------------------------------- export files


def export_task_names(rows: Iterable[Row], tasks: Sequence[str] = ()) -> list[str]:
    """The sorted task names that get columns: ``tasks`` plus any task in the rows."""
    found = set(tasks)
    for row in rows:
        found.update(row.get("labels") or {})
        found.update(row.get("suggestion") or {})
    return sorted(found)


def export_columns(tasks: Sequence[str]) -> list[str]:
    """The file's columns in order, for the given (sorted) task names."""
    return [
        *("item_id", "text", "text_key", "channel", "author_json", "source", "labels_json"),
        *(f"label_{t}" for t in tasks),
        *("evaluator", "role", "labeled_at", "model_version", "suggestion_json"),
        *(c for t in tasks for c in (f"suggested_{t}", f"confidence_{t}")),
        *("changed", "status", "final", "kind"),
    ]


def flatten_row(row: Row, tasks: Sequence[str]) -> dict[str, Any]:
    """One export row as a flat file record (see the module docstring for the columns)."""
    labels = dict(row.get("labels") or {})
    suggestion = row.get("suggestion")
    flat: dict[str, Any] = {
        "item_id": int(row["item_id"]),
        "text": row["text"],
        "text_key": row["text_key"],
        "channel": row.get("channel"),
        "author_json": _dumps(row.get("author")),
        "source": row["source"],
        "labels_json": _dumps(labels),
    }
    flat.update({f"label_{t}": labels.get(t) for t in tasks})
    flat.update(
        evaluator=row["evaluator"],
        role=row["role"],
        labeled_at=iso_utc(row["labeled_at"]),
        model_version=row.get("model_version"),
        suggestion_json=_dumps(suggestion),
    )
    for t in tasks:
        s = (suggestion or {}).get(t) or {}
        flat[f"suggested_{t}"] = s.get("label")
        flat[f"confidence_{t}"] = None if s.get("confidence") is None else float(s["confidence"])
    flat.update(
        changed=list(row.get("changed") or []),
        status=row["status"],
        final=bool(row["final"]),
        kind=row["kind"],
    )
    return flat


def unflatten_row(flat: Mapping[str, Any]) -> dict[str, Any]:
    """A flat file record back to the export-row shape (from the JSON columns)."""
    return {
        "item_id": int(flat["item_id"]),
        "text": flat["text"],
        "text_key": flat["text_key"],
        "channel": flat.get("channel"),
        "author": json.loads(flat["author_json"]) if flat.get("author_json") else None,
        "source": flat["source"],
        "labels": json.loads(flat["labels_json"]),
        "evaluator": flat["evaluator"],
        "role": flat["role"],
        "labeled_at": flat["labeled_at"],
        "model_version": flat.get("model_version"),
        "suggestion": json.loads(flat["suggestion_json"]) if flat.get("suggestion_json") else None,
        "changed": list(flat.get("changed") or []),
        "status": flat["status"],
        "final": bool(flat["final"]),
        "kind": flat["kind"],
    }


def write_jsonl(rows: Iterable[Row], path: str | Path, tasks: Sequence[str] = ()) -> int:
    """Write export rows as JSON lines (UTF-8, non-ASCII unescaped); returns the row count."""
    rows = list(rows)
    cols = export_task_names(rows, tasks)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(jsonl_line(flatten_row(row, cols)))
    return len(rows)


def jsonl_line(flat: Mapping[str, Any]) -> str:
    """One flattened row as a JSON line."""
    line = json.dumps(flat, ensure_ascii=False)
    # U+2028/9 are line breaks to str.splitlines and many JSONL readers: escape them.
    return line.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029") + "\n"


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as e:  # the serving install does not need pyarrow
        raise RuntimeError("Parquet export needs pyarrow: pip install caretriage[parquet]") from e
    return pyarrow


def write_parquet(rows: Iterable[Row], path: str | Path, tasks: Sequence[str] = ()) -> int:
    """Write export rows as Parquet with an explicit schema (so all-null columns keep their
    type); returns the number of rows. RuntimeError when pyarrow is not installed."""
    pa = _pyarrow()
    rows = list(rows)
    cols = export_task_names(rows, tasks)
    types = {"item_id": pa.int64(), "final": pa.bool_(), "changed": pa.list_(pa.string())}
    types.update({f"confidence_{t}": pa.float64() for t in cols})
    schema = pa.schema([(n, types.get(n, pa.string())) for n in export_columns(cols)])
    flat = [flatten_row(row, cols) for row in rows]
    table = pa.Table.from_pylist(flat, schema=schema)
    pa.parquet.write_table(table, path)
    return len(rows)


def read_export(path: str | Path) -> list[dict[str, Any]]:
    """Rows of an export file (.jsonl/.json/.ndjson or .parquet), in the export-row shape."""
    path = Path(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        flat = _pyarrow().parquet.read_table(path).to_pylist()
    else:
        with open(path, encoding="utf-8") as f:
            flat = [json.loads(line) for line in f if line.strip()]
    return [unflatten_row(r) for r in flat]
