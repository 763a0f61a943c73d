"""Priority quality metrics (serving/evaluation/ranking.py): NDCG of known orders against
hand-computed values, gold grades from each data set's columns, precision of levels, the
orders compared, and the report's arithmetic on a tiny hand-checked corpus."""

from __future__ import annotations

import math

import pytest

from serving.evaluation.ranking import (
    Gold,
    airline_gold,
    arrival_order,
    complaints_gold,
    dcg_at_k,
    evaluate,
    head_precision,
    level_precision,
    ndcg_at_k,
    precision,
    priority_order,
    random_order,
    ranked,
    recall,
)

L3 = 1 / math.log2(3)  # the discount at rank 2
L5 = 1 / math.log2(5)  # at rank 4


@pytest.mark.parametrize(
    ("gains", "k", "expected"),
    [
        ([2, 1, 0], 3, 1.0),  # already ideal
        ([0, 1, 2], 3, (L3 + 1) / (2 + L3)),  # reversed: 0.6199
        ([1, 2, 0], 2, (1 + 2 * L3) / (2 + L3)),  # 0.8597
        ([0, 2, 1], 1, 0.0),  # the head holds nothing relevant
        ([0, 1, 0, 1], 4, (L3 + L5) / (1 + L3)),  # binary gains: 0.6509
        ([0, 1], 5, L3 / 1.0),  # k beyond the list: every item counts
        ([0, 0, 0], 2, 1.0),  # nothing relevant: no order can do better
        ([1, 1, 0, 2], 2, (1 + L3) / (2 + L3)),  # the ideal is drawn from the whole list
    ],
)
def test_ndcg_of_known_orders(gains: list[int], k: int, expected: float) -> None:
    assert ndcg_at_k(gains, k) == pytest.approx(expected, abs=1e-12)


def test_ndcg_agrees_with_scikit_learn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    gains = [2, 0, 1, 2, 0, 0, 1, 2, 1, 0]
    # scikit-learn ranks by score: give the items scores that put them in list order.
    scores = [len(gains) - i for i in range(len(gains))]
    for k in (1, 3, 5, 10):
        want = metrics.ndcg_score([gains], [scores], k=k)
        assert ndcg_at_k(gains, k) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize(
    ("gains", "k", "expected"),
    [([3], 1, 3.0), ([2, 2], 2, 2 + 2 * L3), ([0, 0, 1], 3, 0.5), ([1, 5], 1, 1.0)],
)
def test_dcg(gains: list[int], k: int, expected: float) -> None:
    assert dcg_at_k(gains, k) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: dcg_at_k([1], 0), "k must be >= 1"),
        (lambda: ndcg_at_k([1, -1], 2), "gains must be >= 0"),
        (lambda: ranked([1, 2], [0, 0]), "permutation"),
        (lambda: precision([True], [True, False]), "1 selections for 2 items"),
        (lambda: priority_order([1, 2], [0]), "1 arrival places for 2 scores"),
    ],
)
def test_bad_inputs_raise(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize(
    ("sentiment", "reason", "actionable", "negative", "grade"),
    [
        ("negative", "Lost Luggage", True, True, 2),
        ("negative", "Customer Service Issue", True, True, 2),
        ("negative", "Can't Tell", False, True, 1),  # angry, but about nothing to act on
        ("negative", "", False, True, 1),
        ("neutral", "", False, False, 0),
        ("positive", "", False, False, 0),
        (" Negative ", " Late Flight ", True, True, 2),  # stray whitespace and case
    ],
)
def test_airline_gold(sentiment: str, reason: str, actionable: bool, negative: bool, grade: int):
    gold = airline_gold(sentiment, reason)
    assert (gold.actionable, gold.negative, gold.grade) == (actionable, negative, grade)


@pytest.mark.parametrize(
    ("complaint", "domain", "kind", "grade"),
    [
        (1, "airline", None, 2),  # a complaint: actionable and negative
        ("1", "random_tweet", None, 2),  # the complaint flag wins, whatever the domain
        (0, "telecom", "request", 1),  # a question to the brand: actionable, not negative
        (0, "telecom", "none", 0),  # thanks, chatter
        (0, "random_reply", "request", 0),  # not addressed to a brand
        (0, "apparel", None, 0),  # unannotated: not counted as actionable
    ],
)
def test_complaints_gold(complaint: int | str, domain: str, kind: str | None, grade: int):
    assert complaints_gold(complaint, domain, kind).grade == grade


def test_priority_order_breaks_ties_by_arrival() -> None:
    scores = [50, 70, 50, 70, 10]
    arrival = [4, 3, 0, 2, 1]  # item 2 arrived first
    assert priority_order(scores, arrival) == [3, 1, 2, 0, 4]
    assert priority_order(scores) == [1, 3, 0, 2, 4]  # default: input order


def test_arrival_order_and_random_order() -> None:
    assert arrival_order([3.0, 1.0, 2.0, 1.0]) == [1, 3, 2, 0]
    a, b = random_order(50, seed=7), random_order(50, seed=7)
    assert a == b and sorted(a) == list(range(50))
    assert a != random_order(50, seed=8)


@pytest.mark.parametrize(
    ("selected", "relevant", "p", "r"),
    [
        ([True, True, False, False], [True, False, True, False], 0.5, 0.5),
        ([True, False, False], [True, True, True], 1.0, 1 / 3),
        ([False, False], [True, False], None, 0.0),  # nothing selected
        ([True, False], [False, False], 0.0, None),  # nothing relevant
    ],
)
def test_precision_and_recall(selected, relevant, p, r) -> None:
    assert precision(selected, relevant) == p
    assert recall(selected, relevant) == (pytest.approx(r) if r is not None else None)


def _corpus() -> list[Gold]:
    both, angry, ask, neither = (
        Gold(True, True),
        Gold(False, True),
        Gold(True, False),
        Gold(False, False),
    )
    return [neither, both, ask, angry, neither, both]


def test_level_precision() -> None:
    gold = _corpus()
    levels = ["P4", "P1", "P2", "P2", "P3", "P3"]
    got = level_precision(levels, gold)
    assert got["P1"] == {
        "posts": 1,
        "precision_actionable": 1.0,
        "precision_negative": 1.0,
        "precision_both": 1.0,
        "recall_both": 0.5,
    }
    assert got["P2"]["posts"] == 2
    assert got["P2"]["precision_actionable"] == 0.5  # the request; the angry post is not
    assert got["P2"]["precision_negative"] == 0.5
    assert got["P2"]["precision_both"] == 0.0
    assert got["P1+P2"]["posts"] == 3
    assert got["P1+P2"]["precision_negative"] == pytest.approx(2 / 3)
    assert got["P1+P2"]["recall_both"] == 0.5


def test_head_precision() -> None:
    gold = _corpus()
    got = head_precision([5, 0, 1, 2, 3, 4], gold, 2)  # items 5 (both) and 0 (neither)
    assert got == {"precision_actionable": 0.5, "precision_negative": 0.5, "precision_both": 0.5}


def test_evaluate_compares_the_orders() -> None:
    gold = _corpus()  # grades 0, 2, 1, 1, 0, 2
    scores = [5, 90, 60, 55, 20, 80]  # the priority puts both grade-2 posts first
    levels = ["P4", "P1", "P2", "P2", "P4", "P1"]
    arrival = [0, 1, 2, 3, 4, 5]
    got = evaluate(scores, levels, arrival, gold, k=3, random_rounds=20, seed=1)
    pri, arr = got["orders"]["priority"], got["orders"]["arrival"]
    assert pri["ndcg@3"] == pytest.approx(1.0)
    # Arrival: grades 0, 2, 1 in the first three; ideal 2, 2, 1.
    assert arr["ndcg@3"] == pytest.approx((2 * L3 + 0.5) / (2 + 2 * L3 + 0.5))
    assert pri["ndcg"] > arr["ndcg"]
    assert pri["head"]["precision_both"] == pytest.approx(2 / 4)  # head of 4 = P1+P2 posts
    rnd = got["orders"]["random"]
    assert 0 < rnd["ndcg@3"]["mean"] < 1 and rnd["ndcg@3"]["sd"] > 0
    assert rnd["head"]["precision_negative"] == pytest.approx(0.5, abs=0.15)  # base rate 3/6
    assert got["gold"] == {"grade_2": 2, "grade_1": 2, "grade_0": 2, "actionable": 3, "negative": 3}
    assert got["level_counts"] == {"P1": 2, "P2": 2, "P3": 0, "P4": 2}
    # Seeded: the same call gives the same random baseline.
    again = evaluate(scores, levels, arrival, gold, k=3, random_rounds=20, seed=1)
    assert again["orders"]["random"] == rnd


def test_evaluate_arrival_may_be_timestamps_out_of_input_order() -> None:
    gold = [Gold(False, False), Gold(True, True)]
    # Equal scores: the earlier post (the second, by its timestamp) comes first.
    got = evaluate([50, 50], ["P2", "P2"], [20.0, 10.0], gold, k=1, random_rounds=1)
    assert got["orders"]["priority"]["ndcg@1"] == 1.0
    assert got["orders"]["arrival"]["ndcg@1"] == 1.0


def test_evaluate_refuses_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="one entry per post"):
        evaluate([1], ["P1", "P2"], [0, 1], [Gold(True, True)] * 2)
    with pytest.raises(ValueError, match="random_rounds"):
        evaluate([1], ["P1"], [0], [Gold(True, True)], random_rounds=0)
