"""The scorer: results independent of batching, padding per batch, truncation, temperatures."""

from __future__ import annotations

import json
import random
import shutil
import threading

import numpy as np
import pytest

from features.bundle import BundleError, read_bundle
from features.calibration import softmax
from serving.inference import Scorer, cgroup_cpu_limit, plan_batches, usable_cores
from tests._tiny_onnx import build_onnx_bundle

TEXTS = [
    "@united my bag never arrived, 3 days now http://t.co/abc",
    "thanks for the upgrade!",
    "flight UA123 delayed again " * 30,  # longer than max_length: truncated
    "ok",
    "Can someone help me rebook? I was on the cancelled 6am flight to Denver &amp; nobody answers",
    "worst. airline. ever.",
    "é ü 漢字 🙂",
    "lost luggage " * 5,
    "x",
]


@pytest.fixture(scope="module")
def scorer(onnx_bundle):
    s = Scorer.from_dir(onnx_bundle)
    s.warmup()
    return s


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for t in a:
        np.testing.assert_allclose(a[t], b[t], atol=1e-5, rtol=0)


def test_shapes_and_probabilities(scorer, onnx_bundle):
    probs = scorer.predict(TEXTS)
    schema = read_bundle(onnx_bundle).schema_
    assert list(probs) == schema.names
    for t in schema.tasks:
        p = probs[t.name]
        assert p.shape == (len(TEXTS), len(t.labels))
        assert np.all(p >= 0)
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-9)


def test_empty_input(scorer):
    assert all(v.shape[0] == 0 for v in scorer.predict([]).values())


@pytest.mark.parametrize(("max_tokens", "max_size"), [(1, 1), (64, 2), (100, 3), (10_000, 64)])
def test_independent_of_batch_caps(onnx_bundle, scorer, max_tokens, max_size):
    alone = {t: np.stack([scorer.predict([x])[t][0] for x in TEXTS]) for t in scorer.tasks}
    capped = Scorer.from_dir(onnx_bundle, max_batch_tokens=max_tokens, max_batch_size=max_size)
    assert_same(capped.predict(TEXTS), alone)


def test_independent_of_order_and_company(scorer):
    base = scorer.predict(TEXTS)
    order = list(range(len(TEXTS)))
    random.Random(7).shuffle(order)
    shuffled = scorer.predict([TEXTS[i] for i in order])
    assert_same({t: p[np.argsort(order)] for t, p in shuffled.items()}, base)
    # The same post in other company (a different padded length) scores the same.
    with_long = scorer.predict([TEXTS[3], TEXTS[2]])
    assert_same({t: p[:1] for t, p in with_long.items()}, {t: p[3:4] for t, p in base.items()})


def test_batches_sorted_and_padded_to_their_longest(onnx_bundle, monkeypatch):
    s = Scorer.from_dir(onnx_bundle, max_batch_tokens=40, max_batch_size=3, workers=1)
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    real_run = s.session.run

    def spy(names, feed):
        seen.append((feed["input_ids"], feed["attention_mask"]))
        return real_run(names, feed)

    monkeypatch.setattr(s.session, "run", spy)
    ids = s.encode(TEXTS)
    s.predict_encoded(ids)
    lengths = sorted((len(x) for x in ids), reverse=True)
    flat: list[int] = []
    for input_ids, mask in seen:
        rows = mask.sum(axis=1)
        assert input_ids.shape[1] == rows.max()  # padded to the batch's longest, no further
        assert input_ids.shape[0] <= 3
        assert input_ids.shape[0] == 1 or input_ids.size <= 40
        assert np.all(input_ids[mask == 0] == s.meta.pad_token_id)
        assert all(mask[r, : rows[r]].all() for r in range(len(rows)))  # right padding
        flat += rows.tolist()
    assert flat == lengths  # longest first, every post exactly once


def test_plan_batches_covers_each_item_once_within_caps():
    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(1, 64) for _ in range(rng.randint(0, 40))]
        cap, size = rng.randint(1, 300), rng.randint(1, 8)
        batches = plan_batches(lengths, cap, size)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        for b in batches:
            assert len(b) <= size
            assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= cap


def test_truncation_at_max_length_and_no_fixed_padding(scorer):
    ids = scorer.encode(["delay " * 500, "hi"])
    assert len(ids[0]) == scorer.meta.max_length
    assert ids[0][-1] == scorer.tokenizer.token_to_id("[SEP]")  # special tokens kept
    assert len(ids[1]) == 3  # [CLS] hi [SEP]: the file's fixed padding to 128 is off


def test_text_is_normalized_before_tokenizing(scorer):
    a = scorer.encode(["@delta see https://x.co/1 &amp; more"])
    b = scorer.encode(["@user see http & more"])
    assert a == b


def test_the_bundles_normalizer_is_applied(tmp_path):
    """A bundle trained before emoji were spelled out (tweet-v1) is served with tweet-v1."""
    old = Scorer.from_dir(build_onnx_bundle(tmp_path / "v1", normalizer="tweet-v1"))
    new = Scorer.from_dir(build_onnx_bundle(tmp_path / "v2", normalizer="tweet-v2"))
    unk = old.tokenizer.token_to_id("[UNK]")
    assert unk in old.encode(["late again 😡"])[0]
    assert unk not in new.encode(["late again 😡"])[0]
    assert new.encode(["late again 😡"]) == new.encode(["late again :pouting face:"])


def test_temperatures_applied(tmp_path, scorer):
    temps = {"topic": 2.0, "sentiment": 0.5}
    hot = Scorer.from_dir(build_onnx_bundle(tmp_path / "t", temperatures=temps))
    p1, pt = scorer.predict(TEXTS), hot.predict(TEXTS)
    for task in scorer.tasks:
        t = temps.get(task, 1.0)
        # softmax(z / T) is proportional to softmax(z) ** (1 / T).
        expected = p1[task] ** (1 / t)
        expected /= expected.sum(axis=1, keepdims=True)
        np.testing.assert_allclose(pt[task], expected, atol=1e-6)


def test_softmax_is_stable():
    p = softmax(np.array([[1000.0, 0.0, -1000.0], [-1e4, -1e4, -1e4]]))
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p[0], [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(p[1], [1 / 3] * 3)


def test_warmup_marks_warm(onnx_bundle):
    s = Scorer.from_dir(onnx_bundle)
    assert not s.warm
    s.warmup()
    assert s.warm


def _edit_meta(src, dst, **changes):
    shutil.copytree(src, dst)
    meta = json.loads((dst / "bundle.json").read_text())
    meta.update(changes)
    (dst / "bundle.json").write_text(json.dumps(meta))
    return dst


def test_mismatched_output_names_fail_at_load(onnx_bundle, tmp_path):
    meta = json.loads((onnx_bundle / "bundle.json").read_text())
    bad = _edit_meta(onnx_bundle, tmp_path / "b", outputs={**meta["outputs"], "topic": "nope"})
    with pytest.raises(BundleError, match="lacks outputs"):
        Scorer.from_dir(bad)


def test_mismatched_input_names_fail_at_load(onnx_bundle, tmp_path):
    bad = _edit_meta(onnx_bundle, tmp_path / "b", inputs=["input_ids"])
    with pytest.raises(BundleError, match="do not match"):
        Scorer.from_dir(bad)


def test_scores_a_bundle_from_the_real_export(tiny_bundle):
    """The export path (torch -> ONNX int8) and this scorer agree on the contract, and no int8
    recipe the gate may choose lets a post's scores depend on the posts batched with it."""
    s = Scorer.from_dir(tiny_bundle, max_batch_tokens=64)
    s.warmup()
    probs = s.predict(TEXTS)
    for t in s.tasks:
        assert probs[t].shape == (len(TEXTS), len(s.labels[t]))
        np.testing.assert_allclose(probs[t].sum(axis=1), 1.0, atol=1e-6)
    alone = {t: np.stack([s.predict([x])[t][0] for x in TEXTS]) for t in s.tasks}
    same = s.predict([TEXTS[1], TEXTS[1]])
    for t in s.tasks:
        np.testing.assert_allclose(probs[t], alone[t], atol=1e-5)
        np.testing.assert_allclose(same[t][0], alone[t][1], atol=1e-6)


def test_self_check_passes_here_and_flags_a_machine_that_differs(tiny_bundle, tmp_path, caplog):
    """The export records its outputs for a few posts; the scorer reproduces them on the same
    machine, and reports (and logs) a bundle whose recorded outputs it does not reproduce."""
    import shutil

    from features.bundle import read_bundle, write_meta

    s = Scorer.from_dir(tiny_bundle)
    assert s.self_check is None
    s.warmup()
    assert s.self_check is not None and s.self_check["passed"], s.self_check
    assert s.self_check["max_abs_diff"] < 1e-4

    other = tmp_path / "other"
    shutil.copytree(tiny_bundle, other)
    meta = read_bundle(other).meta
    check = meta.self_check
    assert check is not None and len(check.texts) >= 8
    task = next(iter(check.logits))
    check.logits[task] = [[-x for x in row] for row in check.logits[task]]  # other argmaxes
    write_meta(other, meta)
    s = Scorer.from_dir(other)
    with caplog.at_level("WARNING", logger="caretriage.serving"):
        s.warmup()
    assert s.warm and s.self_check is not None and not s.self_check["passed"]
    assert s.self_check["agreement"][task] < 100.0
    assert "self-check" in caplog.text


@pytest.mark.parametrize(
    ("lengths", "max_tokens", "max_size", "min_batches", "sizes"),
    [
        ([5] * 8, 10_000, 8, 1, [8]),
        ([5] * 8, 10_000, 8, 2, [4, 4]),  # spread over the workers
        ([5] * 9, 10_000, 8, 2, [5, 4]),
        ([5] * 32, 10_000, 8, 2, [8, 8, 8, 8]),  # the size cap still holds
        ([5], 10_000, 8, 2, [1]),  # one post: one run
        ([5] * 3, 10_000, 8, 4, [1, 1, 1]),
        ([10, 1, 1, 1], 12, 8, 1, [1, 3]),  # the token cap: the long post alone
        ([], 10_000, 8, 2, []),
    ],
)
def test_plan_batches(lengths, max_tokens, max_size, min_batches, sizes):
    batches = plan_batches(lengths, max_tokens, max_size, min_batches)
    assert [len(b) for b in batches] == sizes
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    firsts = [lengths[b[0]] for b in batches]
    assert firsts == sorted(firsts, reverse=True)  # longest first


def test_parallel_runs_use_several_threads_and_match_one_run(onnx_bundle, monkeypatch):
    """workers > 1: batches run concurrently on different threads (the first two meet at a
    barrier, which only two threads at once can pass) and the scores equal one-at-a-time."""
    one = Scorer.from_dir(onnx_bundle, workers=1)
    par = Scorer.from_dir(onnx_bundle, workers=2, max_batch_size=2)
    assert par.workers == 2 and par.intra_op_threads >= 1
    barrier = threading.Barrier(2, timeout=20)
    threads: list[int] = []
    real_run = par._run

    def spy(ids):
        threads.append(threading.get_ident())
        if len(threads) <= 2:
            barrier.wait()
        return real_run(ids)

    monkeypatch.setattr(par, "_run", spy)
    assert_same(par.predict(TEXTS), one.predict(TEXTS))
    assert len(threads) == len(plan_batches([len(x) for x in par.encode(TEXTS)], 8192, 2, 2))
    assert len(set(threads)) == 2
    par.close()
    one.close()


def test_a_failed_parallel_run_fails_the_call_not_the_scorer(onnx_bundle, monkeypatch):
    s = Scorer.from_dir(onnx_bundle, workers=2, max_batch_size=1)
    expected = s.predict(TEXTS)
    real_run = s._run
    calls = 0

    def flaky(ids):
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("boom")
        return real_run(ids)

    monkeypatch.setattr(s, "_run", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        s.predict(TEXTS)
    assert_same(s.predict(TEXTS), expected)
    s.close()


@pytest.mark.parametrize(
    ("content", "limit"),
    [("max 100000\n", None), ("200000 100000\n", 2.0), ("150000 100000", 1.5), ("junk", None)],
)
def test_cgroup_cpu_limit(tmp_path, content, limit):
    f = tmp_path / "cpu.max"
    f.write_text(content)
    assert cgroup_cpu_limit(str(f)) == limit
    assert cgroup_cpu_limit(str(tmp_path / "absent")) is None


def test_usable_cores_respects_a_cgroup_quota(monkeypatch):
    import serving.inference as inference

    monkeypatch.setattr(inference.os, "sched_getaffinity", lambda pid: set(range(64)))
    monkeypatch.setattr(inference, "cgroup_cpu_limit", lambda: 1.5)
    assert usable_cores() == 2
    monkeypatch.setattr(inference, "cgroup_cpu_limit", lambda: None)
    assert usable_cores() == 64


def test_the_exported_graph_gives_the_sentence_embedding(tiny_bundle, onnx_bundle):
    """The export names the heads' pooled input as an output: the queue's diversity vector.
    Asking for it changes no logit; a bundle without it embeds nothing."""
    s = Scorer.from_dir(tiny_bundle)
    assert s.meta.embedding_output == "embedding"
    texts = ["my bag is lost", "thanks for the flight", "my bag is lost"]
    before = s.predict(texts)
    e = s.embed(texts)
    assert e is not None and e.shape[0] == 3 and e.shape[1] > 8 and np.isfinite(e).all()
    assert np.allclose(e[0], e[2]) and not np.allclose(e[0], e[1])
    after = s.predict(texts)
    assert all(np.array_equal(before[t], after[t]) for t in before)
    assert Scorer.from_dir(onnx_bundle).embed(texts) is None
