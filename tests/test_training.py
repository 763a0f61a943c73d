"""The training side on a tiny random model and the synthetic corpus: the real code paths
(train loop, evaluation, export checks, MLflow logging, registry and gate), in seconds."""

from __future__ import annotations

import json
import random

import pytest

pytest.importorskip("torch")
pytest.importorskip("mlflow")

from features.bundle import read_bundle
from training.config import TrainConfig
from training.export.gate import ExportGate
from training.tracking import CHAMPION, QualityGate
from training.train import length_grouped_batches


@pytest.mark.parametrize("n,bs", [(1, 4), (10, 3), (257, 32)])
def test_length_grouped_batches_cover_every_row_once(n, bs):
    rng = random.Random(0)
    lengths = [rng.randrange(1, 60) for _ in range(n)]
    batches = length_grouped_batches(lengths, bs, random.Random(1), group=2)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(n))
    assert all(1 <= len(b) <= bs for b in batches)
    assert all(lengths[b[i]] <= lengths[b[i + 1]] for b in batches for i in range(len(b) - 1))


@pytest.mark.parametrize(
    "metrics,champion,floors,ok",
    [
        ({"sentiment": {"macro_f1": 83.0}}, None, {"sentiment.macro_f1": 82.0}, True),
        ({"sentiment": {"macro_f1": 81.0}}, None, {"sentiment.macro_f1": 82.0}, False),
        (
            {"sentiment": {"macro_f1": 83.0}},
            {"sentiment.macro_f1": 84.0},
            {"sentiment.macro_f1": 82.0},
            False,
        ),
        (
            {"sentiment": {"macro_f1": 83.6}},
            {"sentiment.macro_f1": 84.0},
            {"sentiment.macro_f1": 82.0},
            True,
        ),
        ({"topic": {"macro_f1": 70.0}}, None, {"sentiment.macro_f1": 0.0}, False),
    ],
)
def test_quality_gate(metrics, champion, floors, ok):
    failures = QualityGate(floors=floors, max_regression=0.5).check(metrics, champion)
    assert (not failures) is ok


@pytest.fixture()
def tiny_cfg(tmp_path):
    return TrainConfig(
        tiny=True,
        epochs=1,
        batch_size=16,
        max_length=32,
        threads=1,
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        output_dir=tmp_path / "out",
        name="tiny-test",
    )


def test_pipeline_logs_registers_and_gates(tiny_cfg, tiny_corpus, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    from training.pipeline import run

    relaxed = ExportGate(int8_min_agreement=0.0, int8_max_metric_drop=100.0)
    # A random model fails the default quality gate: registered, but not champion.
    res = run(tiny_cfg, tmp_path / "bundle", corpus=tiny_corpus, export_gate=relaxed)
    assert res.registry["version"] == "1" and res.registry["champion"] is False
    assert res.registry["gate_failures"]
    assert not res.shipped and not (tmp_path / "bundle").exists()
    b = read_bundle(res.bundle)
    assert b.meta.precision == "int8" and b.schema_.names == ["topic", "sentiment", "actionability"]
    assert (res.bundle / "MODEL_CARD.md").read_text().count("|") > 10
    client = MlflowClient(tracking_uri=tiny_cfg.tracking_uri)
    run_ = client.get_run(res.run_id)
    assert "test.sentiment.macro_f1" in run_.data.metrics
    assert run_.data.params["epochs"] == "1"
    arts = {a.path for a in client.list_artifacts(res.run_id)}
    assert {"config.json", "plots", "bundle", "metrics"} <= arts
    logged = json.loads(mlflow.artifacts.load_text(f"runs:/{res.run_id}/config.json"))
    assert logged["epochs"] == 1 and logged["tiny"] is True
    # The export's settings are logged whole beside its report, the gate it ran under included.
    export = json.loads(mlflow.artifacts.load_text(f"runs:/{res.run_id}/export/config.json"))
    assert export["name"] == "tiny-test" and export["base_model"] == "tiny"
    assert export["precision"] == "int8" and export["strict"] is False
    assert export["gate"]["int8_min_agreement"] == 0.0
    assert export["gate"]["recipes"] == list(ExportGate().recipes)
    assert export["normalizer"] == "tweet-v1" and export["lexical"]["tasks"] == ["topic"]
    assert b.meta.normalizer == "tweet-v1"  # the default
    # The same job under a gate it passes moves the alias to the new version; the bundle
    # records the configured normalizer, which serving then applies.
    v2 = tiny_cfg.model_copy(
        update={"data": tiny_cfg.data.model_copy(update={"normalizer": "tweet-v2"})}
    )
    res2 = run(
        v2,
        tmp_path / "bundle2",
        corpus=tiny_corpus,
        export_gate=relaxed,
        gate=QualityGate(floors={}),
    )
    assert res2.registry == {**res2.registry, "version": "2", "champion": True}
    assert res2.shipped and read_bundle(tmp_path / "bundle2").meta.name == "tiny-test"
    assert read_bundle(tmp_path / "bundle2").meta.normalizer == "tweet-v2"
    assert str(client.get_model_version_by_alias("tiny-test", CHAMPION).version) == "2"
    # The next candidate is gated against the champion's served (int8 bundle) metrics.
    from training.tracking import champion_metrics, flatten

    served = flatten(read_bundle(tmp_path / "bundle2").meta.metrics)
    assert champion_metrics(client, "tiny-test") == served


def test_export_parity_recorded(tiny_bundle):
    report = json.loads((tiny_bundle / "export_report.json").read_text())
    assert report["fp32_max_abs_diff"] <= 1e-4
    assert set(report["int8_agreement"]) == {"topic", "sentiment", "actionability"}


@pytest.mark.parametrize(
    "mode,expect_rare_heavier", [("none", False), ("sqrt_inv", True), ("inv", True)]
)
def test_class_weights_favour_rare_classes(mode, expect_rare_heavier):
    import torch

    from training.data import IGNORE
    from training.train import class_weights

    y = torch.tensor([0] * 90 + [1] * 10 + [IGNORE] * 50)
    w = class_weights(y, 2, mode)
    if not expect_rare_heavier:
        assert w is None
    else:
        assert w[1] > w[0]
        ratio = float(w[1] / w[0])
        assert ratio == pytest.approx(9.0 if mode == "inv" else 3.0, rel=1e-5)


def test_weight_only_int8_keeps_outputs_and_shrinks_weights(tiny_model, tmp_path):
    import numpy as np

    from training.export.graph import export_onnx, recipe_nodes
    from training.export.quantize import weight_only_int8
    from training.export.runtime import session

    model, tokenizer = tiny_model
    fp32 = export_onnx(model, tmp_path / "m.onnx", tokenizer.pad_token_id)
    nodes = recipe_nodes(fp32, [r"/output/dense/MatMul$"])
    assert nodes, "the FFN output projections are found by name"
    ids = np.array([[101, 2000, 2001, 102, 0]], dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int64)}
    before = session(fp32).run(None, feed)
    size = fp32.stat().st_size
    assert weight_only_int8(fp32, nodes, min_size=0) == nodes
    after = session(fp32).run(None, feed)
    assert fp32.stat().st_size < size
    for a, b in zip(before, after, strict=True):
        assert np.abs(a - b).max() < 0.05 * (np.abs(a).max() + 1e-6) + 1e-3


def test_blockwise_int8_rounds_each_block_to_its_own_scale(tiny_model, tmp_path):
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from training.export.graph import export_onnx
    from training.export.quantize import weight_only_int8
    from training.export.runtime import session

    model, tokenizer = tiny_model
    fp32 = export_onnx(model, tmp_path / "m.onnx", tokenizer.pad_token_id)
    before_w = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(fp32)).graph.initializer}
    ids = np.array([[101, 2000, 2001, 102, 0]], dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int64)}
    before = session(fp32).run(None, feed)
    done = weight_only_int8(fp32, min_size=0, block=8)
    assert done, "some weights are divisible into blocks of 8"
    quantized = onnx.load(str(fp32))
    inits = {i.name: numpy_helper.to_array(i) for i in quantized.graph.initializer}
    blocked = [n for n in quantized.graph.node if any(a.name == "block_size" for a in n.attribute)]
    assert blocked and all(n.op_type == "DequantizeLinear" for n in blocked)
    assert max(o.version for o in quantized.opset_import if o.domain == "") >= 21
    for node in blocked:
        attrs = {a.name: a.i for a in node.attribute}
        along, size = attrs["axis"], attrs["block_size"]
        base = node.output[0][: -len("_dq")]
        w, q, scale = before_w[base], inits[base + "_w8"], inits[base + "_w8_scale"]
        assert q.dtype == np.int8 and q.shape == w.shape
        assert scale.shape[along] == w.shape[along] // size and scale.size > min(w.shape)
        step = np.repeat(scale, size, axis=along)
        # Nearest rounding: no weight moves more than half of its own block's step.
        assert (np.abs(q * step - w) <= step / 2 + 1e-7).all()
    after = session(fp32).run(None, feed)
    for a, b in zip(before, after, strict=True):
        assert np.abs(a - b).max() < 0.05 * (np.abs(a).max() + 1e-6) + 1e-3


def _fused_graph(tiny_model, path):
    """The tiny encoder exported and fused by ONNX Runtime's transformer optimizer, as the
    export does before quantizing."""
    from training.export.graph import export_onnx, optimize

    model, tokenizer = tiny_model
    cfg = model.encoder.config
    raw = export_onnx(model, path.with_name("raw.onnx"), tokenizer.pad_token_id)
    return optimize(raw, path, cfg.num_attention_heads, cfg.hidden_size)


def test_gather_before_dequantize_keeps_the_embedding_table_int8_and_outputs_exact(
    tiny_model, tmp_path
):
    """The int8 word embeddings are gathered by token id before they are dequantized: no node
    dequantizes the whole table any more, and the logits are bit-identical, padding included."""
    import numpy as np
    import onnx

    from training.export.graph import gather_before_dequantize
    from training.export.quantize import weight_only_int8
    from training.export.runtime import feeds, session

    _, tokenizer = tiny_model
    q = _fused_graph(tiny_model, tmp_path / "q.onnx")
    assert "EmbedLayerNormalization_0" in weight_only_int8(q, min_size=0, block=8)
    whole = tmp_path / "whole.onnx"
    whole.write_bytes(q.read_bytes())
    table = [n.input[0] for n in onnx.load(str(q)).graph.node if n.op_type == "DequantizeLinear"]

    assert gather_before_dequantize(q) == ["EmbedLayerNormalization_0"]
    assert gather_before_dequantize(q) == [], "a second pass finds nothing to rewrite"
    graph = onnx.load(str(q)).graph
    dequantized = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    word_table = next(t for t in table if "word_embeddings" in t)
    assert word_table not in dequantized, "the whole table is no longer dequantized"
    gathered = [n for n in graph.node if n.op_type == "Gather" and n.input[0] == word_table]
    assert len(gathered) == 1

    texts = ["my bag is lost", "thanks!!", "flight delayed again " * 6, "where is my refund"]
    (batch,), _ = feeds(tokenizer, texts, 64, batch_size=len(texts))
    for a, b in zip(session(whole).run(None, batch), session(q).run(None, batch), strict=True):
        assert a.shape == b.shape
        assert np.array_equal(a, b)


def test_export_checkpoint_logs_into_its_training_run(tiny_cfg, tiny_corpus, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    import training.pipeline as pipeline

    res = pipeline.run(tiny_cfg, corpus=tiny_corpus, export=False)
    ckpt = tiny_cfg.output_dir / res.run_id
    monkeypatch.setattr(pipeline, "load_corpus", lambda *a, **k: tiny_corpus)
    registry, shipped, out = pipeline.export_checkpoint(ckpt, tmp_path / "served")
    report = json.loads((out / "export_report.json").read_text())
    # A random model fails the gates: nothing is shipped, and the failures are on record.
    assert not shipped and not (tmp_path / "served").exists()
    assert report["failures"] or (registry and not registry["champion"])
    client = MlflowClient(tracking_uri=tiny_cfg.tracking_uri)
    assert "export" in {a.path for a in client.list_artifacts(res.run_id)}


def test_weight_average_tracks_and_swaps(tiny_model):
    import copy

    import torch

    from training.train import WeightAverage

    model = copy.deepcopy(tiny_model[0])
    head = model.heads["topic"].weight
    start = head.detach().clone()
    ema = WeightAverage(model, decay=0.5)
    with torch.no_grad():
        head.add_(1.0)
    ema.update()  # warm-up decay: min(0.5, 2/11) = 2/11 of the old, 9/11 of the new weights
    expected = start * (2 / 11) + (start + 1.0) * (9 / 11)
    live = head.detach().clone()
    ema.swap()
    assert torch.allclose(head, expected, atol=1e-6)
    ema.swap()
    assert torch.equal(head, live)


def test_training_keeps_the_best_validated_weights(tiny_cfg, tiny_corpus):
    """With selection on, the kept weights are the epoch/kind with the best validation score,
    and re-validating them reproduces that score."""
    from training.evaluate import evaluate
    from training.predict import make_predictor
    from training.train import selection_score, train

    cfg = tiny_cfg.model_copy(update={"epochs": 2, "ema_decay": 0.9})
    trained = train(cfg, tiny_corpus)
    tasks = trained.schema.names
    scores = {
        f"epoch {row['epoch']} {kind}": selection_score(
            {k.removeprefix(prefix): v for k, v in row.items() if k.startswith(prefix + "val_")},
            tasks,
        )
        for row in trained.history
        for kind, prefix in (("raw", ""), ("ema", "ema_"))
    }
    best = max(scores.values())
    assert scores[trained.selected] == best
    predict = make_predictor(trained.model, trained.tokenizer, cfg.max_length)
    metrics, _ = evaluate(predict, trained.schema, tiny_corpus, split="val")
    again = selection_score(
        {f"val_{t}_{k}": v for t, m in metrics.items() for k, v in m.items()}, tasks
    )
    assert again == pytest.approx(best, abs=1e-6)


def test_gptq_rounding_moves_layer_outputs_less_than_nearest():
    """On correlated inputs like the calibration ones, compensating each row's rounding error
    leaves the layer's outputs much closer to fp32 than rounding every weight to nearest, on
    the same int8 grid."""
    import numpy as np

    from training.export.quantize import gptq_int8

    rng = np.random.default_rng(0)
    mix = rng.normal(size=(64, 64))
    x = rng.normal(size=(4000, 64)) @ mix  # correlated features, as hidden states are
    w = rng.normal(size=(64, 48)).astype(np.float32)
    scale = np.abs(w).max(axis=0) / 127.0
    nearest = np.clip(np.round(w / scale), -127, 127)
    gptq = gptq_int8(w, scale, x.T @ x)
    assert gptq.dtype == np.int8 and np.abs(gptq.astype(int)).max() <= 127

    def err(q):
        return float(np.linalg.norm(x @ (w - q * scale)))

    assert err(gptq) < 0.7 * err(nearest)
    train, held_out = x[:2000], x[2000:]  # and on inputs it was not calibrated on
    gptq = gptq_int8(w, scale, train.T @ train)
    assert np.linalg.norm(held_out @ (w - gptq * scale)) < np.linalg.norm(
        held_out @ (w - nearest * scale)
    )


def test_calibrated_recipe_builds_a_close_int8_graph(tiny_model, tmp_path):
    import numpy as np

    from training.export.calibrate import input_hessians
    from training.export.graph import export_onnx
    from training.export.quantize import weight_only_int8
    from training.export.recipes import apply_recipe
    from training.export.runtime import feeds, session

    model, tokenizer = tiny_model
    fp32 = export_onnx(model, tmp_path / "m.onnx", tokenizer.pad_token_id)
    texts = ["my bag is lost", "thanks for the upgrade!", "flight delayed again " * 5, "ok"]
    calibration, _ = feeds(tokenizer, texts * 8, max_length=32, batch_size=8)
    with pytest.raises(ValueError, match="calibration"):
        apply_recipe(fp32, tmp_path / "q.onnx", "int8_weights_gptq")
    hessians = input_hessians(fp32, calibration, min_size=0)
    assert hessians and all(h.shape[0] == h.shape[1] for h in hessians.values())
    q, nodes = apply_recipe(fp32, tmp_path / "q.onnx", "int8_weights_gptq", calibration)
    # The tiny model's matrices are under the default size floor: only the embeddings convert.
    assert nodes and not set(nodes) & set(hessians)
    q = tmp_path / "q_all.onnx"
    q.write_bytes(fp32.read_bytes())
    assert set(weight_only_int8(q, min_size=0, hessians=hessians)) >= set(hessians)
    ref, got = session(fp32), session(q)
    for feed in calibration:
        for a, b in zip(ref.run(None, feed), got.run(None, feed), strict=True):
            assert np.abs(a - b).max() < 0.05 * (np.abs(a).max() + 1e-6) + 1e-3


def test_without_validation_rows_the_last_weights_are_kept(tiny_cfg, tiny_corpus):
    from training.config import DataConfig
    from training.train import train

    cfg = tiny_cfg.model_copy(
        update={"epochs": 2, "data": DataConfig(tasks=["actionability"], max_rows=200)}
    )
    trained = train(cfg, tiny_corpus)
    assert trained.selected == "epoch 2 raw"
    # The validation rows of tasks not trained are not scored (they would only cost time).
    assert not any("val_" in key for row in trained.history for key in row)
    assert trained.temperatures["sentiment"] == 1.0


@pytest.mark.parametrize("form", ["asymmetric", "symmetric", "zero_point", "smooth"])
def test_per_token_int8_is_close_to_fp32_and_batch_invariant(tiny_model, tmp_path, form):
    """Per-token activation scales: int8 kernels replace the projections (the fused attention
    split into an int8 QKV projection + MultiHeadAttention), outputs stay close to fp32, and a
    post scores the same alone as padded into a batch with a much louder neighbour, which ONNX
    Runtime's per-batch dynamic quantization does not. With calibrated zero points the product
    is followed by one Mul and nothing else."""
    import numpy as np
    import onnx

    from training.export.calibrate import input_hessians, row_zero_points, smoothing_factors
    from training.export.graph import layer_norm_fed
    from training.export.quantize import per_token_int8, quantize
    from training.export.recipes import RECIPES
    from training.export.runtime import feeds, session

    model, tokenizer = tiny_model
    cfg = model.encoder.config
    fp32 = _fused_graph(tiny_model, tmp_path / "fp32.onnx")
    ops = lambda p: [n.op_type for n in onnx.load(str(p)).graph.node]  # noqa: E731
    assert "Attention" in ops(fp32), "the optimizer fused the attention"
    q = tmp_path / "pt.onnx"
    q.write_bytes(fp32.read_bytes())
    texts = ["my bag is lost", "thanks!!", "flight delayed again " * 6, "where is my refund"]
    calibration = feeds(tokenizer, texts, 64)[0]
    ln_fed = layer_norm_fed(fp32, ("MatMul", "Attention"))
    smooth = smoothing_factors(fp32, calibration, ln_fed, min_size=0) if form == "smooth" else None
    zero_points = (
        row_zero_points(fp32, calibration, min_size=0, smooth=smooth)
        if form in ("zero_point", "smooth")
        else None
    )
    done = per_token_int8(
        q,
        ops=("MatMul", "Attention"),
        min_size=0,
        asymmetric=form == "asymmetric",
        zero_points=zero_points,
        smooth=smooth,
        hessians=input_hessians(fp32, calibration, min_size=0) if form == "smooth" else None,
    )
    got_ops = ops(q)
    assert len(done) == got_ops.count("MatMulIntegerToFloat") > 0
    assert got_ops.count("ReduceMin") == (0 if form == "symmetric" else len(done))
    rewritten = [n for n in onnx.load(str(q)).graph.node if "/per_token/" in n.name]
    output_adds = [n for n in rewritten if n.op_type == "Add"]
    assert len(output_adds) == (len(done) if form == "asymmetric" else 0)
    if zero_points is not None:
        assert set(zero_points) == set(done) and all(1 <= z <= 254 for z in zero_points.values())
    smoothed = [n for n in rewritten if n.name.endswith("/per_token/smoothed")]
    if smooth is not None:
        # Every attention and every FFN input reads a LayerNorm output; the rest do not.
        assert set(smooth) == set(ln_fed) and len(ln_fed) == 2 * cfg.num_hidden_layers
        assert len(smoothed) == len(ln_fed)
    else:
        assert not smoothed
    assert "Attention" not in got_ops and "MultiHeadAttention" in got_ops
    assert "per token" in RECIPES["int8_per_token_qkv"].describe()
    assert "SmoothQuant" in RECIPES["int8_per_token_smooth"].describe()

    ref, pt = session(fp32), session(q)
    alone = [feeds(tokenizer, [t], 64)[0][0] for t in texts]
    for feed in alone:
        for a, b in zip(ref.run(None, feed), pt.run(None, feed), strict=True):
            assert np.abs(a - b).max() < 0.05 * (np.abs(a).max() + 1e-6) + 1e-3

    def batch_drift(sess) -> float:
        (batch,), order = feeds(tokenizer, texts, 64, batch_size=len(texts))
        together = sess.run(None, batch)
        drift = 0.0
        for row, i in enumerate(order):
            for a, b in zip(sess.run(None, alone[i]), together, strict=True):
                drift = max(drift, float(np.abs(a[0] - b[row]).max()))
        return drift

    assert batch_drift(pt) < 1e-5
    dyn = quantize(fp32, tmp_path / "dyn.onnx")
    assert batch_drift(session(dyn)) > 1e-4, "per-batch scales do move a post's scores"


@pytest.mark.parametrize(
    ("low_shares", "expected"),
    [
        ([0.5] * 10, (127, 128)),  # symmetric rows: the middle
        ([0.0] * 10, (1, 1)),  # rows never below zero: as low as it goes
        ([1.0] * 10, (254, 254)),  # rows never above zero: as high as it goes
        ([0.04] * 10, (10, 11)),  # GELU-like: 4% of the span below zero
        ([0.04] * 9 + [0.5], (12, 64)),  # one symmetric row in ten pulls it up, not to the middle
    ],
)
def test_best_zero_point(low_shares, expected):
    import numpy as np

    from training.export.calibrate import best_zero_point

    z = best_zero_point(np.array(low_shares))
    assert expected[0] <= z <= expected[1]


@pytest.mark.parametrize("class_weight", ["none", "inv"])
def test_row_weighted_loss(class_weight):
    """Unit row weights give torch's own (class-weighted) mean; a zero-weight row counts for
    nothing; ignored rows count for nothing whatever their weight."""
    import torch

    from training.config import TrainConfig
    from training.data import IGNORE
    from training.train import class_weights, loss_for

    torch.manual_seed(0)
    y = torch.tensor([0, 1, 2, 1, IGNORE, 0])
    logits = torch.randn(len(y), 3)
    cfg = TrainConfig(class_weight={"sentiment": class_weight})
    loss = loss_for("sentiment", y, 3, cfg)
    w = class_weights(y, 3, class_weight)
    plain = torch.nn.CrossEntropyLoss(weight=w, ignore_index=IGNORE)(logits, y)
    assert torch.allclose(loss(logits, y, torch.ones(len(y))), plain)
    rows = torch.tensor([1.0, 1.0, 1.0, 0.0, 5.0, 1.0])
    keep = torch.tensor([0, 1, 2, 5])
    without = torch.nn.CrossEntropyLoss(weight=w)(logits[keep], y[keep])
    assert torch.allclose(loss(logits, y, rows), without)


def test_distill_loss_is_hinton_kl_over_labelled_rows():
    """Zero when the student already matches the teacher; else torch's KL(teacher || student)
    at the temperature, times T², over the labelled rows with weight > 0 only."""
    import torch

    from training.data import IGNORE
    from training.distill import distill_loss

    torch.manual_seed(0)
    t = 2.0
    logits = torch.randn(5, 3)
    y = torch.tensor([0, IGNORE, 2, 1, 0])
    rows = torch.tensor([1.0, 7.0, 1.0, 1.0, 0.0])
    same = torch.softmax(logits / t, -1)
    assert distill_loss(logits, y, same, rows, t).item() == pytest.approx(0.0, abs=1e-6)
    soft = torch.softmax(torch.randn(5, 3), -1)
    keep = torch.tensor([0, 2, 3])
    expected = t**2 * torch.nn.functional.kl_div(
        torch.log_softmax(logits[keep] / t, -1), soft[keep], reduction="batchmean"
    )
    assert torch.allclose(distill_loss(logits, y, soft, rows, t), expected, atol=1e-6)


def test_teacher_probs_average_bundles_and_refuse_a_mismatch(tiny_bundle, tiny_corpus, tmp_path):
    """Two copies of one teacher average to that teacher's own tempered softmax; a teacher
    trained with another text normalizer is refused by name."""
    import shutil

    import numpy as np
    from transformers import PreTrainedTokenizerFast

    from features.calibration import softmax
    from features.text import DEFAULT_NORMALIZER, NORMALIZERS
    from training.distill import TeacherMismatch, teacher_probs
    from training.export.runtime import ort_predictor, session

    bundle = read_bundle(tiny_bundle)
    texts = list(tiny_corpus["train"]["text"])[:50]
    twice = [tiny_bundle, tiny_bundle]
    probs = teacher_probs(twice, texts, bundle.schema_, DEFAULT_NORMALIZER, 2.0)
    tok = PreTrainedTokenizerFast(tokenizer_file=str(bundle.tokenizer_path), pad_token="[PAD]")
    sess = session(bundle.onnx_path, config=bundle.meta.ort_session_config or None)
    logits = ort_predictor(sess, tok, bundle.schema_, bundle.meta.max_length)(texts)
    for task in bundle.schema_.names:
        assert probs[task].shape == (len(texts), len(bundle.schema_.task(task).labels))
        np.testing.assert_allclose(probs[task].numpy(), softmax(logits[task], 2.0), atol=1e-5)

    other = tmp_path / "other"
    shutil.copytree(tiny_bundle, other)
    meta = json.loads((other / "bundle.json").read_text())
    meta["normalizer"] = next(n for n in NORMALIZERS if n != DEFAULT_NORMALIZER)
    (other / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(TeacherMismatch, match="normalizes text"):
        teacher_probs([other], texts, bundle.schema_, DEFAULT_NORMALIZER, 2.0)


def _relabelled(corpus, seed: int):
    """The corpus with each task's labels shuffled among its labelled training rows."""
    from datasets import DatasetDict

    from training.data import IGNORE

    train = corpus["train"]
    cols = {}
    rng = random.Random(seed)
    for task in ("topic", "sentiment", "actionability"):
        ys = list(train[task])
        idx = [i for i, y in enumerate(ys) if y != IGNORE]
        vals = [ys[i] for i in idx]
        rng.shuffle(vals)
        for i, v in zip(idx, vals, strict=True):
            ys[i] = v
        cols[task] = ys
    for task, ys in cols.items():
        train = train.remove_columns(task).add_column(task, ys)
    return DatasetDict({**corpus, "train": train})


def _teacher(bundle, dest, **data):
    """A copy of ``bundle`` that records having been trained with DataConfig(**data)."""
    import shutil

    from training.config import DataConfig

    shutil.copytree(bundle, dest)
    meta = json.loads((dest / "bundle.json").read_text())
    meta["training"] = {"config": {"data": DataConfig(**data).model_dump(mode="json")}}
    (dest / "bundle.json").write_text(json.dumps(meta))
    return dest


@pytest.mark.parametrize(
    ("teacher_folds", "refused"),
    [
        ({}, None),  # the same test and validation folds: nothing held out leaks
        ({"complaints_test_fold": 3}, "folds \\[0, 1\\]"),  # trained on both of ours
        ({"complaints_val_fold": 5}, "folds \\[1\\]"),  # trained on our validation fold 1
        ({"complaints_val_fold": None}, "folds \\[1\\]"),
    ],
)
def test_teacher_trained_on_held_out_folds_is_refused(
    tiny_bundle, tiny_corpus, schema, tmp_path, teacher_folds, refused
):
    from features.text import DEFAULT_NORMALIZER
    from training.distill import TeacherMismatch, teacher_probs

    teacher = _teacher(tiny_bundle, tmp_path / "t", **teacher_folds)
    texts = list(tiny_corpus["train"]["text"])[:8]
    args = ([teacher], texts, schema, DEFAULT_NORMALIZER, 2.0)
    if refused is None:
        assert teacher_probs(*args, held_out={0, 1})["topic"].shape[0] == len(texts)
    else:
        with pytest.raises(TeacherMismatch, match=refused):
            teacher_probs(*args, held_out={0, 1})
    with pytest.raises(TeacherMismatch, match="records no training"):
        teacher_probs([tiny_bundle], texts, schema, DEFAULT_NORMALIZER, 2.0, held_out={0, 1})


def test_distillation_weights_labels_and_teacher_by_alpha(
    tiny_cfg, tiny_corpus, tiny_bundle, tmp_path
):
    """alpha 1: the teacher alone teaches, so shuffled labels train the very same weights;
    alpha 0: the teacher changes nothing against a run without one; in between, both count."""
    import torch

    from training.config import DistillConfig
    from training.train import train

    def weights(cfg, corpus):
        return train(cfg, corpus).model.state_dict()

    def same(a, b):
        return all(torch.equal(a[k], b[k]) for k in a)

    base = tiny_cfg.model_copy(update={"select_best": False, "ema_decay": None})
    shuffled = _relabelled(tiny_corpus, seed=1)
    teacher = _teacher(tiny_bundle, tmp_path / "teacher", **tiny_cfg.data.model_dump())
    teach = {"teachers": [teacher], "temperature": 2.0}
    only_teacher = base.model_copy(update={"distill": DistillConfig(**teach, alpha=1.0)})
    assert same(weights(only_teacher, tiny_corpus), weights(only_teacher, shuffled))
    no_teacher = base.model_copy(update={"distill": DistillConfig(**teach, alpha=0.0)})
    plain = weights(base, tiny_corpus)
    assert same(weights(no_teacher, tiny_corpus), plain)
    half = base.model_copy(update={"distill": DistillConfig(**teach, alpha=0.5)})
    assert not same(weights(half, tiny_corpus), plain)


def test_centred_rms_layer_norms_replace_layer_norms_exactly(tiny_model, tmp_path):
    """Every fused (Skip)LayerNorm becomes ReduceMean/Sub/SimplifiedLayerNormalization (faster
    on ONNX Runtime's CPU) and the graph computes the same logits, on padded batches too."""
    import numpy as np
    import onnx

    from training.export.graph import centered_rms_layer_norms
    from training.export.runtime import feeds, session

    model, tokenizer = tiny_model
    cfg = model.encoder.config
    fp32 = _fused_graph(tiny_model, tmp_path / "fp32.onnx")
    fast = tmp_path / "fast.onnx"
    fast.write_bytes(fp32.read_bytes())
    before = [n.op_type for n in onnx.load(str(fp32)).graph.node]
    done = centered_rms_layer_norms(fast)
    after = [n.op_type for n in onnx.load(str(fast)).graph.node]
    assert len(done) == before.count("SkipLayerNormalization") + before.count("LayerNormalization")
    assert len(done) >= 2 * cfg.num_hidden_layers
    assert "SkipLayerNormalization" not in after and "LayerNormalization" not in after
    assert after.count("SimplifiedLayerNormalization") == len(done)
    assert centered_rms_layer_norms(fast) == [], "a second pass finds nothing to rewrite"

    texts = ["my bag is lost", "thanks!!", "flight delayed again " * 6, "where is my refund"]
    (batch,), _ = feeds(tokenizer, texts, 64, batch_size=len(texts))
    for a, b in zip(session(fp32).run(None, batch), session(fast).run(None, batch), strict=True):
        assert a.shape == b.shape
        assert np.abs(a - b).max() < 1e-4


@pytest.mark.parametrize(
    ("topic_agreement", "says"),
    [(99.5, "chosen on validation agreement"), (99.1, "under the 99.3% validation margin")],
)
def test_model_card_says_when_the_recipe_missed_the_validation_margin(
    tiny_bundle, tmp_path, topic_agreement, says
):
    """A recipe forced with ``caretriage export --recipe`` may ship under the margin (the test
    checks still gate it); the card must not claim it was chosen by that margin."""
    import shutil

    from training.export.gate import ExportReport
    from training.pipeline import write_model_card

    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    meta = read_bundle(b).meta
    agree = {"topic": topic_agreement, "sentiment": 99.9, "actionability": 100.0}
    quant = {"recipe": "r", "validation_agreement": {"r": agree}, "validation_target": 99.3}
    report = ExportReport(0.0, agree, meta.metrics, meta.metrics, quant, 1.0, True)
    write_model_card(b, TrainConfig(tiny=True, base_model="unused"), meta.metrics, report)
    assert says in (b / "MODEL_CARD.md").read_text()
