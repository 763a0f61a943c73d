"""Priority quality against gold labels: does the priority order put the posts a care team must
act on, and the angry ones, first?

Gold is graded per post: 2 = actionable and negative, 1 = one of the two, 0 = neither (what
each data set's columns mean is in :func:`airline_gold` and :func:`complaints_gold`). An order
is judged by NDCG@k with linear gains (Järvelin & Kekäläinen; scikit-learn's ``ndcg_score``
computes the same), and the priority levels by their precision against gold actionability and
sentiment, beside the orders a helpdesk without triage uses: arrival time, and chance.

Pure functions over plain sequences: no model, no files (``benchmarks/priority_quality.py``
reads the data and scores it).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# The airline data's ``negativereason`` that names no concrete issue to act on.
AIRLINE_UNSPECIFIC_REASON = "Can't Tell"
RANDOM_DOMAINS = frozenset({"random_tweet", "random_reply"})


@dataclass(frozen=True)
class Gold:
    """What the annotators said about one post."""

    actionable: bool
    negative: bool

    @property
    def grade(self) -> int:
        """Graded relevance for NDCG: 2 both, 1 either, 0 neither."""
        return int(self.actionable) + int(self.negative)


def airline_gold(sentiment: str, negativereason: str | None) -> Gold:
    """Twitter US Airline Sentiment: negative is ``airline_sentiment == negative``; actionable is
    a ``negativereason`` naming a concrete issue (not "Can't Tell"). The annotators gave a
    reason to negative tweets only, so neutral questions ("can I bring my dog?") count as not
    actionable here: the airline grades understate actionability, never overstate it."""
    reason = (negativereason or "").strip()
    return Gold(
        actionable=bool(reason) and reason != AIRLINE_UNSPECIFIC_REASON,
        negative=sentiment.strip().lower() == "negative",
    )


def complaints_gold(complaint: int | str, domain: str, kind: str | None) -> Gold:
    """Complaints corpus: a complaint (``complaint == 1``) is actionable and negative (the
    corpus defines a complaint as expressing a breach of expectations); a brand-addressed
    non-complaint is actionable when the project's annotation (``actionability_labels.csv``,
    ``kind``) says ``request``; random tweets and replies are neither."""
    if int(complaint) == 1:
        return Gold(actionable=True, negative=True)
    if domain in RANDOM_DOMAINS:
        return Gold(actionable=False, negative=False)
    return Gold(actionable=(kind or "").strip().lower() == "request", negative=False)


# --------------------------------------------------------------------------- metrics


def dcg_at_k(gains: Sequence[float], k: int) -> float:
    """Discounted cumulative gain of the first ``k`` gains, in the order given: the item at rank
    r (1-based) adds gain / log2(r + 1)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return sum(g / math.log2(r + 2) for r, g in enumerate(gains[:k]))


def ndcg_at_k(gains: Sequence[float], k: int) -> float:
    """DCG@k of ``gains`` (every item's gain, in ranked order) over the DCG@k of the same gains
    sorted best first. 1.0 when nothing is relevant (no order can do better)."""
    if any(g < 0 for g in gains):
        raise ValueError("gains must be >= 0")
    ideal = dcg_at_k(sorted(gains, reverse=True), k)
    return dcg_at_k(gains, k) / ideal if ideal > 0 else 1.0


def ranked(gains: Sequence[float], order: Sequence[int]) -> list[float]:
    """``gains`` rearranged into ``order`` (a permutation of their indices)."""
    if sorted(order) != list(range(len(gains))):
        raise ValueError("order must be a permutation of the items' indices")
    return [gains[i] for i in order]


def precision(selected: Sequence[bool], relevant: Sequence[bool]) -> float | None:
    """Share of the selected items that are relevant; None when nothing is selected."""
    if len(selected) != len(relevant):
        raise ValueError(f"{len(selected)} selections for {len(relevant)} items")
    hits = [r for s, r in zip(selected, relevant, strict=True) if s]
    return sum(hits) / len(hits) if hits else None


def recall(selected: Sequence[bool], relevant: Sequence[bool]) -> float | None:
    """Share of the relevant items that are selected; None when nothing is relevant."""
    if len(selected) != len(relevant):
        raise ValueError(f"{len(selected)} selections for {len(relevant)} items")
    found = [s for s, r in zip(selected, relevant, strict=True) if r]
    return sum(found) / len(found) if found else None


# --------------------------------------------------------------------------- orders


def priority_order(scores: Sequence[float], arrival: Sequence[int] | None = None) -> list[int]:
    """Indices by priority score, highest first; equal scores (the score is an integer, ties
    are common) in arrival order, as a care queue serves them. ``arrival``: each item's place in
    arrival order (default: the input order)."""
    pos = list(arrival) if arrival is not None else list(range(len(scores)))
    if len(pos) != len(scores):
        raise ValueError(f"{len(pos)} arrival places for {len(scores)} scores")
    return sorted(range(len(scores)), key=lambda i: (-scores[i], pos[i], i))


def arrival_order(arrival: Sequence[Any]) -> list[int]:
    """Indices by arrival (timestamps or positions), earliest first; ties in input order."""
    return sorted(range(len(arrival)), key=lambda i: (arrival[i], i))


def random_order(n: int, seed: int) -> list[int]:
    """A seeded shuffle of ``range(n)``."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


# --------------------------------------------------------------------------- report


LEVEL_SETS: Mapping[str, frozenset[str]] = {
    "P1": frozenset({"P1"}),
    "P2": frozenset({"P2"}),
    "P1+P2": frozenset({"P1", "P2"}),
}


def level_precision(levels: Sequence[str], gold: Sequence[Gold]) -> dict[str, dict[str, Any]]:
    """Per level set (P1, P2, P1+P2): how many posts, and their precision against gold
    actionability, negativity and both; recall of the grade-2 posts."""
    if len(levels) != len(gold):
        raise ValueError(f"{len(levels)} levels for {len(gold)} gold labels")
    out: dict[str, dict[str, Any]] = {}
    for name, wanted in LEVEL_SETS.items():
        sel = [lv in wanted for lv in levels]
        out[name] = {
            "posts": sum(sel),
            "precision_actionable": precision(sel, [g.actionable for g in gold]),
            "precision_negative": precision(sel, [g.negative for g in gold]),
            "precision_both": precision(sel, [g.grade == 2 for g in gold]),
            "recall_both": recall(sel, [g.grade == 2 for g in gold]),
        }
    return out


def head_precision(order: Sequence[int], gold: Sequence[Gold], n: int) -> dict[str, float | None]:
    """Precision of the first ``n`` items of ``order``: what an order without levels puts where
    the priority policy put its P1+P2 posts."""
    head = set(order[:n])
    sel = [i in head for i in range(len(gold))]
    return {
        "precision_actionable": precision(sel, [g.actionable for g in gold]),
        "precision_negative": precision(sel, [g.negative for g in gold]),
        "precision_both": precision(sel, [g.grade == 2 for g in gold]),
    }


def evaluate(
    scores: Sequence[float],
    levels: Sequence[str],
    arrival: Sequence[Any],
    gold: Sequence[Gold],
    *,
    k: int = 100,
    random_rounds: int = 100,
    seed: int = 0,
) -> dict[str, Any]:
    """The priority order against arrival order and random orders (mean and standard deviation
    over ``random_rounds`` seeded shuffles): NDCG@k and NDCG over the whole list; precision of
    P1/P2 against gold, and of each baseline's first |P1+P2| posts."""
    n = len(gold)
    if not (len(scores) == len(levels) == len(arrival) == n):
        raise ValueError("scores, levels, arrival and gold must have one entry per post")
    if n == 0:
        raise ValueError("no posts")
    if random_rounds < 1:
        raise ValueError(f"random_rounds must be >= 1, got {random_rounds}")
    gains = [float(g.grade) for g in gold]
    by_arrival = arrival_order(arrival)
    place = [0] * n
    for p, i in enumerate(by_arrival):
        place[i] = p
    by_priority = priority_order(scores, place)
    top = sum(lv in LEVEL_SETS["P1+P2"] for lv in levels)

    def summary(order: Sequence[int]) -> dict[str, Any]:
        g = ranked(gains, order)
        return {
            f"ndcg@{k}": ndcg_at_k(g, k),
            "ndcg": ndcg_at_k(g, n),
            "head": head_precision(order, gold, top) if top else None,
        }

    rounds = [summary(random_order(n, seed + r)) for r in range(random_rounds)]

    def mean_sd(key: str) -> dict[str, float]:
        xs = [r[key] for r in rounds]
        mean = sum(xs) / len(xs)
        sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / max(1, len(xs) - 1))
        return {"mean": mean, "sd": sd}

    def mean_head() -> dict[str, float | None] | None:
        heads = [r["head"] for r in rounds if r["head"] is not None]
        if not heads:
            return None
        # Every round selects the same number of posts, so a key is None in all or in none.
        return {
            key: None if heads[0][key] is None else sum(h[key] for h in heads) / len(heads)
            for key in heads[0]
        }

    return {
        "posts": n,
        "k": k,
        "gold": {
            "grade_2": sum(g.grade == 2 for g in gold),
            "grade_1": sum(g.grade == 1 for g in gold),
            "grade_0": sum(g.grade == 0 for g in gold),
            "actionable": sum(g.actionable for g in gold),
            "negative": sum(g.negative for g in gold),
        },
        "orders": {
            "priority": summary(by_priority),
            "arrival": summary(by_arrival),
            "random": {
                f"ndcg@{k}": mean_sd(f"ndcg@{k}"),
                "ndcg": mean_sd("ndcg"),
                "head": mean_head(),
                "rounds": random_rounds,
                "seed": seed,
            },
        },
        "levels": level_precision(levels, gold),
        "level_counts": {lv: sum(x == lv for x in levels) for lv in ("P1", "P2", "P3", "P4")},
    }
