"""The real shared data sets load into the multi-task table as the data README describes."""

from __future__ import annotations

import collections

import pytest

from training.config import DataConfig, default_data_dir

pytestmark = pytest.mark.skipif(
    not (default_data_dir() / "complaints" / "complaints.csv").is_file(),
    reason=f"shared data not found at {default_data_dir()} (set CARETRIAGE_DATA_DIR)",
)


@pytest.fixture(scope="module")
def corpus(schema):
    from training.data import load_corpus

    return load_corpus(DataConfig(), schema)


def test_actionability_mapping_matches_the_data_readme(schema):
    from training.data import complaints

    comp = complaints(DataConfig(), schema)
    names = schema.task("actionability").labels
    counts = collections.Counter(names[i] for i in comp["actionability"] if i >= 0)
    assert counts == {"complaint": 1232, "request": 486, "none": 1731}


def test_fixed_splits(corpus):
    assert len(corpus["val"]) == 1448 and len(corpus["test"]) == 1449
    assert set(corpus["complaints_test"]["fold"]) == {0}
    # No complaints test row leaks into training.
    train = set(corpus["train"]["text"])
    leaked = [t for t in corpus["complaints_test"]["text"] if t in train]
    assert len(leaked) <= 3  # exact duplicate tweets exist across folds in the source


def test_topic_labels_only_on_negative_rows_with_a_known_reason(corpus, schema):
    neg = schema.task("sentiment").index("negative")
    rows = [
        (s, t) for s, t in zip(corpus["train"]["sentiment"], corpus["train"]["topic"], strict=True)
    ]
    assert all(s == neg for s, t in rows if t >= 0)
    assert sum(t >= 0 for _, t in rows) > 5000


def test_texts_are_normalized(corpus):
    import re

    handle = re.compile(r"(?<![\w@])@(?!user\b)\w")
    assert not any("http://" in t or handle.search(t) for t in corpus["train"]["text"])


def test_the_configured_normalizer_is_applied(schema):
    from training.data import airline

    v1 = airline(DataConfig(), schema)["test"]["text"]
    v2 = airline(DataConfig(normalizer="tweet-v2"), schema)["test"]["text"]
    changed = [(a, b) for a, b in zip(v1, v2, strict=True) if a != b]
    assert changed and all(":" in b for _, b in changed)  # emoji spelled out as :name:
    with pytest.raises(ValueError, match="tweet-v9"):
        DataConfig(normalizer="tweet-v9")


def test_a_validation_fold_is_held_out_of_training_and_validates_actionability(schema):
    from training.data import load_corpus
    from training.evaluate import eval_sets

    c = load_corpus(DataConfig(complaints_test_fold=0, complaints_val_fold=9), schema)
    assert set(c["complaints_val"]["fold"]) == {9}
    train = set(c["train"]["text"])
    assert sum(t in train for t in c["complaints_val"]["text"]) <= 3  # source duplicates
    texts, gold, domains = eval_sets(c, "val")["actionability"]
    assert len(texts) == len(c["complaints_val"]) and min(gold) >= 0 and all(domains)
    # By default the fold after the test fold validates; None leaves no validation rows.
    assert DataConfig(complaints_test_fold=9).val_fold == 0
    assert "actionability" not in eval_sets(
        load_corpus(DataConfig(complaints_val_fold=None), schema), "val"
    )


def test_the_validation_fold_must_differ_from_the_test_fold():
    with pytest.raises(ValueError, match="complaints_val_fold"):
        DataConfig(complaints_test_fold=3, complaints_val_fold=3)


def test_extra_training_sources_join_the_training_table(schema, tmp_path):
    """TweetEval (built in memory) and an extra JSONL file add their rows to training, with
    labels for their own tasks only."""
    import json

    from training.data import load_corpus

    rows = [{"text": "my card was charged twice", "sentiment": "negative"}]
    path = tmp_path / "extra.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    base = load_corpus(DataConfig(use_tweeteval=False), schema)
    more = load_corpus(DataConfig(use_tweeteval=True, extra=[str(path)]), schema)
    added = collections.Counter(more["train"]["source"]) - collections.Counter(
        base["train"]["source"]
    )
    assert added == {"tweeteval": 2000, "extra": 1}
    row = more["train"].filter(lambda ex: ex["source"] == "extra")[0]
    assert row["sentiment"] == schema.task("sentiment").labels.index("negative")
    assert row["topic"] == row["actionability"] == -100


def test_rows_are_weighted_by_annotator_confidence_only_when_asked(corpus, schema):
    import csv

    from training.data import airline

    assert set(corpus["train"]["weight"]) == {1.0}
    weighted = airline(DataConfig(weight_by_confidence=True), schema)["train"]["weight"]
    with (default_data_dir() / "airline" / "train.csv").open(encoding="utf-8") as f:
        expected = [float(r["airline_sentiment_confidence"]) for r in csv.DictReader(f)]
    assert weighted == pytest.approx(expected, abs=1e-6) and min(weighted) < 0.5
