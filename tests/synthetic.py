"""A small synthetic multi-task corpus with the shape of the real one, for fast tests.

Texts are built from word lists per label so a tiny model can learn something, but no test
asserts a prediction it cannot derive from these rules.
"""

from __future__ import annotations

import random

from datasets import Dataset, DatasetDict

from features.schema import LabelSchema
from training.data import IGNORE

WORDS = {
    "negative": ["awful", "terrible", "worst", "angry"],
    "neutral": ["today", "flight", "maybe", "schedule"],
    "positive": ["thanks", "great", "love", "awesome"],
}


def _row(rng: random.Random, schema: LabelSchema, source: str) -> dict:
    s = rng.randrange(3)
    sent = schema.task("sentiment").labels[s]
    topic = rng.randrange(len(schema.task("topic").labels)) if sent == "negative" else IGNORE
    words = rng.choices(WORDS.get(sent, ["x"]), k=3)
    if topic != IGNORE:
        words.append(schema.task("topic").labels[topic].replace("_", " "))
    act = IGNORE
    if source == "complaints":
        act = rng.randrange(len(schema.task("actionability").labels))
        words.append(schema.task("actionability").labels[act])
    words += rng.choices(["the", "my", "@user", "http", "please", "now"], k=rng.randrange(1, 12))
    return {
        "text": " ".join(words),
        "topic": topic if source == "airline" else IGNORE,
        "sentiment": s if source == "airline" else IGNORE,
        "actionability": act,
        "source": source,
    }


def corpus(schema: LabelSchema, n: int = 120, seed: int = 0) -> DatasetDict:
    rng = random.Random(seed)

    def rows(k: int, source: str) -> Dataset:
        return Dataset.from_list([_row(rng, schema, source) for _ in range(k)])

    train = Dataset.from_list(
        [_row(rng, schema, "airline") for _ in range(n)]
        + [_row(rng, schema, "complaints") for _ in range(n // 2)]
    )
    comp = rows(n // 3, "complaints")
    domains = [rng.choice(["random_tweet", "retail", "apparel"]) for _ in range(len(comp))]
    comp = comp.add_column("fold", [0] * len(comp)).add_column("domain", domains)
    return DatasetDict(
        {
            "train": train,
            "val": rows(n // 3, "airline"),
            "test": rows(n // 3, "airline"),
            "complaints_test": comp,
        }
    )


# -- A synthetic shared-data folder ------------------------------------------------------------
# The layout of ../shared/data (airline, complaints, TweetEval, Banking77), small and made up,
# so the loaders run end to end in tests without the real data.

REASONS = ["Late Flight", "Lost Luggage", "Can't Tell", "longlines", "Bad Flight"]
INTENTS = ["card_arrival", "Refund_not_showing_up", "reverted_card_payment?", "pin_blocked"]


def _write_csv(path, header: list[str], rows: list[list]) -> None:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def write_data_dir(root, n: int = 60, seed: int = 0, intents: list[str] | None = None):
    """Write a synthetic shared-data folder under ``root`` and return it."""
    from pathlib import Path

    rng = random.Random(seed)
    root = Path(root)
    head = ["tweet_id", "airline_sentiment", "airline_sentiment_confidence", "negativereason",
            "text"]  # fmt: skip
    for split, k in (("train", n), ("val", n // 3), ("test", n // 3)):
        rows = []
        for i in range(k):
            s = rng.choice(["negative", "neutral", "positive"])
            reason = rng.choice(REASONS) if s == "negative" else ""
            words = " ".join(rng.choices(WORDS[s], k=3))
            text = f"@airline {words} {reason.lower()} http://t.co/{split}{i} &amp; more"
            rows.append([f"{split}{i}", s, round(rng.uniform(0.3, 1.0), 3), reason, text])
        _write_csv(root / "airline" / f"{split}.csv", head, rows)
    comp, kinds = [], []
    for i in range(n):
        domain = rng.choice(["random_tweet", "random_reply", "retail", "apparel"])
        complaint = int(domain not in ("random_tweet", "random_reply") and rng.random() < 0.5)
        comp.append([f"c{i}", f"@brand complaint {i} {rng.choice(['late', 'broken'])}",
                     complaint, domain, i % 10])  # fmt: skip
        if not complaint and domain not in ("random_tweet", "random_reply"):
            kinds.append([f"c{i}", rng.choice(["request", "none"]), 0])
    _write_csv(root / "complaints" / "complaints.csv",
               ["tweet_id", "text", "complaint", "domain", "fold"], comp)  # fmt: skip
    _write_csv(root / "complaints" / "actionability_labels.csv",
               ["tweet_id", "kind", "ambiguous"], kinds)  # fmt: skip
    te = root / "tweeteval_sentiment"
    te.mkdir(parents=True, exist_ok=True)
    (te / "val_text.txt").write_text(
        "\n".join(f"tweet {i} @someone {rng.choice(['meh', 'yay'])}" for i in range(20)) + "\n",
        encoding="utf-8",
    )
    (te / "val_labels.txt").write_text("\n".join(str(i % 3) for i in range(20)) + "\n")
    for split, k in (("train", 4 * n), ("test", n)):
        rows = [[f"{split} query {i} about {c.lower()}", c]
                for i, c in enumerate(rng.choices(intents or INTENTS, k=k))]  # fmt: skip
        _write_csv(root / "banking77" / f"{split}.csv", ["text", "category"], rows)
    return root
