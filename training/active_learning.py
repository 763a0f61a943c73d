"""Does active learning pay? A simulation of evaluators with gold labels.

The labeling queue (``serving/labeling/queue.py``) orders posts by the served model's
uncertainty and greedy k-center over its sentence vectors (``features.active``). Whether that
saves evaluators' time is a question about the selection, not about the server, so it is
answered offline: the gold labels of a training split stand in for evaluators, and rounds of
labels are "bought" either at random or by the queue's own ``features.active.select``.

The learner inside the loop is logistic regression on frozen, mean-pooled, L2-normalized
MiniLM sentence vectors. Fine-tuning the encoder after every round would take hours per
curve on two cores; a linear head on frozen vectors refits in about a second, which is what
lets a benchmark run several seeds and strategies. The price: on a task where the frozen
vectors are weak (airline topic: 52.9 macro-F1 with every label, against 64.4 for the
fine-tuned model), the curves show what a linear head on them gains per label, not what the
fine-tuned model would.

Everything here is deterministic given a seed: the random seed set, random rounds, and
``select`` (which breaks ties by a stable sort) give identical curves on rerun.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score

from features import active
from training.config import REPO_ROOT, default_base_model, default_data_dir

CACHE_DIR = REPO_ROOT / "artifacts" / "active_learning"
DATASETS = ("banking77", "airline_topic")


# --------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class Splits:
    """A single-label classification task on fixed train/test splits: the train split is the
    unlabeled pool the simulated evaluators label from, the test split is never selected from."""

    name: str
    labels: list[str]
    train_texts: list[str]
    train_y: np.ndarray
    test_texts: list[str]
    test_y: np.ndarray


def load_banking77(data_dir: Path | None = None) -> Splits:
    """Banking77's official train/test (77 intents in ``category``, order of
    ``categories.json``). Texts are used as they are: they are bank queries, not tweets, so the
    tweet normalizer (handles, links) has nothing to do."""
    import pandas as pd

    d = (data_dir or default_data_dir()) / "banking77"
    labels = json.loads((d / "categories.json").read_text(encoding="utf-8"))
    index = {c: i for i, c in enumerate(labels)}
    parts = {}
    for split in ("train", "test"):
        df = pd.read_csv(d / f"{split}.csv", keep_default_na=False)
        parts[split] = (
            df["text"].astype(str).tolist(),
            np.array([index[c] for c in df["category"]], dtype=np.int64),
        )
    return Splits("banking77", labels, *parts["train"], *parts["test"])


def load_airline_topic(data_dir: Path | None = None) -> Splits:
    """The airline topic task exactly as training sees it (``training.data.airline``: the
    project's normalizer, ``negativereason`` mapped onto the schema's topics, "Can't Tell" and
    non-negative tweets left out), on the fixed train/test splits."""
    from features.schema import LabelSchema, default_schema_path
    from training.config import DataConfig
    from training.data import airline

    cfg = DataConfig(data_dir=data_dir or default_data_dir())
    schema = LabelSchema.load(default_schema_path())
    air = airline(cfg, schema)

    def rows(split: str) -> tuple[list[str], np.ndarray]:
        ds = air[split]
        keep = [(t, y) for t, y in zip(ds["text"], ds["topic"], strict=True) if y >= 0]
        return [t for t, _ in keep], np.array([y for _, y in keep], dtype=np.int64)

    return Splits("airline_topic", list(schema.task("topic").labels), *rows("train"), *rows("test"))


LOADERS: dict[str, Callable[[Path | None], Splits]] = {
    "banking77": load_banking77,
    "airline_topic": load_airline_topic,
}


# --------------------------------------------------------------------------------------------
# Frozen sentence vectors


def embed(
    texts: Sequence[str],
    model_dir: str | None = None,
    *,
    batch_size: int = 64,
    max_length: int = 256,
    threads: int = 2,
    desc: str = "embedding",
) -> np.ndarray:
    """Mean-pooled, L2-normalized MiniLM vectors (what sentence-transformers computes for
    all-MiniLM-L6-v2), float32, in the order of ``texts``.

    Batches are length-sorted so that padding costs little; ``threads`` keeps the job modest
    on a shared machine."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModel, AutoTokenizer

    path = model_dir or default_base_model()
    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    lengths = [
        len(ids) for ids in tok(list(texts), truncation=True, max_length=max_length)["input_ids"]
    ]
    order = np.argsort(lengths, kind="stable")
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.no_grad():
        for s in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch"):
            idx = order[s : s + batch_size]
            enc = tok(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[idx] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return out


def cache_key(texts: Sequence[str], model_dir: str, max_length: int) -> str:
    """A hash of everything the vectors depend on: the texts, in order, the encoder's weights
    (by file size and modification time, cheap and enough to notice a swapped package) and the
    truncation length."""
    h = hashlib.sha256()
    weights = Path(model_dir) / "model.safetensors"
    stamp = f"{weights.stat().st_size}:{int(weights.stat().st_mtime)}" if weights.is_file() else ""
    h.update(f"{Path(model_dir).name}|{stamp}|{max_length}|mean-l2\n".encode())
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def cached_embeddings(
    texts: Sequence[str],
    name: str,
    *,
    cache_dir: Path = CACHE_DIR,
    model_dir: str | None = None,
    max_length: int = 256,
    threads: int = 2,
) -> np.ndarray:
    """``embed`` with a ``.npy`` cache under ``cache_dir`` keyed by ``name`` and the content
    hash, so reruns of the benchmark skip the encoder (the slow part) entirely."""
    path_model = model_dir or default_base_model()
    f = cache_dir / f"{name}-{cache_key(texts, path_model, max_length)}.npy"
    if f.is_file():
        return np.load(f)
    x = embed(texts, path_model, max_length=max_length, threads=threads, desc=name)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(".tmp.npy")
    np.save(tmp, x)
    tmp.replace(f)
    return x


@dataclass(frozen=True)
class Embedded:
    """A task's splits with their sentence vectors."""

    splits: Splits
    x_train: np.ndarray
    x_test: np.ndarray


def subsample(s: Splits, max_train: int | None, max_test: int | None, seed: int = 0) -> Splits:
    """A random slice of each split (fixed ``seed``), for quick runs: Banking77's files are
    sorted by intent, so a head slice would hold a handful of intents only."""
    rng = np.random.default_rng(seed)

    def cut(texts: list[str], y: np.ndarray, m: int | None) -> tuple[list[str], np.ndarray]:
        if m is None or m >= len(y):
            return texts, y
        idx = np.sort(rng.choice(len(y), size=m, replace=False))
        return [texts[i] for i in idx], y[idx]

    return Splits(
        s.name,
        s.labels,
        *cut(s.train_texts, s.train_y, max_train),
        *cut(s.test_texts, s.test_y, max_test),
    )


def load_embedded(
    name: str,
    data_dir: Path | None = None,
    cache_dir: Path = CACHE_DIR,
    threads: int = 2,
    *,
    max_train: int | None = None,
    max_test: int | None = None,
) -> Embedded:
    """A task's splits and their (cached) vectors; ``max_train``/``max_test`` take a random
    slice first, which is also what gets embedded (a quick run never embeds the whole set)."""
    s = subsample(LOADERS[name](data_dir), max_train, max_test)
    return Embedded(
        s,
        cached_embeddings(s.train_texts, f"{name}-train", cache_dir=cache_dir, threads=threads),
        cached_embeddings(s.test_texts, f"{name}-test", cache_dir=cache_dir, threads=threads),
    )


# --------------------------------------------------------------------------------------------
# The simulation


class Learner(Protocol):
    classes_: np.ndarray

    def fit(self, x: np.ndarray, y: np.ndarray) -> Any: ...
    def predict(self, x: np.ndarray) -> np.ndarray: ...
    def predict_proba(self, x: np.ndarray) -> np.ndarray: ...
    def set_params(self, **params: Any) -> Any: ...


def logistic_regression(c: float = 10.0, max_iter: int = 2000) -> LogisticRegression:
    """The learner in the loop: multinomial logistic regression, lbfgs run to convergence.
    C=10 gave the best full-data test macro-F1 of C in 1 / 10 / 100 on both tasks (Banking77
    90.8 / 92.9 / 92.7, airline topic 46.8 / 52.9 / 48.3)."""
    return LogisticRegression(C=c, max_iter=max_iter, tol=1e-4)


@dataclass(frozen=True)
class Strategy:
    """How each round's labels are chosen.

    ``random``: uniformly from the unlabeled pool (what labeling without a queue does).
    ``queue``: the queue's selection, ``features.active.select`` over the learner's
    uncertainty on the unlabeled pool and the sentence vectors, seeded by the labeled set's
    vectors, with its ``method``, ``pool_factor``, ``diversity_weight`` and ``diversify``
    (greedy k-center, what the queue ships, or uncertainty-weighted k-means).
    ``start`` is how the first ``seed_size`` labels are chosen: ``random``, or ``kcenter``
    (greedy k-center over all vectors, i.e. ``select`` with equal uncertainties and weight 1:
    what the queue does before any model exists)."""

    name: str
    kind: Literal["random", "queue"] = "queue"
    method: active.Method = "margin"
    pool_factor: float = 4.0
    diversity_weight: float = 0.5
    diversify: active.Diversify = "kcenter"
    start: Literal["random", "kcenter"] = "random"

    def describe(self) -> str:
        if self.kind == "random":
            return "random"
        how = "k-center" if self.diversify == "kcenter" else "k-means"
        text = f"{self.method}, pool x{self.pool_factor:g}, {how}, weight {self.diversity_weight:g}"
        return text + (", k-center start" if self.start == "kcenter" else "")


RANDOM = Strategy("random", kind="random")
# What the queue ships with (serving settings: margin, weight 0.5; queue.py: pool x4).
QUEUE_DEFAULT = Strategy("queue default", method="margin", pool_factor=4.0, diversity_weight=0.5)
# The colleague's earlier measurement: the 400 smallest margins thinned by pure k-center.
MARGIN_KCENTER = Strategy("margin x4 k-center", pool_factor=4.0, diversity_weight=1.0)
# The best variant measured (benchmarks/active_learning.py lists them): the 1,000 smallest
# margins cut into 100 clusters by k-means weighted by uncertainty, the most central member of
# each (Zhdanov 2019).
MARGIN_KMEANS = Strategy(
    "margin x10 k-means", pool_factor=10.0, diversity_weight=0.0, diversify="kmeans"
)


@dataclass
class Curve:
    """One strategy, one seed: the metrics after each round, and which pool indices each round
    labeled (the seed set first), for bookkeeping checks."""

    strategy: str
    seed: int
    labels: list[int] = field(default_factory=list)
    macro_f1: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    rounds: list[list[int]] = field(default_factory=list)
    seconds: float = 0.0


def _metrics(learner: Learner, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    pred = learner.predict(x)
    return (
        100.0 * float(f1_score(y, pred, average="macro", zero_division=0)),
        100.0 * float(accuracy_score(y, pred)),
    )


def pick(
    strategy: Strategy,
    learner: Learner | None,
    x_pool: np.ndarray,
    labeled_mask: np.ndarray,
    k: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """The next ``k`` pool indices to label (never one already labeled).

    With a learner, the queue strategy scores only the unlabeled rows (as the queue only ranks
    open items) and maps ``select``'s positions back to pool indices."""
    free = np.flatnonzero(~labeled_mask)
    k = min(k, len(free))
    if k == 0:
        return np.empty(0, dtype=np.int64)
    if strategy.kind == "random" or learner is None:
        if learner is None and strategy.start == "kcenter":
            order = active.select(
                np.ones(len(free)), x_pool[free], k, None, pool_factor=1e9, diversity_weight=1.0
            )
            return free[np.asarray(order, dtype=np.int64)]
        return np.sort(rng.choice(free, size=k, replace=False))
    probs = learner.predict_proba(x_pool[free])
    u = (
        active.task_uncertainty(probs, strategy.method)
        if probs.shape[1] >= 2
        else np.ones(len(free))
    )
    labeled = x_pool[labeled_mask] if labeled_mask.any() else None
    order = active.select(
        u,
        x_pool[free],
        k,
        labeled,
        pool_factor=strategy.pool_factor,
        diversity_weight=strategy.diversity_weight,
        diversify=strategy.diversify,
    )
    return free[np.asarray(order, dtype=np.int64)]


def simulate(
    x_pool: np.ndarray,
    y_pool: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    strategy: Strategy,
    *,
    seed: int,
    seed_size: int = 100,
    batch: int = 100,
    budget: int = 3000,
    make_learner: Callable[[], Learner] = logistic_regression,
    warm_start: bool = False,
) -> Curve:
    """Label ``seed_size`` items, then rounds of ``batch`` until ``budget`` labels, refitting
    the learner after each round and scoring it on the test split.

    The seed set is drawn from ``seed`` alone (not from the strategy), so that for a given
    seed every strategy with a random start begins from the very same labels: the curves
    differ by the selection only. Rounds draw from a second generator for the same reason.

    ``warm_start`` starts each fit from the previous round's weights when the labeled set
    still has the same classes: the L2-regularized objective is convex, so it converges to
    the same optimum, within the solver's tolerance, in about half the iterations. Within
    tolerance is not identical, though: it moved Banking77's crossing points by about as much
    as a change of seed. Off, every round fits a fresh learner."""
    n = len(y_pool)
    budget = min(budget, n)
    labeled = np.zeros(n, dtype=bool)
    curve = Curve(strategy.name, seed)
    start_rng = np.random.default_rng([seed, 0])
    round_rng = np.random.default_rng([seed, 1])
    t0 = time.perf_counter()
    learner: Learner | None = None
    start = strategy if strategy.start == "kcenter" else RANDOM
    idx = pick(start, None, x_pool, labeled, min(seed_size, budget), start_rng)
    while len(idx):
        if labeled[idx].any() or len(np.unique(idx)) != len(idx):
            raise AssertionError("a selection picked an item twice")
        labeled[idx] = True
        curve.rounds.append([int(i) for i in idx])
        y = y_pool[labeled]
        classes = np.unique(y)
        if len(classes) >= 2:
            if learner is None or not (warm_start and np.array_equal(learner.classes_, classes)):
                learner = make_learner()
            else:
                learner.set_params(warm_start=True)
            learner.fit(x_pool[labeled], y)
            f1, acc = _metrics(learner, x_test, y_test)
        else:  # one class only: nothing to fit, it is predicted everywhere
            learner = None
            f1, acc = _constant_metrics(int(y[0]), y_test)
        curve.labels.append(int(labeled.sum()))
        curve.macro_f1.append(round(f1, 3))
        curve.accuracy.append(round(acc, 3))
        k = min(batch, budget - int(labeled.sum()))
        # Without a fitted learner there is no uncertainty: that round is drawn at random.
        idx = pick(strategy if learner else RANDOM, learner, x_pool, labeled, k, round_rng)
    curve.seconds = round(time.perf_counter() - t0, 2)
    return curve


def _constant_metrics(label: int, y_test: np.ndarray) -> tuple[float, float]:
    pred = np.full(len(y_test), label)
    return (
        100.0 * float(f1_score(y_test, pred, average="macro", zero_division=0)),
        100.0 * float(accuracy_score(y_test, pred)),
    )


# --------------------------------------------------------------------------------------------
# Reading the curves


def labels_to_reach(labels: Sequence[int], scores: Sequence[float], target: float) -> float | None:
    """Labels at which a curve first reaches ``target``, interpolated linearly between the
    round before and the round that reached it (rounds are 100 labels apart, so the round
    itself would quantize every answer to 100). None if it never does."""
    for i, (n, s) in enumerate(zip(labels, scores, strict=True)):
        if s >= target:
            if i == 0:
                return float(n)
            n0, s0 = labels[i - 1], scores[i - 1]
            return float(n0 + (n - n0) * (target - s0) / (s - s0))
    return None


def mean_curve(curves: Sequence[Curve], metric: str = "macro_f1") -> tuple[np.ndarray, ...]:
    """Label counts, mean and standard deviation over seeds (curves cut to the shortest)."""
    m = min(len(c.labels) for c in curves)
    vals = np.array([getattr(c, metric)[:m] for c in curves], dtype=np.float64)
    return np.array(curves[0].labels[:m]), vals.mean(0), vals.std(0)


def summarize(curves: Sequence[Curve], reference_f1: float, share: float = 0.95) -> dict:
    """Per strategy: labels to reach ``share`` of the full-data macro-F1, per seed and their
    mean, the same read off the mean curve, and the macro-F1 every 500 labels.

    The mean is given only when every seed reaches the target within the budget; otherwise
    ``labels_to_target_lower_bound`` counts the seeds that did not at the budget (the true mean
    is at least that). The saving against random is exact when both means are, a lower bound
    (``saving_is_lower_bound``) when only random's is a bound, and missing otherwise."""
    target = share * reference_f1
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(c.strategy for c in curves):
        mine = [c for c in curves if c.strategy == name]
        per_seed = [labels_to_reach(c.labels, c.macro_f1, target) for c in mine]
        reached = [v for v in per_seed if v is not None]
        complete = len(reached) == len(mine)
        n, mu, _ = mean_curve(mine)
        bounded = [
            v if v is not None else float(c.labels[-1]) for v, c in zip(per_seed, mine, strict=True)
        ]
        out[name] = {
            "seeds": [c.seed for c in mine],
            "labels_to_target_per_seed": per_seed,
            "seeds_reaching_target": len(reached),
            "labels_to_target_mean": float(np.mean(reached)) if complete else None,
            "labels_to_target_std": float(np.std(reached)) if complete else None,
            "labels_to_target_lower_bound": None if complete else float(np.mean(bounded)),
            "labels_to_target_mean_curve": labels_to_reach(list(n), list(mu), target),
            # Macro-F1 (mean over seeds) every 500 labels: where a curve never reaches the
            # target, this is what there is to compare.
            "macro_f1_at": {
                str(int(m)): round(float(v), 2) for m, v in zip(n, mu, strict=True) if m % 500 == 0
            },
            "labels_to_90pct_mean_curve": labels_to_reach(list(n), list(mu), 0.90 * reference_f1),
            "final_labels": int(n[-1]),
            "final_macro_f1": round(float(mu[-1]), 2),
            "best_macro_f1": round(float(mu.max()), 2),
            "seconds_per_curve": round(float(np.mean([c.seconds for c in mine])), 1),
        }
    rnd = out.get(RANDOM.name, {})
    base = rnd.get("labels_to_target_mean") or rnd.get("labels_to_target_lower_bound")
    for v in out.values():
        mine_mean = v["labels_to_target_mean"]
        ok = base and mine_mean is not None
        v["saving_vs_random_pct"] = round(100.0 * (1.0 - mine_mean / base), 1) if ok else None
        v["saving_is_lower_bound"] = bool(ok and rnd.get("labels_to_target_mean") is None)
    return {
        "reference_macro_f1": round(reference_f1, 2),
        "target_macro_f1": round(target, 2),
        "share": share,
        "strategies": out,
    }


def full_data_reference(
    data: Embedded, make_learner: Callable[[], Learner] = logistic_regression
) -> dict[str, float]:
    """The learner fitted on every training label: the ceiling the curves are read against."""
    m = make_learner()
    m.fit(data.x_train, data.splits.train_y)
    f1, acc = _metrics(m, data.x_test, data.splits.test_y)
    return {"macro_f1": round(f1, 3), "accuracy": round(acc, 3), "labels": len(data.splits.train_y)}


def run_curves(
    data: Embedded,
    strategies: Iterable[Strategy],
    seeds: Iterable[int],
    *,
    seed_size: int = 100,
    batch: int = 100,
    budget: int = 3000,
    make_learner: Callable[[], Learner] = logistic_regression,
    warm_start: bool = False,
    progress: bool = True,
) -> list[Curve]:
    """Every strategy over every seed, on one task."""
    from tqdm.auto import tqdm

    jobs = [(s, seed) for seed in seeds for s in strategies]
    curves = []
    for s, seed in tqdm(jobs, desc=data.splits.name, unit="curve", disable=not progress):
        curves.append(
            simulate(
                data.x_train,
                data.splits.train_y,
                data.x_test,
                data.splits.test_y,
                s,
                seed=seed,
                seed_size=seed_size,
                batch=batch,
                budget=budget,
                make_learner=make_learner,
                warm_start=warm_start,
            )
        )
    return curves


def curves_to_json(curves: Sequence[Curve], with_rounds: bool = False) -> list[dict]:
    out = []
    for c in curves:
        d = asdict(c)
        if not with_rounds:
            d.pop("rounds")
        out.append(d)
    return out


def curves_from_json(rows: Sequence[dict]) -> list[Curve]:
    return [Curve(**r) for r in rows]


def plot(results: dict[str, dict], path: Path | None = None):
    """Macro-F1 against labels, mean ± std over seeds per strategy, one panel per task, with
    the full-data reference and the 95% target as horizontal lines."""
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, len(names), figsize=(6.5 * len(names), 4.6), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        res = results[name]
        curves = curves_from_json(res["curves"])
        for strategy in dict.fromkeys(c.strategy for c in curves):
            n, mu, sd = mean_curve([c for c in curves if c.strategy == strategy])
            (line,) = ax.plot(n, mu, label=strategy, lw=1.6)
            ax.fill_between(n, mu - sd, mu + sd, color=line.get_color(), alpha=0.18, lw=0)
        ref = res["summary"]["reference_macro_f1"]
        ax.axhline(
            ref,
            color="k",
            lw=0.8,
            ls="--",
            label=f"all {res['reference']['labels']:,} labels ({ref:.1f})",
        )
        ax.axhline(
            res["summary"]["target_macro_f1"],
            color="grey",
            lw=0.8,
            ls=":",
            label=f"{res['summary']['share']:.0%} of it",
        )
        ax.set_title(f"{name}: test macro-F1, frozen MiniLM + logistic regression")
        ax.set_xlabel("labels")
        ax.set_ylabel("macro-F1")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        RANDOM,
        QUEUE_DEFAULT,
        MARGIN_KCENTER,
        MARGIN_KMEANS,
    )
}
# What the benchmark runs by default (random first: the savings are measured against it).
BENCHMARK_STRATEGIES = ("random", "queue default", "margin x4 k-center", "margin x10 k-means")


def benchmark(
    data: Embedded,
    strategies: Sequence[Strategy],
    seeds: Sequence[int],
    *,
    seed_size: int = 100,
    batch: int = 100,
    budget: int = 3000,
    share: float = 0.95,
    make_learner: Callable[[], Learner] = logistic_regression,
    warm_start: bool = False,
) -> dict[str, Any]:
    """One task: the full-data reference, every strategy's curves over ``seeds`` and their
    summary, as a JSON-ready dict (what ``plot`` and the notebook read)."""
    ref = full_data_reference(data, make_learner)
    curves = run_curves(
        data,
        strategies,
        seeds,
        seed_size=seed_size,
        batch=batch,
        budget=budget,
        make_learner=make_learner,
        warm_start=warm_start,
    )
    return {
        "reference": ref,
        "budget": budget,
        "pool_size": len(data.splits.train_y),
        "test_size": len(data.splits.test_y),
        "classes": len(data.splits.labels),
        "strategies": {s.name: s.describe() for s in strategies},
        "summary": summarize(curves, ref["macro_f1"], share),
        "curves": curves_to_json(curves),
    }
