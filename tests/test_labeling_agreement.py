"""Agreement and throughput statistics of the labeling workspace (serving/labeling/agreement.py)."""

from __future__ import annotations

import json
import math
import random
import warnings
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from serving.labeling.agreement import (
    cohen_kappa,
    krippendorff_alpha,
    label_counts,
    labels_per_hour,
    pairwise_kappa,
    suggestion_change_rate,
    summary,
)

T0 = datetime(2024, 3, 5, 9, 0, tzinfo=UTC)


def rec(
    item: int,
    evaluator: str,
    minute: float = 0,
    suggestion: dict[str, Any] | None = None,
    kind: str = "label",
    **labels: str,
) -> dict[str, Any]:
    return {
        "item_id": item,
        "evaluator": evaluator,
        "labels": labels,
        "suggestion": suggestion,
        "labeled_at": T0 + timedelta(minutes=minute),
        "kind": kind,
    }


def from_matrix(matrix: list[list[Any]], task: str = "topic") -> list[dict[str, Any]]:
    """Records from an evaluators x items table (NaN/None = not rated)."""
    out = []
    for e, row in enumerate(matrix):
        for i, value in enumerate(row):
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                out.append(rec(i, f"ev{e}", minute=i, **{task: str(value)}))
    return out


# --------------------------------------------------------------------------- cohen_kappa


@pytest.mark.parametrize("seed", range(25))
def test_cohen_kappa_matches_sklearn_on_random_data(seed: int) -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = random.Random(seed)
    cats = ["a", "b", "c", "d"][: rng.randint(2, 4)]
    n = rng.randint(2, 60)
    a = [rng.choice(cats) for _ in range(n)]
    # Correlated second rater so kappa spans negative to high values.
    b = [x if rng.random() < seed / 25 else rng.choice(cats) for x in a]
    with warnings.catch_warnings():  # sklearn warns (and returns NaN) when kappa is undefined
        warnings.simplefilter("ignore")
        expected = sklearn_metrics.cohen_kappa_score(a, b)
    got = cohen_kappa(a, b)
    if math.isnan(expected):
        assert got is None
    else:
        assert got == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (["x", "x", "x"], ["x", "x", "x"], None),  # one identical category: undefined, not 1.0
        ([], [], None),
        (["x", "y"], ["x", "y"], 1.0),
        (["x", "y"], ["y", "x"], -1.0),
        (["x", "x"], ["y", "y"], 0.0),  # each rater constant but different: no agreement
    ],
)
def test_cohen_kappa_edge_cases(a: list[str], b: list[str], expected: float | None) -> None:
    assert cohen_kappa(a, b) == expected


def test_cohen_kappa_single_category_is_nan_in_sklearn_and_none_here() -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert math.isnan(sklearn_metrics.cohen_kappa_score(["x"] * 4, ["x"] * 4))
    assert cohen_kappa(["x"] * 4, ["x"] * 4) is None


def test_cohen_kappa_refuses_unequal_lengths() -> None:
    with pytest.raises(ValueError, match="same items"):
        cohen_kappa(["a"], ["a", "b"])


# --------------------------------------------------------------------------- pairwise kappa


def test_pairwise_kappa_per_pair_over_common_items() -> None:
    records = [
        rec(1, "ana", topic="late"),
        rec(1, "bo", topic="late"),
        rec(2, "ana", topic="lost"),
        rec(2, "bo", topic="late"),
        rec(2, "cy", topic="lost"),
        rec(3, "bo", topic="lost"),
        rec(3, "cy", topic="lost"),
        rec(4, "dee", sentiment="neutral"),  # other task only: not a rater of topic
    ]
    got = pairwise_kappa(records, "topic")
    assert [(p["a"], p["b"], p["items"]) for p in got] == [
        ("ana", "bo", 2),
        ("ana", "cy", 1),
        ("bo", "cy", 2),
    ]
    assert got[0]["kappa"] == pytest.approx(cohen_kappa(["late", "lost"], ["late", "late"]))
    assert got[1]["kappa"] is None  # one item, same label: undefined
    assert got[2]["kappa"] == pytest.approx(cohen_kappa(["late", "lost"], ["lost", "lost"]))


def test_latest_label_wins_and_resolutions_and_retractions_do_not_count() -> None:
    records = [
        rec(1, "ana", minute=0, topic="late"),
        rec(1, "ana", minute=5, topic="lost"),  # ana changed her mind
        rec(1, "bo", minute=1, topic="lost"),
        rec(2, "ana", minute=2, topic="late"),
        rec(2, "bo", minute=3, topic="late"),
        rec(1, "lead", minute=9, kind="resolve", topic="late"),
        {**rec(2, "cy", minute=4, topic="lost"), "retracted_at": T0},
    ]
    assert pairwise_kappa(records, "topic") == [{"a": "ana", "b": "bo", "items": 2, "kappa": 1.0}]


# --------------------------------------------------------------------------- krippendorff alpha

# Krippendorff (2011), "Computing Krippendorff's alpha-reliability", the 4 observers x 12 units
# example with missing values; the nominal alpha is 0.743 (also in the krippendorff package docs).
NAN = float("nan")
KRIPPENDORFF_2011 = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, NAN, NAN, NAN],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, NAN, 3],
    [NAN, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, NAN],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, NAN],
]
# The krippendorff package's own docstring example: nominal alpha 0.691358.
PACKAGE_DOC = [
    [NAN, NAN, NAN, NAN, NAN, 3, 4, 1, 2, 1, 1, 3, 3, NAN, 3],
    [1, NAN, 2, 1, 3, 3, 4, 3, NAN, NAN, NAN, NAN, NAN, NAN, NAN],
    [NAN, NAN, 2, 1, 3, 4, 4, NAN, 2, 1, 1, 3, 3, NAN, 4],
]


@pytest.mark.parametrize(
    ("matrix", "expected"),
    [(KRIPPENDORFF_2011, 0.743), (PACKAGE_DOC, 0.691358)],
    ids=["krippendorff-2011", "package-docstring"],
)
def test_alpha_matches_published_examples(matrix: list[list[float]], expected: float) -> None:
    records = from_matrix([[None if math.isnan(v) else f"c{int(v)}" for v in r] for r in matrix])
    assert krippendorff_alpha(records, "topic") == pytest.approx(expected, abs=5e-4)


@pytest.mark.parametrize(
    ("matrix", "expected"),
    [
        ([["a", "b", "c"], ["a", "b", "c"]], 1.0),  # perfect agreement
        ([["a", "a", "a"], ["a", "a", "a"]], None),  # one category: undefined
        ([["a", None], [None, "b"]], None),  # no item has two labels
        ([], None),
    ],
)
def test_alpha_edge_cases(matrix: list[list[Any]], expected: float | None) -> None:
    assert krippendorff_alpha(from_matrix(matrix), "topic") == expected


def test_alpha_ignores_items_with_a_single_label() -> None:
    base = from_matrix([["a", "b", "a", "b"], ["a", "b", "b", "b"]])
    lonely = [rec(99, "ev0", topic="c"), rec(100, "ev5", topic="a")]
    assert krippendorff_alpha(base + lonely, "topic") == pytest.approx(
        krippendorff_alpha(base, "topic")
    )


def test_alpha_is_below_one_when_raters_disagree() -> None:
    records = from_matrix([["a", "b", "a", "b", "a"], ["a", "b", "b", "b", "a"]])
    alpha = krippendorff_alpha(records, "topic")
    assert alpha is not None and 0 < alpha < 1


# --------------------------------------------------------------------------- counts and rates


def test_label_counts() -> None:
    records = [
        rec(1, "ana", topic="late", sentiment="negative"),
        rec(2, "ana", topic="late"),
        rec(3, "ana", topic="lost"),
        rec(1, "bo", topic="late"),
        {**rec(4, "bo", topic="lost"), "retracted_at": T0},
        {**rec(5, "bo"), "kind": "skip", "labels": None},
    ]
    assert label_counts(records) == {
        "ana": {"topic": {"late": 2, "lost": 1}, "sentiment": {"negative": 1}},
        "bo": {"topic": {"late": 1}},
    }


@pytest.mark.parametrize(
    ("minutes", "expected"),
    [
        ([0, 1, 2, 3], 60.0),  # one label a minute
        ([0, 1, 2, 62, 63], 30.0),  # an hour's lunch counts as 5 minutes
        ([0, 0.5], 120.0),
        ([0], None),  # a single label has no measurable time
        ([3, 3], None),  # nor do two at the same instant
    ],
)
def test_labels_per_hour_caps_idle_gaps(minutes: list[float], expected: float | None) -> None:
    records = [rec(i, "ana", minute=m, topic="late") for i, m in enumerate(minutes)]
    got = labels_per_hour(records).get("ana")
    assert got == (None if expected is None else pytest.approx(expected))


def test_labels_per_hour_accepts_iso_strings_in_any_order_and_zone() -> None:
    stamps = ["2024-03-05T10:02:00+01:00", "2024-03-05T09:00:00Z", "2024-03-05T09:01:00"]
    records = [
        {"item_id": i, "evaluator": "ana", "labels": {"topic": "x"}, "labeled_at": s}
        for i, s in enumerate(stamps)
    ]
    assert labels_per_hour(records) == {"ana": pytest.approx(60.0)}


def test_suggestion_change_rate() -> None:
    s = {"topic": {"label": "late", "confidence": 0.9}, "sentiment": None}
    records = [
        rec(1, "ana", suggestion=s, topic="late", sentiment="negative"),
        rec(2, "ana", suggestion=s, topic="lost"),
        rec(3, "bo", suggestion=s, topic="lost"),
        rec(4, "bo", suggestion=s, sentiment="neutral"),  # topic not labeled: not counted
        rec(5, "bo", suggestion=None, topic="late"),
        rec(6, "lead", suggestion=s, kind="resolve", topic="lost"),  # adjudication: excluded
    ]
    assert suggestion_change_rate(records) == {
        "topic": {"shown": 3, "changed": 2, "rate": pytest.approx(2 / 3)}
    }


# --------------------------------------------------------------------------- summary


def test_summary_bundles_everything_and_is_strict_json() -> None:
    s = {"topic": {"label": "late", "confidence": 0.8}}
    records = [
        rec(1, "ana", minute=0, suggestion=s, topic="late", sentiment="neutral"),
        rec(1, "bo", minute=1, suggestion=s, topic="lost", sentiment="neutral"),
        rec(2, "ana", minute=2, suggestion=s, topic="lost", sentiment="neutral"),
        rec(2, "bo", minute=3, suggestion=s, topic="lost", sentiment="neutral"),
        rec(3, "ana", minute=4, topic="late", sentiment="neutral"),
        rec(3, "lead", minute=5, kind="resolve", topic="late"),
    ]
    out = summary(records, ["topic", "sentiment", "actionability"])
    text = json.dumps(out, allow_nan=False)  # no NaN, no numpy scalars
    assert json.loads(text) == out
    assert out["records"] == 6 and out["items"] == 3
    assert out["evaluators"] == ["ana", "bo", "lead"]
    topic = out["tasks"]["topic"]
    assert (topic["items"], topic["items_multi"]) == (3, 2)
    assert topic["pairwise_kappa"] == pairwise_kappa(records, "topic")
    assert topic["krippendorff_alpha"] == krippendorff_alpha(records, "topic")
    assert topic["suggestion"] == {"shown": 4, "changed": 3, "rate": 0.75}
    sentiment = out["tasks"]["sentiment"]
    assert sentiment["krippendorff_alpha"] is None  # everyone said neutral
    assert sentiment["suggestion"] == {"shown": 0, "changed": 0, "rate": None}
    assert out["tasks"]["actionability"]["items"] == 0
    assert out["label_counts"]["lead"] == {"topic": {"late": 1}}
    assert out["labels_per_hour"]["ana"] == pytest.approx(30.0)


def test_krippendorff_alpha_uses_the_library() -> None:
    """Guard against a hand-written formula creeping in: the result equals the library's."""
    krippendorff = pytest.importorskip("krippendorff")
    rng = np.random.default_rng(7)
    matrix = rng.integers(0, 3, size=(4, 30)).astype(float)
    matrix[rng.random(matrix.shape) < 0.3] = np.nan
    records = from_matrix([[None if np.isnan(v) else int(v) for v in r] for r in matrix])
    kept = matrix[:, (~np.isnan(matrix)).sum(axis=0) >= 2]
    assert krippendorff_alpha(records, "topic") == pytest.approx(
        krippendorff.alpha(reliability_data=kept, level_of_measurement="nominal")
    )
