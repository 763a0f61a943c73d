"""Training reads human labels: the export's final labels join training and win over base rows
of the same text, unknown labels are refused unless added (the head grows), and a stable slice
is held out and reported on."""

from __future__ import annotations

import collections
import hashlib
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from features.labels_export import text_key
from features.text import normalize_text
from training.config import HumanLabelsConfig, TrainConfig
from training.data import IGNORE
from training.human_labels import (
    HOLDOUT,
    UnknownLabels,
    check_labels,
    held_out,
    load_human,
    merge_human,
)


def export_row(item_id: int, text: str, labels: dict, *, final: bool = True, **over) -> dict:
    """One labeling export row, as serving's export writes it."""
    row = {
        "item_id": item_id,
        "text": text,
        "text_key": text_key(normalize_text(text)),
        "channel": "twitter",
        "author": None,
        "source": "upload",
        "labels": labels,
        "evaluator": "eva",
        "role": "evaluator",
        "labeled_at": "2026-12-01T10:00:00Z",
        "model_version": "m1",
        "suggestion": None,
        "changed": [],
        "status": "single" if final else "pending",
        "final": final,
        "kind": "label",
    }
    return row | over


def write_export(path: Path, rows: list[dict]) -> Path:
    from serving.labeling.formats import write_jsonl, write_parquet

    (write_parquet if path.suffix == ".parquet" else write_jsonl)(rows, path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_human_labels_win_over_base_rows_of_the_same_text(tiny_corpus, schema, tmp_path, suffix):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    base = tiny_corpus["train"]
    twin = base[0]  # a base training row the labelers also saw, in other case and spacing
    topic = schema.task("topic").labels
    other = next(i for i in range(len(topic)) if i != twin["topic"])
    public = tiny_corpus["test"][0]["text"]
    rows = [
        export_row(1, "  " + twin["text"].upper() + " ", {"topic": topic[other]}),
        export_row(2, "a brand new post", {"sentiment": "positive"}),
        export_row(3, "still waiting for a second label", {"sentiment": "negative"}, final=False),
        export_row(4, public, {"sentiment": "neutral"}),  # a public test post: never trained
        export_row(2, "a brand new post", {"sentiment": "negative"}, final=False, evaluator="bo"),
    ]
    path = write_export(tmp_path / f"labels{suffix}", rows)
    snap = load_human(HumanLabelsConfig(path=path, holdout=0.0), schema, "tweet-v1")
    assert snap.final_rows == 3 and len(snap.holdout) == 0
    assert snap.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    merged = merge_human(tiny_corpus, snap, ["topic", "sentiment", "actionability"])
    train = merged["train"]
    assert snap.dropped_base_rows >= 1 and snap.kept_out_public == 1
    assert len(train) == len(base) - snap.dropped_base_rows + 2
    folded = [" ".join(t.casefold().split()) for t in train["text"]]
    twin_key = " ".join(twin["text"].casefold().split())
    assert folded.count(twin_key) == 1  # the human row only, with the human's label
    human = train.filter(lambda ex: ex["source"] == "human")
    assert sorted(human["topic"]) == sorted([other, IGNORE])
    positive = schema.task("sentiment").index("positive")
    assert sorted(human["sentiment"]) == sorted([IGNORE, positive])
    assert public not in human["text"]
    assert merged[HOLDOUT].num_rows == 0
    for name in ("val", "test", "complaints_test"):  # the public tables are untouched
        assert merged[name].to_list() == tiny_corpus[name].to_list()


def test_a_label_the_schema_lacks_is_refused_by_name_unless_added(schema):
    rows = [
        export_row(1, "they charged me for my bag", {"topic": "baggage_fees"}),
        export_row(2, "bag fee again", {"topic": "baggage_fees", "sentiment": "negative"}),
        export_row(3, "so loud", {"topic": "noise"}),
    ]
    named = r"topic: 'baggage_fees' \(2 rows\), 'noise' \(1 rows\)"
    with pytest.raises(UnknownLabels, match=named):
        check_labels(rows, schema, add_labels=False)
    grown, added = check_labels(rows, schema, add_labels=True)
    assert added == {"topic": ["baggage_fees", "noise"]}
    before = schema.task("topic").labels
    assert grown.task("topic").labels == [*before, "baggage_fees", "noise"]  # ids kept
    assert grown.task("sentiment") == schema.task("sentiment")
    with pytest.raises(UnknownLabels, match="'urgency'"):
        check_labels([export_row(4, "now!", {"urgency": "high"})], schema, add_labels=True)


def test_the_cli_refuses_an_unknown_label_naming_it(tmp_path):
    from caretriage_cli import main

    path = write_export(tmp_path / "l.jsonl", [export_row(1, "x", {"topic": "wifi"})])
    with pytest.raises(SystemExit, match=r"'wifi'.*--add-labels"):
        main(["train", "--tiny", "--with-labels", str(path), "--tracking-uri", "sqlite://"])
    with pytest.raises(SystemExit, match="need --with-labels"):
        main(["train", "--tiny", "--add-labels"])


def _tiny_checkpoint(tiny_model, schema, tmp_path) -> Path:
    from training.train import Trained, save_checkpoint

    model, tokenizer = tiny_model
    cfg = TrainConfig(tiny=True, dropout=0.1)
    temps = {t: 1.0 for t in schema.names}
    return save_checkpoint(Trained(model, tokenizer, schema, cfg, [], temps), tmp_path / "ckpt")


def test_add_labels_grows_the_head_and_keeps_the_checkpoints_weights(tiny_model, schema, tmp_path):
    import torch

    from training.train import build_model, grow_from, load_tokenizer, resolve_checkpoint

    grown, _ = check_labels([export_row(1, "x", {"topic": "baggage_fees"})], schema, True)
    ckpt = _tiny_checkpoint(tiny_model, schema, tmp_path)
    old = tiny_model[0]
    model = grow_from(ckpt, grown, 0.1)
    n = len(schema.task("topic").labels)
    head = model.heads["topic"]
    assert head.out_features == n + 1
    assert torch.equal(head.weight[:n], old.heads["topic"].weight)
    assert torch.equal(head.bias[:n], old.heads["topic"].bias)
    assert not torch.equal(head.weight[n], torch.zeros_like(head.weight[n]))  # a fresh row
    for task in ("sentiment", "actionability"):
        assert torch.equal(model.heads[task].weight, old.heads[task].weight)
    emb = "embeddings.word_embeddings.weight"
    assert torch.equal(model.encoder.state_dict()[emb], old.encoder.state_dict()[emb])
    # Through the config: --init-from a checkpoint, or the bundle written inside it.
    (ckpt / "bundle").mkdir()
    (ckpt / "bundle" / "bundle.json").write_text(json.dumps({"training": {}}))
    assert resolve_checkpoint(ckpt / "bundle") == ckpt
    cfg = TrainConfig(tiny=True, init_from=ckpt / "bundle")
    assert build_model(cfg, grown, load_tokenizer(cfg)).heads["topic"].out_features == n + 1
    # From the pretrained (here: random tiny) encoder the head is built with the longer list.
    fresh = TrainConfig(tiny=True)
    assert build_model(fresh, grown, load_tokenizer(fresh)).heads["topic"].out_features == n + 1
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "bundle.json").write_text(json.dumps({"training": {}}))
    with pytest.raises(ValueError, match="checkpoint is not here"):
        resolve_checkpoint(lone)


def test_the_holdout_is_stable_and_stratified():
    """Each item's draw depends on its text_key alone: the same items are held out whatever
    else the export holds or its order, and every label loses the same share."""
    labels = ["a", "b", "c"]
    items = [(hashlib.sha256(f"post {i}".encode()).hexdigest(), labels[i % 3]) for i in range(6000)]
    out = {k for k, _ in items if held_out(k, 0.2, seed=7)}
    per_label = collections.Counter(lab for k, lab in items if k in out)
    for lab in labels:
        assert per_label[lab] / 2000 == pytest.approx(0.2, abs=0.03)
    first = items[:1000]
    assert {k for k, _ in first if held_out(k, 0.2, seed=7)} == out & {k for k, _ in first}
    assert {k for k, _ in items if held_out(k, 0.2, seed=8)} != out  # the seed matters
    assert not any(held_out(k, 0.0, seed=7) for k, _ in items)


def test_the_same_export_holds_out_the_same_items_however_it_grows(schema, tmp_path):
    rows = [export_row(i, f"post number {i}", {"sentiment": "negative"}) for i in range(200)]
    small = write_export(tmp_path / "a.jsonl", rows[:120])
    big = write_export(tmp_path / "b.jsonl", list(reversed(rows)))
    a = load_human(HumanLabelsConfig(path=small), schema, "tweet-v1")
    b = load_human(HumanLabelsConfig(path=big), schema, "tweet-v1")
    assert set(a.holdout["text"]) == set(b.holdout["text"]) & {r["text"] for r in rows[:120]}
    assert 0 < len(b.holdout) < 200 and a.holdout_counts["sentiment"]["negative"] == len(a.holdout)


def test_a_run_with_labels_logs_the_snapshot_and_reports_the_human_slice(
    tiny_corpus, schema, tmp_path
):
    import mlflow
    from mlflow import MlflowClient

    from training.pipeline import run

    topic = schema.task("topic").labels
    rows = [
        export_row(i, f"awful {topic[i % len(topic)].replace('_', ' ')} number {i}",
                   {"topic": topic[i % len(topic)], "sentiment": "negative"})
        for i in range(60)
    ]  # fmt: skip
    path = write_export(tmp_path / "labels.jsonl", rows)
    cfg = TrainConfig(
        tiny=True, epochs=1, batch_size=16, max_length=32, threads=1, name="tiny-human",
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", output_dir=tmp_path / "out",
    )  # fmt: skip
    cfg.data.human = HumanLabelsConfig(path=path, holdout=0.3)
    res = run(cfg, corpus=tiny_corpus, export=False)
    assert set(res.human_metrics) == {"topic", "sentiment"}
    held = res.human_metrics["sentiment"]["n"]
    assert held == sum(held_out(r["text_key"], 0.3, cfg.data.human.seed) for r in rows) > 0
    client = MlflowClient(tracking_uri=cfg.tracking_uri)
    got = client.get_run(res.run_id).data
    assert got.params["human_labels.sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert got.params["human_labels.file"] == str(path.resolve())
    assert "human.topic.macro_f1" in got.metrics and "test.topic.macro_f1" in got.metrics
    summary = json.loads(mlflow.artifacts.load_text(f"runs:/{res.run_id}/data/human_labels.json"))
    assert summary["train_rows"] + summary["holdout_rows"] == 60
    rows_per_split = json.loads(
        mlflow.artifacts.load_text(f"runs:/{res.run_id}/data/rows_per_split.json")
    )
    assert rows_per_split[HOLDOUT] == held
    assert rows_per_split["train"] == len(tiny_corpus["train"]) + summary["train_rows"]
