"""Label export files, Label Studio interchange and item uploads: pure functions, no database.

The export's column layout and its reader are the contract training reads, so they live in
``features.labels_export`` (training and serving never import each other) and are imported
here: ``export_task_names``, ``export_columns``, ``unflatten_row`` and ``read_export`` stay
importable from this module. This one writes the files (``flatten_row``, ``write_jsonl``,
``write_parquet``); see ``features.labels_export`` for the columns.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from features.labels_export import (
    Row,
    export_columns,
    export_task_names,
    read_export,
    unflatten_row,
)
from features.labels_export import pyarrow_module as _pyarrow

__all__ = [
    "Row",
    "export_columns",
    "export_task_names",
    "flatten_row",
    "iso_utc",
    "jsonl_line",
    "read_export",
    "unflatten_row",
    "write_jsonl",
    "write_parquet",
]


def iso_utc(value: datetime | str) -> str:
    """ISO-8601 UTC with a ``Z`` suffix (naive means UTC); ValueError when unparsable."""
    dt = value if isinstance(value, datetime) else datetime.fromisoformat(value.strip())
    dt = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    return dt.isoformat().replace("+00:00", "Z")


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)


# --------------------------------------------------------------------------- export files


def flatten_row(row: Row, tasks: Sequence[str]) -> dict[str, Any]:
    """One export row as a flat file record (``features.labels_export`` lists the columns)."""
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
