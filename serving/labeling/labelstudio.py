"""Label Studio interchange: our pool as Label Studio tasks (labels as annotations, the
model's suggestions as predictions, our provenance in ``meta.caretriage``) and Label Studio
JSON exports read back as items and annotations, problems reported per task. Pure functions."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import quoteattr

from serving.labeling.formats import Row, iso_utc

# --------------------------------------------------------------------------- Label Studio


@dataclass(slots=True)
class ImportedAnnotation:
    """One evaluator's labels from a Label Studio annotation."""

    evaluator: str
    labels: dict[str, str]
    labeled_at: str | None = None
    lead_time: float | None = None
    ground_truth: bool = False
    kind: str = "label"  # "resolve" for a lead's verdict, when our meta survived the trip


@dataclass(slots=True)
class ImportedItem:
    """A Label Studio task: its text, our ids when it came from us, annotations, prediction."""

    index: int
    text: str
    item_id: int | None = None
    external_id: str | None = None
    channel: str | None = None
    annotations: list[ImportedAnnotation] = field(default_factory=list)
    suggestion: dict[str, dict[str, Any]] | None = None
    model_version: str | None = None


@dataclass(frozen=True, slots=True)
class TaskError:
    """A problem with the Label Studio task at ``index`` (0-based) that was skipped or trimmed.

    Not named ``ImportError``: shadowing the builtin would break ``except ImportError``."""

    index: int
    message: str


# Row fields Label Studio has no place for, kept in the task's meta beside the annotations.
_META_ROW = (
    "evaluator",
    "role",
    "kind",
    "status",
    "final",
    "changed",
    "model_version",
    "suggestion",
)


def _choice(task: str, label: str, score: float | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {
        "id": task,
        "from_name": task,
        "to_name": "text",
        "type": "choices",
        "value": {"choices": [label]},
    }
    if score is not None:
        result["score"] = float(score)
    return result


def to_label_studio(rows: Iterable[Row], items: Iterable[Row]) -> list[dict[str, Any]]:
    """Label Studio tasks, one per item (``items`` first, then items only seen in ``rows``).

    Each label row becomes an annotation (``completed_by`` {"email": evaluator}, the final row
    marked ``ground_truth``), the model's suggestion a prediction, and everything Label Studio
    has no field for goes to ``meta.caretriage`` (``rows`` parallel to ``annotations``).
    """
    info: dict[int, Row] = {int(i["item_id"]): i for i in items}
    by_item: dict[int, list[Row]] = {}
    for row in rows:
        by_item.setdefault(int(row["item_id"]), []).append(row)
        info.setdefault(int(row["item_id"]), row)
    tasks = []
    for item_id, item in info.items():
        item_rows = by_item.get(item_id, [])
        annotations = []
        for row in item_rows:
            ann: dict[str, Any] = {
                "result": [
                    _choice(t, str(v)) for t, v in sorted((row.get("labels") or {}).items())
                ],
                "completed_by": {"email": row["evaluator"]},
                "created_at": iso_utc(row["labeled_at"]),
                "updated_at": iso_utc(row["labeled_at"]),
                "was_cancelled": False,
                "ground_truth": bool(row.get("final")),
            }
            if row.get("duration_ms") is not None:
                ann["lead_time"] = row["duration_ms"] / 1000
            annotations.append(ann)
        task: dict[str, Any] = {
            "data": {"text": item["text"], "item_id": item_id, "channel": item.get("channel")},
            "annotations": annotations,
            "predictions": [],
            "meta": {
                "caretriage": {
                    **{k: item.get(k) for k in ("text_key", "author", "source", "model_version")},
                    "suggestion": item.get("suggestion"),
                    "rows": [
                        {k: row.get(k) for k in _META_ROW}
                        | {"labeled_at": iso_utc(row["labeled_at"])}
                        for row in item_rows
                    ],
                }
            },
        }
        suggestion = item.get("suggestion")
        if suggestion:
            s = {t: v for t, v in sorted(suggestion.items()) if v}
            prediction: dict[str, Any] = {
                "result": [_choice(t, v["label"], v.get("confidence")) for t, v in s.items()],
                # LS sorts by score: the least confident task says how unsure the model is.
                "score": min((float(v.get("confidence") or 0.0) for v in s.values()), default=0),
            }
            if item.get("model_version"):
                prediction["model_version"] = item["model_version"]
            task["predictions"].append(prediction)
        tasks.append(task)
    return tasks


def _evaluator(completed_by: Any) -> str | None:
    """Who made an annotation: an email, ``ls-user-<id>`` for a bare user id, else None."""
    if isinstance(completed_by, dict):
        email = completed_by.get("email")
        ok = isinstance(email, str) and email.strip()
        return email.strip() if ok else _evaluator(completed_by.get("id"))
    if isinstance(completed_by, int) and not isinstance(completed_by, bool):
        return f"ls-user-{completed_by}"
    if isinstance(completed_by, str) and completed_by.strip():
        return completed_by.strip()
    return None


def _kind(meta_rows: list[Any], annotations: list[Any], j: int, evaluator: str) -> str:
    """The row kind our meta recorded for annotation ``j``, if the meta still lines up."""
    m = meta_rows[j] if len(meta_rows) == len(annotations) else None
    if isinstance(m, dict) and m.get("evaluator") == evaluator and m.get("kind") == "resolve":
        return "resolve"
    return "label"


def _task_text(data: Mapping[str, Any]) -> str | None:
    if isinstance(data.get("text"), str):
        return data["text"]
    strings = [v for v in data.values() if isinstance(v, str)]
    return strings[0] if len(strings) == 1 else None


def _results(
    results: Any,
    tasks: Sequence[str],
    unknown: dict[str, list[int]],
    index: int,
    errors: list[TaskError],
) -> dict[str, tuple[str, float | None]]:
    """task -> (label, score) from a list of LS results; problems go to errors/unknown."""
    out: dict[str, tuple[str, float | None]] = {}
    for res in results if isinstance(results, list) else []:
        name = res.get("from_name") if isinstance(res, dict) else None
        if not isinstance(name, str):
            errors.append(TaskError(index, "a result without from_name was ignored"))
        elif name not in tasks:
            unknown.setdefault(name, []).append(index)
        elif res.get("type") != "choices":
            errors.append(TaskError(index, f"{name!r}: type {res.get('type')!r} is not choices"))
        else:
            choices = (res.get("value") or {}).get("choices")
            if not (
                isinstance(choices, list) and len(choices) == 1 and isinstance(choices[0], str)
            ):
                errors.append(TaskError(index, f"{name!r}: expected one choice, got {choices!r}"))
            else:
                score = res.get("score")
                out[name] = (choices[0], float(score) if isinstance(score, int | float) else None)
    return out


def from_label_studio(
    data: Any, tasks: Sequence[str]
) -> tuple[list[ImportedItem], list[TaskError]]:
    """Parse a Label Studio JSON export (a list of tasks); problems are reported, not raised.

    Text is ``data["text"]`` or the only string in ``data``. Choices are mapped by ``from_name``
    to our task names; unknown from_names are reported once each. Cancelled (skipped)
    annotations are ignored; ``completions`` (Label Studio < 1.0) are read like annotations.
    """
    if not isinstance(data, list):
        return [], [TaskError(0, "a Label Studio export is a JSON list of tasks")]
    items: list[ImportedItem] = []
    errors: list[TaskError] = []
    unknown: dict[str, list[int]] = {}
    for i, task in enumerate(data):
        d = task.get("data") if isinstance(task, dict) else None
        if not isinstance(d, dict):
            errors.append(TaskError(i, "not a task: expected an object with a 'data' object"))
            continue
        text = _task_text(d)
        if not text or not text.strip():
            errors.append(TaskError(i, "no text: 'data' has no 'text' and not one string"))
            continue
        meta = task.get("meta") if isinstance(task.get("meta"), dict) else {}
        meta = meta.get("caretriage") if isinstance(meta.get("caretriage"), dict) else {}
        item_id = d.get("item_id", meta.get("item_id"))
        item = ImportedItem(
            index=i,
            text=text,
            item_id=item_id if isinstance(item_id, int) and not isinstance(item_id, bool) else None,
            external_id=None if task.get("id") is None else str(task["id"]),
            channel=d.get("channel") if isinstance(d.get("channel"), str) else None,
        )
        annotations = task.get("annotations") or task.get("completions") or []
        meta_rows = meta.get("rows") if isinstance(meta.get("rows"), list) else []
        for j, ann in enumerate(annotations):
            if not isinstance(ann, dict) or ann.get("was_cancelled"):
                continue
            evaluator = _evaluator(ann.get("completed_by"))
            if evaluator is None:
                errors.append(TaskError(i, f"annotation {j}: no usable completed_by; skipped"))
                continue
            labels = _results(ann.get("result"), tasks, unknown, i, errors)
            if not labels:
                errors.append(TaskError(i, f"annotation {j} by {evaluator}: no labels; skipped"))
                continue
            stamp, labeled_at = ann.get("created_at") or ann.get("updated_at"), None
            try:
                labeled_at = iso_utc(stamp) if isinstance(stamp, str) else None
            except ValueError:
                errors.append(TaskError(i, f"annotation {j}: bad created_at {stamp!r}"))
            lead = ann.get("lead_time")
            item.annotations.append(
                ImportedAnnotation(
                    evaluator=evaluator,
                    labels={t: label for t, (label, _) in labels.items()},
                    labeled_at=labeled_at,
                    lead_time=float(lead) if isinstance(lead, int | float) else None,
                    ground_truth=bool(ann.get("ground_truth")),
                    kind=_kind(meta_rows, annotations, j, evaluator),
                )
            )
        for pred in task.get("predictions") or []:
            got = (
                _results(pred.get("result"), tasks, unknown, i, errors)
                if isinstance(pred, dict)
                else {}
            )
            if got:
                score = pred.get("score")
                fallback = float(score) if isinstance(score, int | float) else None
                item.suggestion = {
                    t: {"label": label, "confidence": fallback if s is None else s}
                    for t, (label, s) in got.items()
                }
                mv = pred.get("model_version")
                item.model_version = mv if isinstance(mv, str) else None
                break
        items.append(item)
    for name, where in unknown.items():
        errors.append(
            TaskError(
                where[0],
                f"unknown from_name {name!r} in {len(where)} "
                f"result(s) ignored; tasks are {list(tasks)}",
            )
        )
    errors.sort(key=lambda e: e.index)
    return items, errors


def label_studio_config(schema_tasks: Mapping[str, Sequence[str]]) -> str:
    """A Label Studio labeling config (XML) with one single-choice block per task."""
    if "text" in schema_tasks:
        raise ValueError("a task named 'text' would clash with the Text tag of the config")
    parts = ["<View>", '  <Text name="text" value="$text"/>']
    for task, labels in schema_tasks.items():
        parts.append(f"  <Header value={quoteattr(task)}/>")
        parts.append(
            f'  <Choices name={quoteattr(task)} toName="text" choice="single" showInline="true">'
        )
        parts += [f"    <Choice value={quoteattr(label)}/>" for label in labels]
        parts.append("  </Choices>")
    parts.append("</View>")
    return "\n".join(parts) + "\n"
