"""Lexical experts: their features are scikit-learn's TF-IDF, the in-graph blend computes what
the NumPy reference computes, and an expert is only kept where it lifts validation."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

from training import lexical as lx
from training.config import LexicalConfig


def _docs(rng: np.random.Generator, n: int, ids: np.ndarray) -> list[list[int]]:
    return [rng.choice(ids, size=rng.integers(1, 12)).tolist() for _ in range(n)]


def test_features_are_scikit_learns_tfidf():
    from sklearn.feature_extraction.text import TfidfVectorizer

    rng = np.random.default_rng(0)
    docs = _docs(rng, 200, np.arange(1000, 1060))
    sk = TfidfVectorizer(analyzer=lambda d: d, min_df=2, norm="l2", smooth_idf=True)
    want = sk.fit_transform(docs).toarray()
    vocab, idf = lx.vocabulary(docs, min_df=2)
    assert vocab.tolist() == sorted(sk.vocabulary_)
    order = [sk.vocabulary_[int(v)] for v in vocab]
    np.testing.assert_allclose(idf, sk.idf_[order], rtol=1e-3)  # stored as float16
    got = lx.tfidf(docs, vocab, sk.idf_[order]).toarray()
    np.testing.assert_allclose(got, want[:, order], atol=1e-12)


def _experts(rng: np.random.Generator, vocab: np.ndarray, widths: dict[str, int]):
    idf = lx._f16(rng.uniform(1.0, 5.0, len(vocab)))
    tasks = {
        t: lx.TaskExpert(
            coef=lx.as_stored(rng.normal(size=(len(vocab), k)), idf),
            intercept=rng.normal(size=k),
            weight=w,
            c=1.0,
            val_macro_f1=(0.0, 1.0),
        )
        for (t, k), w in zip(widths.items(), (0.4, 1.0), strict=False)
    }
    return lx.LexicalExperts(vocab, idf, tasks)


def test_the_graph_blend_computes_the_reference(tiny_bundle, tmp_path, schema):
    """Repeated pieces, ids past the feature map, padding, special tokens and a post with no
    feature at all (its expert logits are the intercepts) included."""
    import onnxruntime as ort

    from training.export.graph import output_names

    rng = np.random.default_rng(1)
    vocab = np.sort(rng.choice(np.arange(1000, 5000), size=300, replace=False))
    experts = _experts(rng, vocab, {"topic": 9, "sentiment": 3})
    posts = [
        [int(vocab[3])] * 4 + [int(vocab[7])],  # repeats
        [int(vocab[5]), 29000, 7, int(vocab[-1])],  # ids past the map, a non-feature id
        [2000 + k for k in range(0, 40, 2) if 2000 + k not in set(vocab.tolist())][:6],  # none
        rng.choice(vocab, 20).tolist(),
    ]
    width = max(len(p) for p in posts) + 2
    ids = np.zeros((len(posts), width), np.int64)
    mask = np.zeros_like(ids)
    for i, p in enumerate(posts):
        row = [101, *p, 102]  # [CLS] ... [SEP], then padding
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
    src = tiny_bundle / "model.onnx"
    blended = tmp_path / "blended.onnx"
    shutil.copy(src, blended)
    outputs = output_names(schema)
    assert lx.add_to_graph(blended, experts, outputs) == ["topic", "sentiment"]

    def run(path):
        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [outputs[t] for t in schema.names]
        got = s.run(names, {"input_ids": ids, "attention_mask": mask})
        return dict(zip(schema.names, got, strict=True))

    before, after = run(src), run(blended)
    for task, e in experts.tasks.items():
        ref = before[task] + e.weight * lx.log_softmax(experts.logits(task, posts))
        np.testing.assert_allclose(after[task], ref, atol=1e-4)
    np.testing.assert_array_equal(after["actionability"], before["actionability"])
    no_feature = experts.logits("topic", posts[2:3])[0]
    np.testing.assert_allclose(no_feature, experts.tasks["topic"].intercept)


def _separable(rng, n, k=3):
    """Each row carries the piece 2000 + its label: a bag of pieces predicts it exactly."""
    gold = rng.integers(0, k, n)
    noise = np.arange(3000, 3040)
    docs = [[2000 + int(y), *rng.choice(noise, 4).tolist()] for y in gold]
    return docs, gold.tolist()


def test_an_expert_is_kept_only_where_it_lifts_validation():
    rng = np.random.default_rng(2)
    train, val = _separable(rng, 300), _separable(rng, 90)
    cfg = LexicalConfig(tasks=["topic"], c_grid=[1.0])
    clueless = np.zeros((90, 3))
    perfect = 10.0 * np.eye(3)[val[1]]
    got = lx.fit_experts({"topic": train}, {"topic": (*val, clueless)}, {"topic": 3}, cfg)
    assert got is not None and list(got.tasks) == ["topic"]
    before, after = got.tasks["topic"].val_macro_f1
    assert after == 100.0 and after - before >= cfg.min_gain
    assert lx.fit_experts({"topic": train}, {"topic": (*val, perfect)}, {"topic": 3}, cfg) is None


def test_a_label_the_expert_never_saw_gets_no_vote():
    rng = np.random.default_rng(3)
    docs, gold = _separable(rng, 200, k=2)  # labels 0 and 1 only, of 4
    vocab, idf = lx.vocabulary(docs, 1)
    val_docs, val_gold = _separable(rng, 60, k=2)
    e = lx.fit_task(
        lx.tfidf(docs, vocab, idf),
        gold,
        lx.tfidf(val_docs, vocab, idf),
        val_gold,
        np.zeros((60, 4)),
        4,
        idf,
        LexicalConfig(c_grid=[1.0]),
    )
    assert e is not None
    z = np.asarray(lx.tfidf(val_docs, vocab, idf) @ e.coef + e.intercept)
    assert (z.argmax(-1) == np.asarray(val_gold)).all()
    assert (z[:, 2:] <= lx.ABSENT).all()


def test_build_bundle_blends_an_expert_where_validation_earns_it(
    tmp_path, schema, tiny_corpus, tiny_model
):
    """The synthetic topic rows name their topic, which a random tiny encoder cannot read but
    a bag of pieces can: the export adds the expert, records it, and its checks pass."""
    import onnx

    from features.bundle import read_bundle
    from training.export.bundle import build_bundle
    from training.export.config import ExportConfig
    from training.export.gate import ExportGate

    model, tokenizer = tiny_model
    config = ExportConfig(
        name="tiny",
        base_model="random-tiny-bert",
        max_length=64,
        temperatures={"topic": 1.0, "sentiment": 1.0, "actionability": 1.0},
        gate=ExportGate(int8_min_agreement=0.0, int8_max_metric_drop=100.0),
        lexical=LexicalConfig(tasks=["topic"]),
        precision="fp32",
    )
    report = build_bundle(model, tokenizer, schema, tiny_corpus, tmp_path / "b", config)
    assert report.passed, report.failures
    meta = read_bundle(tmp_path / "b").meta
    assert list(meta.lexical["tasks"]) == ["topic"]
    e = meta.lexical["tasks"]["topic"]
    assert e["val_macro_f1_with"] - e["val_macro_f1_without"] >= 0.3
    nodes = {n.name for n in onnx.load(str(tmp_path / "b" / "model.onnx")).graph.node}
    assert "lexical/topic/blend" in nodes and "lexical/sentiment/blend" not in nodes
