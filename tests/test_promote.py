"""``caretriage promote``: the candidate and the champion scored on the same rows, the alias
and the serving pointer moved only when no task drops past the margin and the human slice
holds; a refusal names the task and its figures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("mlflow")

from training import promote as promote_mod
from training.config import HumanLabelsConfig, TrainConfig
from training.promote import Scores, promote, reindexed, score_bundle, write_pointer
from training.tracking import CHAMPION, QualityGate


def copy_bundle(src: Path, dst: Path, version: str) -> Path:
    shutil.copytree(src, dst)
    meta = json.loads((dst / "bundle.json").read_text())
    meta["version"] = version
    (dst / "bundle.json").write_text(json.dumps(meta))
    return dst


def figures(topic: float, sentiment: float, human: float | None) -> tuple[dict, dict | None]:
    test = {
        "topic": {"macro_f1": topic, "accuracy": 70.0, "n": 50.0},
        "sentiment": {"macro_f1": sentiment, "accuracy": 80.0, "n": 50.0},
        "actionability": {
            "macro_f1": 85.0, "accuracy": 85.0, "complaint_vs_rest_macro_f1": 86.0, "n": 40.0
        },
    }  # fmt: skip
    h = None if human is None else {
        "topic": {"macro_f1": human, "accuracy": human, "n": 12.0},
        "sentiment": {"macro_f1": human + 4, "accuracy": human, "n": 12.0},
    }  # fmt: skip
    return test, h


# version -> (topic, sentiment, human slice) macro-F1 the fake evaluation reports.
FIGURES = {
    "tiny-v1": figures(60.0, 80.0, 50.0),
    "tiny-topic-drops": figures(58.5, 81.0, 55.0),  # topic 1.5 below: past the 1-point margin
    "tiny-human-falls": figures(60.2, 80.2, 49.0),  # test holds, the human slice falls
    "tiny-better": figures(60.5, 79.5, 52.0),  # sentiment -0.5 (within margin), human up
}


@pytest.fixture
def bundles(tiny_bundle, tmp_path) -> dict[str, Path]:
    return {v: copy_bundle(tiny_bundle, tmp_path / v, v) for v in FIGURES}


@pytest.fixture
def fake_scores(monkeypatch):
    """Replace the ONNX evaluation by the figures above; the decision, the registry and the
    pointer run for real."""
    scored: list[str] = []

    def fake(path, corpus_for, schema, tasks):
        from features.bundle import read_bundle

        version = read_bundle(path).meta.version
        scored.append(version)
        test, human = FIGURES[version]
        return Scores(str(Path(path).resolve()), version, test, human)

    monkeypatch.setattr(promote_mod, "score_bundle", fake)
    return scored


def test_promote_accepts_a_better_candidate_and_refuses_a_worse_one_naming_it(
    bundles, fake_scores, tmp_path, capsys
):
    from mlflow import MlflowClient

    from caretriage_cli import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    pointer = tmp_path / "serving" / "champion.json"
    base = ["--name", "tiny-promote", "--tracking-uri", uri, "--pointer", str(pointer)]
    client = MlflowClient(tracking_uri=uri)

    def champion() -> str:
        mv = client.get_model_version_by_alias("tiny-promote", CHAMPION)
        return mv.tags["bundle_version"]

    # No champion yet: the first candidate that meets the floors becomes it.
    assert main(["promote", str(bundles["tiny-v1"]), *base]) == 0
    assert champion() == "tiny-v1"
    assert json.loads(pointer.read_text()) == {
        "bundle": str(bundles["tiny-v1"].resolve()),
        "version": "tiny-v1",
    }
    capsys.readouterr()

    # Topic falls 1.5 points: refused, naming the task and both figures; nothing moves.
    assert main(["promote", str(bundles["tiny-topic-drops"]), *base]) == 1
    err = capsys.readouterr().err
    assert "topic macro_f1 drops 1.50 points: candidate 58.50, champion 60.00" in err
    assert "sentiment" not in err
    assert champion() == "tiny-v1" and json.loads(pointer.read_text())["version"] == "tiny-v1"
    assert fake_scores[-2:] == ["tiny-topic-drops", "tiny-v1"]  # both scored again

    # The public tests hold but the human slice falls: refused, naming the slice's tasks.
    assert main(["promote", str(bundles["tiny-human-falls"]), *base]) == 1
    err = capsys.readouterr().err
    assert "human slice macro-F1" in err and "topic 49.00 vs 50.00" in err
    assert champion() == "tiny-v1"

    # Within the margin on sentiment, better on the slice: promoted, pointer rewritten.
    assert main(["promote", str(bundles["tiny-better"]), *base]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["promoted"] and out["champion"]["version"] == "tiny-v1"
    assert champion() == "tiny-better"
    assert json.loads(pointer.read_text())["bundle"] == str(bundles["tiny-better"].resolve())
    assert not [p for p in pointer.parent.iterdir() if p.name != "champion.json"]  # no temp
    # Each comparison is an MLflow run with both sides' figures and the verdict.
    runs = client.search_runs(
        [client.get_experiment_by_name("caretriage").experiment_id],
        "tags.job = 'promote'",
        order_by=["attributes.start_time ASC"],
    )
    assert [r.data.tags["promoted"] for r in runs] == ["true", "false", "false", "true"]
    last = runs[-1].data
    assert last.metrics["candidate.test.topic.macro_f1"] == 60.5
    assert last.metrics["champion.test.topic.macro_f1"] == 60.0
    assert last.metrics["candidate.human.topic.macro_f1"] == 52.0


def test_a_wider_margin_or_a_floor_changes_the_verdict(bundles, fake_scores, tmp_path):
    cfg = TrainConfig(name="tiny-margin", tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    cfg.gate = QualityGate(floors={})
    assert promote(bundles["tiny-v1"], cfg, pointer=None).promoted
    loose = cfg.promotion.model_copy(update={"max_drop": 2.0})
    assert promote(bundles["tiny-topic-drops"], cfg, pointer=None, rule=loose).promoted
    cfg.gate = QualityGate(floors={"topic.macro_f1": 61.0})
    d = promote(bundles["tiny-better"], cfg, pointer=None)  # against tiny-topic-drops now
    assert not d.promoted and d.champion.version == "tiny-topic-drops"
    assert d.reasons[0] == "topic macro_f1: candidate 60.50 is below the floor 61"
    assert d.reasons[1].startswith("sentiment macro_f1 drops 1.50 points")
    assert d.reasons[2].startswith("human slice macro-F1 (mean over topic, sentiment) falls")


def test_promote_scores_both_bundles_for_real_on_the_same_rows(
    tiny_bundle, tiny_corpus, schema, tmp_path
):
    """Without fakes: ONNX scoring of the test tables and the human slice, the first
    champion registered, and the same bundle again is already the champion."""
    from mlflow import MlflowClient

    from tests.test_human_labels import export_row, write_export

    rows = [export_row(i, f"terrible {i}", {"sentiment": "negative"}) for i in range(40)]
    human = HumanLabelsConfig(path=write_export(tmp_path / "l.jsonl", rows), holdout=0.5)
    cfg = TrainConfig(name="tiny-real", tracking_uri=f"sqlite:///{tmp_path / 'r.db'}")
    cfg.gate = QualityGate(floors={})
    bundle = copy_bundle(tiny_bundle, tmp_path / "b", "tiny-real-1")
    pointer = tmp_path / "champion.json"
    d = promote(bundle, cfg, human=human, pointer=pointer, corpus=tiny_corpus)
    assert d.promoted and d.champion is None and d.candidate_registry_version == "1"
    labelled = sum(y >= 0 for y in tiny_corpus["test"]["sentiment"])
    assert d.candidate.test["sentiment"]["n"] == labelled
    assert 0 < d.candidate.human["sentiment"]["n"] < 40
    mv = MlflowClient(tracking_uri=cfg.tracking_uri).get_model_version_by_alias(
        "tiny-real", CHAMPION
    )
    assert str(mv.version) == "1" and mv.tags["bundle_path"] == str(bundle.resolve())
    again = promote(bundle, cfg, human=human, pointer=pointer, corpus=tiny_corpus)
    assert again.promoted and "already the champion" in again.notes[0]
    assert again.champion.test == again.candidate.test  # the same model, the same rows


def test_scores_are_laid_out_in_the_candidates_labels(tiny_bundle, tiny_corpus, schema):
    """A champion with its labels in another order (or fewer) is judged on the same gold ids."""
    import numpy as np

    from features.bundle import read_bundle
    from features.schema import LabelSchema
    from training.promote import bundle_predictor

    b = read_bundle(tiny_bundle)
    data = schema.model_dump()
    data["tasks"][1]["labels"] = ["positive", "negative", "neutral"]  # sentiment reordered
    other = LabelSchema.model_validate(data)
    texts = tiny_corpus["test"]["text"][:5]
    own = bundle_predictor(b)(texts)
    moved = reindexed(bundle_predictor(b), schema, other)(texts)
    assert np.array_equal(moved["sentiment"], own["sentiment"][:, [2, 0, 1]])
    assert np.array_equal(moved["topic"], own["topic"])
    same = score_bundle(tiny_bundle, lambda n: tiny_corpus, schema, schema.names)
    assert set(same.test) == {"topic", "sentiment", "actionability"} and same.human is None


def test_the_pointer_is_what_the_server_follows(tmp_path):
    pytest.importorskip("starlette")
    from serving.served import read_pointer

    bundle = tmp_path / "models" / "b1"
    bundle.mkdir(parents=True)
    path = write_pointer(tmp_path / "champion.json", bundle, "b1-version")
    assert read_pointer(path) == bundle.resolve()
    assert json.loads(path.read_text())["version"] == "b1-version"
    write_pointer(path, tmp_path / "models" / "b2", "b2")
    assert json.loads(path.read_text())["version"] == "b2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["champion.json", "models"]
