"""The error-analysis helpers of training/evaluate.py, on hand-made probabilities."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.evaluate import (
    coverage_curve,
    errors_table,
    expected_calibration_error,
    group_errors,
    probs_to_logits,
    softmax,
)

LABELS = ["complaint", "request", "none"]
# Four posts: right (0.9), wrong (0.8), right (0.6), wrong (0.5).
PROBS = np.array(
    [
        [0.9, 0.05, 0.05],
        [0.1, 0.8, 0.1],
        [0.2, 0.2, 0.6],
        [0.5, 0.3, 0.2],
    ]
)
GOLD = [0, 0, 2, 2]


@pytest.mark.parametrize("temperature", [1.0, 1.7])
def test_probs_to_logits_round_trips_through_softmax(temperature: float) -> None:
    z = probs_to_logits(PROBS, temperature)
    np.testing.assert_allclose(softmax(z, temperature), PROBS, atol=1e-9)
    assert (z.argmax(-1) == PROBS.argmax(-1)).all()


def test_expected_calibration_error() -> None:
    # Each post in its own bin: |accuracy - confidence| = .05, .85, .35, .55 -> mean .45.
    probs = np.array([[0.95, 0.05], [0.15, 0.85], [0.65, 0.35], [0.45, 0.55]])
    assert expected_calibration_error(probs, [0, 0, 0, 0]) == pytest.approx(45.0)
    perfect = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert expected_calibration_error(perfect, [0, 1]) == 0.0


def test_coverage_curve_trades_coverage_for_accuracy() -> None:
    rows = coverage_curve(PROBS, GOLD, thresholds=[0.0, 0.55, 0.7, 0.85, 0.95])
    assert [r["coverage"] for r in rows] == [100.0, 75.0, 50.0, 25.0, 0.0]
    assert [r["n"] for r in rows] == [4, 3, 2, 1, 0]
    assert [r["accuracy"] for r in rows[:4]] == [50.0, pytest.approx(66.67), 50.0, 100.0]
    assert math.isnan(rows[-1]["accuracy"])
    assert len(coverage_curve(PROBS, GOLD)) == 20  # default grid 0.00 .. 0.95


def test_errors_table_most_confident_first() -> None:
    rows = errors_table(["a", "b", "c", "d"], GOLD, PROBS, LABELS, k=5, domains=list("wxyz"))
    assert [r["text"] for r in rows] == ["b", "d"]
    assert rows[0] == {
        "text": "b",
        "gold": "complaint",
        "predicted": "request",
        "confidence": 0.8,
        "p_gold": 0.1,
        "domain": "x",
    }
    assert len(errors_table(["a", "b", "c", "d"], GOLD, PROBS, LABELS, k=1)) == 1
    assert "domain" not in errors_table(["a", "b", "c", "d"], GOLD, PROBS, LABELS)[0]


def test_group_errors_flags_actionable_like_serving() -> None:
    groups = ["retail", "retail", "random_tweet", "random_tweet"]
    found = group_errors(groups, GOLD, PROBS, LABELS, ["complaint", "request"])
    rows = {r["group"]: r for r in found}
    assert list(rows) == ["random_tweet", "retail"]
    retail, rnd = rows["retail"], rows["random_tweet"]
    # retail: both gold complaints, both flagged (0.95 and 0.9 actionable), one wrong label.
    assert retail == {
        "group": "retail",
        "n": 2,
        "accuracy": 50.0,
        "gold_positive": 100.0,
        "flagged_positive": 100.0,
        "false_positive": 0.0,
        "missed_positive": 0.0,
    }
    # random: both gold none; the last post has 0.8 actionable -> one false positive.
    assert rnd["flagged_positive"] == 50.0 and rnd["false_positive"] == 50.0
    assert rnd["missed_positive"] == 0.0
