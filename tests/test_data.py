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
