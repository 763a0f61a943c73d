"""The labeling export's file layout and its reader: the contract between the labeling
workspace (``serving/labeling``, which writes the files) and training (which reads them).

It lives in ``features`` because both sides need it and neither may import the other: serving
writes with ``serving.labeling.formats`` (which imports the layout from here), training reads
with ``read_export``. Pure functions; nothing is read or imported at import time (pyarrow only
when a Parquet file is read).

Export layout (identical in JSONL and Parquet, one row per label given, so
``datasets.load_dataset("json"|"parquet", ...)`` yields the same table from either):

=============================  ==============  ===============================================
column                         type            what
=============================  ==============  ===============================================
item_id                        int64
text, text_key                 string          text_key: sha256 of the folded normalized text
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
strings *and* flat columns: the flat ones are what a table reader selects; the JSON ones
round-trip whatever a dict holds. ``read_export`` turns either file back into export rows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

Row = Mapping[str, Any]


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


def pyarrow_module() -> Any:
    """pyarrow with its Parquet module loaded, imported only when a Parquet file is handled:
    the serving install does not need it. RuntimeError naming the extra when it is absent."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as e:
        raise RuntimeError("Parquet export needs pyarrow: pip install caretriage[parquet]") from e
    return pyarrow


def read_export(path: str | Path) -> list[dict[str, Any]]:
    """Rows of an export file (.jsonl/.json/.ndjson or .parquet), in the export-row shape."""
    path = Path(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        flat = pyarrow_module().parquet.read_table(path).to_pylist()
    else:
        with open(path, encoding="utf-8") as f:
            flat = [json.loads(line) for line in f if line.strip()]
    return [unflatten_row(r) for r in flat]


def fold_text(normalized: str) -> str:
    """The pool's identity of a normalized post: case and spacing folded. Two posts that fold
    the same are one labeling item (``text_key`` is the sha256 of this), and training treats a
    base row folding the same as a human-labeled post as the same post."""
    return " ".join(normalized.casefold().split())


def text_key(normalized: str) -> str:
    """sha256 of ``fold_text(normalized)``: the export's ``text_key`` for a normalized post."""
    return hashlib.sha256(fold_text(normalized).encode("utf-8")).hexdigest()
