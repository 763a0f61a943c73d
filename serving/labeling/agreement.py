"""Inter-annotator agreement and evaluator throughput over label records, for the stats page.

Pure functions of a list of label records (mappings with ``item_id``, ``evaluator``, ``labels``
{task: label}, ``suggestion`` {task: {"label", "confidence"}} or None, ``labeled_at`` as an aware
datetime or ISO-8601 string; a naive one is taken as UTC, since SQLite hands datetimes back
naive). No database, no clock: the same records always give the same numbers.

Which records count, and why:

* Records with a ``retracted_at`` are ignored everywhere: a retracted label was never given.
* Agreement (kappa, alpha) and the suggestion change rate use first-pass labels only (``kind``
  absent or ``"label"``): a lead's ``resolve`` verdict is adjudication, not an independent rating,
  and counting it would inflate agreement. When an evaluator labeled an item twice, the latest
  label counts. A record without a label for a task simply says nothing about that task.
* Counts and labels per hour include ``resolve`` records too: they are labels given and work done.

Undefined agreement is ``None``, never NaN or 1.0: when every rating falls in one category the
chance agreement is 1 and kappa and alpha are 0/0 (scikit-learn returns NaN, the krippendorff
library raises). "Everyone said 'neutral'" shows that raters did not disagree, not that they could
tell categories apart, so the stats page shows "n/a" rather than a perfect score.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import krippendorff
import numpy as np

Record = Mapping[str, Any]

# A gap longer than this between two labels is a break (lunch, a meeting), not labeling time.
IDLE_CAP = timedelta(minutes=5)


def _when(value: datetime | str) -> datetime:
    """An aware UTC datetime from a datetime or ISO string (naive means UTC)."""
    dt = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _live(records: Iterable[Record]) -> list[Record]:
    """Records that carry labels and were not retracted (skips and flags have no labels)."""
    return [r for r in records if r.get("labels") and not r.get("retracted_at")]


def _first_pass(records: Iterable[Record]) -> list[Record]:
    """Live evaluator labels, oldest first, without adjudications."""
    live = [r for r in _live(records) if r.get("kind", "label") == "label"]
    return sorted(live, key=lambda r: _when(r["labeled_at"]))


def _ratings(records: Iterable[Record], task: str) -> dict[int, dict[str, str]]:
    """item -> evaluator -> label on ``task``, the latest label winning."""
    out: dict[int, dict[str, str]] = defaultdict(dict)
    for r in _first_pass(records):
        label = r["labels"].get(task)
        if label is not None:
            out[int(r["item_id"])][str(r["evaluator"])] = str(label)
    return dict(out)


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float | None:
    """Cohen's kappa of two raters over the same items (nominal); None when undefined.

    Undefined means no items, or both raters used one and the same category (chance agreement
    is 1). Computed in integers, so the "single category" case is detected exactly.
    """
    if len(a) != len(b):
        raise ValueError(f"raters must label the same items: {len(a)} != {len(b)} labels")
    n = len(a)
    if n == 0:
        return None
    count_a, count_b = Counter(a), Counter(b)
    agree = sum(x == y for x, y in zip(a, b, strict=True))
    expected = sum(count_a[c] * count_b[c] for c in count_a)  # n^2 * p_e
    if expected == n * n:
        return None
    return (agree * n - expected) / (n * n - expected)


def pairwise_kappa(records: Iterable[Record], task: str) -> list[dict[str, Any]]:
    """Cohen's kappa for every evaluator pair sharing at least one item labeled on ``task``.

    Each entry is {"a", "b", "items", "kappa"} with ``a`` < ``b``; sorted by pair.
    """
    pairs: dict[tuple[str, str], tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    for _, by_evaluator in sorted(_ratings(records, task).items()):
        for a, b in itertools.combinations(sorted(by_evaluator), 2):
            pairs[a, b][0].append(by_evaluator[a])
            pairs[a, b][1].append(by_evaluator[b])
    return [
        {"a": a, "b": b, "items": len(la), "kappa": cohen_kappa(la, lb)}
        for (a, b), (la, lb) in sorted(pairs.items())
    ]


def krippendorff_alpha(records: Iterable[Record], task: str) -> float | None:
    """Nominal Krippendorff's alpha over the items with at least two labels on ``task``.

    Alpha, unlike pairwise kappa, uses every rater on every item and tolerates missing ratings,
    so it is the one number for the whole team. Computed by the ``krippendorff`` library on an
    evaluators x items matrix of integer label codes (NaN where an evaluator did not rate).
    None when no item has two labels or only one category occurs (see the module docstring).
    """
    ratings = {i: r for i, r in _ratings(records, task).items() if len(r) >= 2}
    evaluators = sorted({e for by_evaluator in ratings.values() for e in by_evaluator})
    codes = {
        label: k
        for k, label in enumerate(sorted({x for r in ratings.values() for x in r.values()}))
    }
    if len(codes) < 2:
        return None
    row = {e: k for k, e in enumerate(evaluators)}
    matrix = np.full((len(evaluators), len(ratings)), np.nan)
    for col, item in enumerate(sorted(ratings)):
        for evaluator, label in ratings[item].items():
            matrix[row[evaluator], col] = codes[label]
    value = float(krippendorff.alpha(reliability_data=matrix, level_of_measurement="nominal"))
    return value if math.isfinite(value) else None


def label_counts(records: Iterable[Record]) -> dict[str, dict[str, dict[str, int]]]:
    """evaluator -> task -> label -> count: shows one evaluator's bias towards a label."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for r in _live(records):
        tasks = out.setdefault(str(r["evaluator"]), {})
        for task, label in r["labels"].items():
            if label is not None:
                by_label = tasks.setdefault(task, {})
                by_label[str(label)] = by_label.get(str(label), 0) + 1
    return out


def labels_per_hour(records: Iterable[Record], cap: timedelta = IDLE_CAP) -> dict[str, float]:
    """evaluator -> labels per hour of active time.

    Active time is the sum of the gaps between an evaluator's consecutive labels, each gap capped
    at ``cap`` so that a lunch break does not count as labeling. Each gap is the time spent on
    the label that ends it, so n labels give n - 1 timed labels (the first one's start is
    unknown). Evaluators with fewer than two labels or no measurable time are left out: their
    rate would be infinite, not informative.
    """
    times: dict[str, list[datetime]] = defaultdict(list)
    for r in _live(records):
        times[str(r["evaluator"])].append(_when(r["labeled_at"]))
    out: dict[str, float] = {}
    for evaluator, stamps in sorted(times.items()):
        stamps.sort()
        active = sum(
            (min(b - a, cap) for a, b in itertools.pairwise(stamps)), start=timedelta()
        ).total_seconds()
        if active > 0:
            out[evaluator] = (len(stamps) - 1) * 3600 / active
    return out


def suggestion_change_rate(records: Iterable[Record]) -> dict[str, dict[str, Any]]:
    """task -> {"shown", "changed", "rate"}: how often evaluators overrode the model's suggestion.

    Counts first-pass labels whose suggestion has the task and that labeled it. A rate near 0 on
    tasks the model is weak at is a warning sign of anchoring on the suggestion.
    """
    shown: Counter[str] = Counter()
    changed: Counter[str] = Counter()
    for r in _first_pass(records):
        for task, suggested in (r.get("suggestion") or {}).items():
            label = r["labels"].get(task)
            if suggested and label is not None:
                shown[task] += 1
                changed[task] += label != suggested.get("label")
    return {
        task: {"shown": shown[task], "changed": changed[task], "rate": changed[task] / shown[task]}
        for task in sorted(shown)
    }


def summary(records: Iterable[Record], tasks: Sequence[str]) -> dict[str, Any]:
    """Everything the stats page shows, JSON-serializable (None where a number is undefined)."""
    records = list(records)
    first_pass = _first_pass(records)
    changes = suggestion_change_rate(first_pass)
    per_task: dict[str, Any] = {}
    for task in tasks:
        ratings = _ratings(first_pass, task)
        per_task[task] = {
            "items": len(ratings),
            "items_multi": sum(len(r) >= 2 for r in ratings.values()),
            "krippendorff_alpha": krippendorff_alpha(first_pass, task),
            "pairwise_kappa": pairwise_kappa(first_pass, task),
            "suggestion": changes.get(task, {"shown": 0, "changed": 0, "rate": None}),
        }
    live = _live(records)
    return {
        "records": len(live),
        "items": len({int(r["item_id"]) for r in live}),
        "evaluators": sorted({str(r["evaluator"]) for r in live}),
        "tasks": per_task,
        "label_counts": label_counts(live),
        "labels_per_hour": labels_per_hour(live),
    }
