"""From the store to the files training reads, and from Label Studio into the store.

``export_rows`` gives one row per live label (``serving.labeling.formats`` documents the
columns): who gave it, when, what the model suggested, and the item's status: ``single``
(one label was wanted), ``agreed``, ``disagreed`` (waiting for a lead), ``resolved`` (a
lead decided) or ``pending`` (a second label is still wanted). Exactly one row of each
finished item is ``final``: the labels training should learn.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from serving.labeling import formats, labelstudio
from serving.labeling.store import LabelingStore, NewItem, text_key


def _status(item_rows: list[dict[str, Any]]) -> tuple[str, dict[str, Any] | None]:
    """The item's status and the row holding its final labels (None while undecided)."""
    resolves = [r for r in item_rows if r["kind"] == "resolve"]
    answers = [r for r in item_rows if r["kind"] == "label"]
    if resolves:
        return "resolved", resolves[-1]
    state = item_rows[0]["state"]
    if state == "done" and answers:
        return ("agreed" if len(answers) > 1 else "single"), answers[0]
    if state == "review":
        return "disagreed", None
    return "pending", None


def export_rows(ls: LabelingStore) -> list[dict[str, Any]]:
    """Every live label and lead resolution, oldest first, with provenance."""
    records = ls.records(kinds=("label", "resolve"))
    by_item: dict[int, list[dict[str, Any]]] = {}
    for r in records:
        by_item.setdefault(r["item_id"], []).append(r)
    out = []
    for r in records:
        status, final = _status(by_item[r["item_id"]])
        out.append(
            {
                "item_id": r["item_id"],
                "text": r["text"],
                "text_key": r["text_key"],
                "channel": r["channel"],
                "author": r["author"],
                "source": r["source"],
                "labels": r["labels"] or {},
                "evaluator": r["evaluator"],
                "role": r["role"],
                "labeled_at": r["labeled_at"],
                "model_version": r["model_version"],
                "suggestion": r["suggestion"],
                "changed": r["changed"] or [],
                "status": status,
                "final": final is not None and final["id"] == r["id"],
                "kind": r["kind"],
                "duration_ms": r["duration_ms"],
            }
        )
    return out


def export_items(ls: LabelingStore) -> list[dict[str, Any]]:
    """Every pooled item with the model's suggestion (Label Studio tasks for unlabeled
    items carry it as a prediction)."""
    return [
        {
            "item_id": i["id"],
            "text": i["text"],
            "text_key": i["text_key"],
            "channel": i["channel"],
            "author": i["author"],
            "source": i["source"],
            "model_version": i["model_version"],
            "suggestion": {
                t: {"label": s.get("label"), "confidence": s.get("confidence")}
                for t, s in (i["suggestion"] or {}).items()
            }
            or None,
        }
        for i in ls.all_items()
    ]


def export_tasks(ls: LabelingStore) -> list[dict[str, Any]]:
    """The pool as Label Studio tasks: labels as annotations, suggestions as predictions."""
    return labelstudio.to_label_studio(export_rows(ls), export_items(ls))


def write_export(ls: LabelingStore, path: str, fmt: str, tasks: Sequence[str]) -> int:
    """Write the export file; returns how many rows (or tasks) it holds."""
    if fmt == "jsonl":
        return formats.write_jsonl(export_rows(ls), path, tasks)
    if fmt == "parquet":
        return formats.write_parquet(export_rows(ls), path, tasks)
    if fmt == "label-studio":
        import json

        data = export_tasks(ls)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False, indent=1)
        return len(data)
    raise ValueError(f"unknown export format {fmt!r}: jsonl, parquet or label-studio")


@dataclass
class ImportReport:
    items_added: int = 0
    labels_added: int = 0
    labels_known: int = 0
    errors: list[str] = field(default_factory=list)


def import_label_studio(
    ls: LabelingStore,
    data: Any,
    tasks: Sequence[str],
    normalize: Callable[[str], str],
) -> ImportReport:
    """Bring a Label Studio JSON export in: each task's text becomes an item (or finds the
    pooled one with the same normalized text), each annotation a label by its annotator (an
    account is made for an unknown one, disabled until an admin sets a password), keeping the
    annotation's time. Importing the same file twice adds nothing the second time."""
    items, problems = labelstudio.from_label_studio(data, tasks)
    report = ImportReport(errors=[f"task {p.index}: {p.message}" for p in problems])
    for it in items:
        key = text_key(normalize(it.text))
        added = ls.add_items(
            [
                NewItem(
                    text=it.text,
                    text_key=key,
                    source="import",
                    external_id=it.external_id,
                    channel=it.channel,
                    model_version=it.model_version,
                    suggestion=it.suggestion,
                )
            ]
        )
        report.items_added += len(added.added)
        item_id = added.added[0] if added.added else ls.item_id_for(key)
        for ann in it.annotations:
            new = ls.import_answer(
                item_id,
                ann.evaluator,
                ann.labels,
                kind=getattr(ann, "kind", None) or "label",
                labeled_at=ann.labeled_at,
                duration_ms=None if ann.lead_time is None else round(ann.lead_time * 1000),
            )
            if new:
                report.labels_added += 1
            else:
                report.labels_known += 1
    return report
