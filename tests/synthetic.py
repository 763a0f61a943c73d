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
