"""Metrics on the fixed splits, computed from per-task logits so that PyTorch, ONNX fp32 and
ONNX int8 are judged by the very same code."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from datasets import DatasetDict
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from features.calibration import softmax
from features.schema import LabelSchema
from training.data import NON_TASK_COLUMNS

Logits = dict[str, np.ndarray]
Predictor = Callable[[Sequence[str]], Logits]
RANDOM_DOMAINS = ("random_tweet", "random_reply")


def _pct(x: float) -> float:
    return round(100.0 * float(x), 2)


def split_tables(corpus: DatasetDict, split: str) -> list[str]:
    """The corpus tables of ``split``: ``split`` itself and every ``<source>_<split>``."""
    return [k for k in corpus if k == split or k.endswith(f"_{split}")]


def eval_sets(
    corpus: DatasetDict, split: str = "test"
) -> dict[str, tuple[list[str], list[int], list[str]]]:
    """Per task: (texts, gold label ids, domains) of the rows that carry that task's label,
    gathered from every table of ``split`` (training.data names them), in table order. Tasks
    come sentiment, topic, actionability first (the order the shipped checks were made in),
    then a schema's further tasks; a task without rows is absent."""
    out: dict[str, tuple[list[str], list[int], list[str]]] = {}
    for name in split_tables(corpus, split):
        table = corpus[name]
        texts = table["text"]
        domains = table["domain"] if "domain" in table.column_names else None
        for task in [c for c in table.column_names if c not in NON_TASK_COLUMNS]:
            gold = table[task]
            keep = [i for i, y in enumerate(gold) if y >= 0]
            if not keep:
                continue
            t, g, d = out.setdefault(task, ([], [], []))
            t.extend(texts[i] for i in keep)
            g.extend(gold[i] for i in keep)
            d.extend(domains[i] if domains is not None else "" for i in keep)
    rank = {t: i for i, t in enumerate(("sentiment", "topic", "actionability"))}
    return {t: out[t] for t in sorted(out, key=lambda t: rank.get(t, len(rank)))}


def task_metrics(
    schema: LabelSchema, task: str, logits: np.ndarray, gold: Sequence[int], domains: Sequence[str]
) -> dict[str, float]:
    spec = schema.task(task)
    y = np.asarray(gold)
    pred = logits.argmax(-1)
    labels = list(range(len(spec.labels)))
    m = {
        "macro_f1": _pct(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "accuracy": _pct(accuracy_score(y, pred)),
        "n": float(len(y)),
    }
    if task == "actionability":
        probs = softmax(logits)
        pos = [spec.index(lbl) for lbl in spec.positive_labels]
        actionable = probs[:, pos].sum(-1) >= 0.5
        ci = spec.index("complaint") if "complaint" in spec.labels else pos[0]
        m["complaint_vs_rest_macro_f1"] = _pct(
            f1_score(y == ci, pred == ci, average="macro", zero_division=0)
        )
        is_c = y == ci
        m["complaints_flagged_actionable"] = _pct(actionable[is_c].mean()) if is_c.any() else 0.0
        rnd = np.isin(np.asarray(domains), RANDOM_DOMAINS)
        m["random_flagged_actionable"] = _pct(actionable[rnd].mean()) if rnd.any() else 0.0
    return m


def evaluate(
    predict: Predictor,
    schema: LabelSchema,
    corpus: DatasetDict,
    split: str = "test",
    tasks: Sequence[str] | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """Metrics per task (only ``tasks`` if given), and the logits they came from (for parity
    checks and plots)."""
    metrics: dict[str, dict[str, float]] = {}
    logits_by_task: dict[str, np.ndarray] = {}
    for task, (texts, gold, domains) in eval_sets(corpus, split).items():
        if not texts or (tasks is not None and task not in tasks):
            continue
        logits = predict(texts)[task]
        logits_by_task[task] = logits
        metrics[task] = task_metrics(schema, task, logits, gold, domains)
    return metrics, logits_by_task


def fit_temperature(logits: np.ndarray, gold: Sequence[int]) -> float:
    """The softmax temperature minimising validation NLL (a 1-D grid: robust, no optimiser)."""
    y = np.asarray(gold)
    best, best_nll = 1.0, np.inf
    for t in np.round(np.arange(0.5, 4.01, 0.05), 2):
        p = softmax(logits, float(t))[np.arange(len(y)), y]
        nll = -np.log(np.clip(p, 1e-12, None)).mean()
        if nll < best_nll:
            best, best_nll = float(t), nll
    return best


def confusion_figure(schema: LabelSchema, task: str, logits: np.ndarray, gold: Sequence[int]):
    """A labelled confusion matrix (row-normalised) as a matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = schema.task(task).labels
    cm = confusion_matrix(gold, logits.argmax(-1), labels=list(range(len(labels))))
    norm = cm / np.clip(cm.sum(1, keepdims=True), 1, None)
    size = 2.5 + 0.55 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                color="white" if norm[i, j] > 0.5 else "black",
                fontsize=8,
            )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{task} (counts; colour = row share)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def reliability_figure(task: str, logits: np.ndarray, gold: Sequence[int], temperature: float):
    """Calibration: accuracy against confidence in ten bins, before and after temperature."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = np.asarray(gold)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    for t, name in ((1.0, "raw"), (temperature, f"T={temperature:.2f}")):
        p = softmax(logits, t)
        conf, ok = p.max(-1), p.argmax(-1) == y
        bins = np.linspace(0, 1, 11)
        idx = np.clip(np.digitize(conf, bins) - 1, 0, 9)
        xs = [conf[idx == b].mean() for b in range(10) if (idx == b).any()]
        ys = [ok[idx == b].mean() for b in range(10) if (idx == b).any()]
        ax.plot(xs, ys, "o-", label=name)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{task} calibration (validation)")
    ax.legend()
    fig.tight_layout()
    return fig


# --- Error analysis (notebooks/02_error_analysis.ipynb; tests/test_analysis.py) -------------
# These take per-task probabilities, as the serving Scorer returns them, and return plain
# records (list of dicts) that a notebook turns into a DataFrame.


def probs_to_logits(probs: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Logits equivalent to calibrated probabilities ``p = softmax(z / T)``: ``T * log p`` differs
    from ``z`` by a per-row constant, which softmax ignores. So serving's outputs can go through
    the logit-based functions above (metrics, ``reliability_figure`` raw vs calibrated)."""
    return float(temperature) * np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, None))


def expected_calibration_error(probs: np.ndarray, gold: Sequence[int], bins: int = 10) -> float:
    """ECE in percent: the gap between confidence and accuracy, over equal-width confidence
    bins, weighted by how many predictions fall in each bin."""
    p = np.asarray(probs)
    y = np.asarray(gold)
    conf, ok = p.max(-1), p.argmax(-1) == y
    idx = np.clip(np.digitize(conf, np.linspace(0, 1, bins + 1)) - 1, 0, bins - 1)
    gap = sum(
        abs(ok[idx == b].mean() - conf[idx == b].mean()) * (idx == b).sum()
        for b in range(bins)
        if (idx == b).any()
    )
    return _pct(gap / max(len(y), 1))


def coverage_curve(
    probs: np.ndarray, gold: Sequence[int], thresholds: Sequence[float] | None = None
) -> list[dict[str, float]]:
    """The abstention trade-off: for each confidence threshold, the share of posts the model
    still answers (coverage) and its accuracy on them; the rest would go to a human."""
    p = np.asarray(probs)
    y = np.asarray(gold)
    conf, ok = p.max(-1), p.argmax(-1) == y
    ts = np.round(np.arange(0.0, 1.0, 0.05), 2) if thresholds is None else thresholds
    rows = []
    for t in ts:
        keep = conf >= t
        row = {
            "threshold": float(t),
            "coverage": _pct(keep.mean()) if len(y) else 0.0,
            "accuracy": _pct(ok[keep].mean()) if keep.any() else float("nan"),
            "n": int(keep.sum()),
        }
        rows.append(row)
    return rows


def errors_table(
    texts: Sequence[str],
    gold: Sequence[int],
    probs: np.ndarray,
    labels: Sequence[str],
    k: int = 10,
    domains: Sequence[str] | None = None,
) -> list[dict[str, object]]:
    """The ``k`` most confident wrong predictions: where the model is surely wrong, labels are
    often wrong or the taxonomy is ambiguous; both are worth reading before more training."""
    p = np.asarray(probs)
    y = np.asarray(gold)
    pred, conf = p.argmax(-1), p.max(-1)
    wrong = np.flatnonzero(pred != y)
    rows: list[dict[str, object]] = []
    for i in wrong[np.argsort(-conf[wrong], kind="stable")][:k]:
        row: dict[str, object] = {
            "text": texts[i],
            "gold": labels[y[i]],
            "predicted": labels[pred[i]],
            "confidence": round(float(conf[i]), 3),
            "p_gold": round(float(p[i, y[i]]), 3),
        }
        if domains is not None:
            row["domain"] = domains[i]
        rows.append(row)
    return rows


def group_errors(
    groups: Sequence[str],
    gold: Sequence[int],
    probs: np.ndarray,
    labels: Sequence[str],
    positive_labels: Sequence[str],
    threshold: float = 0.5,
) -> list[dict[str, object]]:
    """Per group (e.g. the complaints corpus' domain): accuracy, and how the binary decision
    "positive" (summed probability of ``positive_labels`` >= threshold, as serving flags
    actionable) goes wrong: false positives and misses, in percent of the group's posts."""
    p = np.asarray(probs)
    y = np.asarray(gold)
    g = np.asarray(groups)
    pos = [list(labels).index(lab) for lab in positive_labels]
    flagged = p[:, pos].sum(-1) >= threshold
    truth = np.isin(y, pos)
    ok = p.argmax(-1) == y
    rows: list[dict[str, object]] = []
    for name in sorted(set(g.tolist())):
        m = g == name
        row = {
            "group": name,
            "n": int(m.sum()),
            "accuracy": _pct(ok[m].mean()),
            "gold_positive": _pct(truth[m].mean()),
            "flagged_positive": _pct(flagged[m].mean()),
            "false_positive": _pct((flagged & ~truth)[m].mean()),
            "missed_positive": _pct((~flagged & truth)[m].mean()),
        }
        rows.append(row)
    return rows
