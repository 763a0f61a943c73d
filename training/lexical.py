"""Lexical experts: per task, a TF-IDF logistic regression over the encoder's own word pieces,
blended into the transformer's logits inside the exported graph.

A bag of word pieces sees what mean-pooled contextual vectors blur (a rare topic's keywords:
"damaged", "line", "attendant"), and it is nearly free: the graph already holds the token ids.
The served logits become ``transformer + w * log_softmax(lexical)``, a product of the two
models' distributions (w chosen on validation rows, 0 when the expert does not help), so the
scorer, its temperatures and the int8 checks work unchanged on one graph.

Features match scikit-learn's ``TfidfVectorizer(norm="l2", smooth_idf=True)`` on the word
pieces of a post (special tokens left out, truncated as the model truncates): a piece that
occurs ``c`` times counts ``c * idf``, and the vector is scaled to unit length. The graph
computes the same thing from ``input_ids``: it gathers each token's ``idf * coef`` row and
sums (repeats count by themselves), and gets the norm from the tokens' pairwise equality
(``sum_{t,t'} idf_t idf_t' [id_t = id_t']`` is the squared norm). Ids without a feature
(special tokens, padding, pieces rarer than ``min_df``) map to a zero row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from scipy import sparse

from training.config import LexicalConfig


@dataclass
class TaskExpert:
    coef: np.ndarray  # [features, labels], as_stored
    intercept: np.ndarray  # [labels]
    weight: float
    c: float
    val_macro_f1: tuple[float, float]  # without, with the expert

    def summary(self) -> dict[str, float]:
        return {
            "weight": self.weight,
            "C": self.c,
            "val_macro_f1_without": self.val_macro_f1[0],
            "val_macro_f1_with": self.val_macro_f1[1],
        }


@dataclass
class LexicalExperts:
    """One feature map (word-piece vocabulary and idf, shared by the tasks so the graph
    gathers and normalizes once) and an expert per task that earned one."""

    vocab: np.ndarray  # token id of each feature [F]
    idf: np.ndarray  # [F], float16-exact
    tasks: dict[str, TaskExpert]

    def summary(self) -> dict[str, object]:
        return {
            "features": len(self.vocab),
            "tasks": {t: e.summary() for t, e in self.tasks.items()},
        }

    def logits(self, task: str, docs: Sequence[Sequence[int]]) -> np.ndarray:
        """The task expert's logits, computed as the graph computes them (its reference)."""
        e = self.tasks[task]
        return np.asarray(tfidf(docs, self.vocab, self.idf) @ e.coef + e.intercept)


def _f16(x: np.ndarray) -> np.ndarray:
    """Values as the graph stores them (float16), kept in float64 for the reference."""
    return x.astype(np.float16).astype(np.float64)


def as_stored(coef: np.ndarray, idf: np.ndarray) -> np.ndarray:
    """``coef`` as the graph stores it: its table holds ``idf * coef`` in float16."""
    return _f16(idf[:, None] * coef) / np.where(idf > 0, idf, 1.0)[:, None]


def piece_ids(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """The word-piece ids of each text as the model sees them, special tokens left out."""
    special = set(tokenizer.all_special_ids)
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    return [[i for i in ids if i not in special] for ids in enc]


def vocabulary(docs: Sequence[Sequence[int]], min_df: int) -> tuple[np.ndarray, np.ndarray]:
    """Feature ids (in at least ``min_df`` docs) and their smoothed idf, as scikit-learn's."""
    df: dict[int, int] = {}
    for d in docs:
        for i in set(d):
            df[i] = df.get(i, 0) + 1
    vocab = np.array(sorted(i for i, n in df.items() if n >= min_df), dtype=np.int64)
    n = len(docs)
    idf = np.log((1 + n) / (1 + np.array([df[int(i)] for i in vocab], dtype=np.float64))) + 1
    return vocab, _f16(idf)


def tfidf(docs: Sequence[Sequence[int]], vocab: np.ndarray, idf: np.ndarray) -> sparse.csr_matrix:
    """Unit-length TF-IDF rows over ``vocab`` (ids outside it are ignored)."""
    col = {int(v): k for k, v in enumerate(vocab)}
    rows, cols, vals = [], [], []
    for r, d in enumerate(docs):
        counts: dict[int, int] = {}
        for i in d:
            k = col.get(i)
            if k is not None:
                counts[k] = counts.get(k, 0) + 1
        for k, c in counts.items():
            rows.append(r)
            cols.append(k)
            vals.append(c * idf[k])
    x = sparse.csr_matrix((vals, (rows, cols)), shape=(len(docs), len(vocab)), dtype=np.float64)
    norm = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    return sparse.csr_matrix(sparse.diags(1.0 / np.maximum(norm, 1e-12)) @ x)


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _macro_f1(gold: np.ndarray, logits: np.ndarray, n_labels: int) -> float:
    from sklearn.metrics import f1_score

    pred = logits.argmax(-1)
    labels = list(range(n_labels))
    return 100.0 * f1_score(gold, pred, labels=labels, average="macro", zero_division=0)


# Logit of a label the expert never saw in training: it then never votes for that label.
ABSENT = -30.0


def _dense(lr, n_features: int, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's coefficients as [features, labels] and [labels] over all the labels."""
    coef = np.zeros((n_features, n_labels))
    intercept = np.full(n_labels, ABSENT)
    if len(lr.classes_) == 2:  # one column: the logit of classes_[1] against classes_[0]
        coef[:, lr.classes_[1]] = lr.coef_[0]
        intercept[lr.classes_] = [0.0, lr.intercept_[0]]
    else:
        coef[:, lr.classes_] = lr.coef_.T
        intercept[lr.classes_] = lr.intercept_
    return coef, intercept


def fit_task(
    x_train: sparse.csr_matrix,
    y_train: Sequence[int],
    x_val: sparse.csr_matrix,
    val_gold: Sequence[int],
    val_logits: np.ndarray,
    n_labels: int,
    idf: np.ndarray,
    cfg: LexicalConfig,
) -> TaskExpert | None:
    """Fit the task's expert for each C; pick C and the blend weight by the macro-F1 of the
    blended validation logits. None unless it beats the transformer alone by ``min_gain``."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(y_train)
    gold = np.asarray(val_gold)
    if len(set(y.tolist())) < 2 or not len(gold):
        return None
    base = _macro_f1(gold, val_logits, n_labels)
    best = None
    for c in cfg.c_grid:
        lr = LogisticRegression(C=c, max_iter=3000, class_weight=cfg.class_weight)
        coef, intercept = _dense(lr.fit(x_train, y), x_train.shape[1], n_labels)
        coef = as_stored(coef, idf)
        lz = log_softmax(np.asarray(x_val @ coef + intercept))
        for w in cfg.weight_grid:
            f = _macro_f1(gold, val_logits + w * lz, n_labels)
            if best is None or f > best[0] + 1e-9:
                best = (f, c, w, coef, intercept)
    f, c, w, coef, intercept = best  # type: ignore[misc]
    if f - base < cfg.min_gain:
        return None
    return TaskExpert(coef, intercept, float(w), float(c), (round(base, 2), round(f, 2)))


def fit_experts(
    train: dict[str, tuple[list[list[int]], list[int]]],
    val: dict[str, tuple[list[list[int]], list[int], np.ndarray]],
    n_labels: dict[str, int],
    cfg: LexicalConfig,
) -> LexicalExperts | None:
    """``train``: per task, the word pieces and gold labels of its training rows; ``val``: the
    same for validation rows plus the transformer's logits on them. The feature map is fitted
    on all the tasks' training rows together; None if no task earns an expert."""
    docs = [d for t in cfg.tasks if t in train for d in train[t][0]]
    vocab, idf = vocabulary(docs, cfg.min_df)
    if not len(vocab):
        return None
    tasks = {}
    for t in cfg.tasks:
        if t not in train or t not in val:
            continue
        e = fit_task(
            tfidf(train[t][0], vocab, idf),
            train[t][1],
            tfidf(val[t][0], vocab, idf),
            val[t][1],
            val[t][2],
            n_labels[t],
            idf,
            cfg,
        )
        if e is not None:
            tasks[t] = e
    return LexicalExperts(vocab, idf, tasks) if tasks else None


def add_to_graph(path, experts: LexicalExperts, outputs: dict[str, str]) -> list[str]:
    """Blend the experts into their tasks' logits outputs, in place (see the module
    docstring); returns the tasks blended."""
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    ids = next((i.name for i in g.input if i.name == "input_ids"), g.input[0].name)
    names = list(experts.tasks)
    n_feat = len(experts.vocab)
    max_id = int(experts.vocab.max())
    if n_feat >= np.iinfo(np.int16).max:
        raise ValueError(f"{n_feat} lexical features do not fit the int16 feature map")
    lut = np.full(max_id + 1, n_feat, np.int16)  # a token id -> its feature (n_feat: none)
    lut[experts.vocab] = np.arange(n_feat, dtype=np.int16)
    # One row per feature (and a zero row for none): its idf, then idf * coef of each task.
    widths = [experts.tasks[t].coef.shape[1] for t in names]
    table = np.zeros((n_feat + 1, 1 + sum(widths)), np.float64)
    table[:n_feat, 0] = experts.idf
    at = 1
    for t, w in zip(names, widths, strict=True):
        table[:n_feat, at : at + w] = experts.idf[:, None] * experts.tasks[t].coef
        at += w
    p = "lexical/"
    consts = {
        "lut": lut,
        "table": table.astype(np.float16),
        "max_id": np.array(max_id, np.int64),
        "none": np.array(n_feat, np.int64),
        "split": np.array([1, *widths], np.int64),
        "axis1": np.array([1], np.int64),
        "axis2": np.array([2], np.int64),
        "axes12": np.array([1, 2], np.int64),
        "eps": np.array(1e-24, np.float32),
    }
    for t in names:
        consts[f"{t}/intercept"] = experts.tasks[t].intercept.astype(np.float32)
        consts[f"{t}/weight"] = np.array(experts.tasks[t].weight, np.float32)
    g.initializer.extend(numpy_helper.from_array(v, p + k) for k, v in consts.items())
    nodes: list = []

    def op(kind: str, inputs: list[str], out: str, **attrs) -> str:
        nodes.append(helper.make_node(kind, inputs, [p + out], p + out, **attrs))
        return p + out

    # Ids past the map (never features) are clipped onto its last id, then set to none.
    known = op("LessOrEqual", [ids, p + "max_id"], "known")
    raw = op("Gather", [p + "lut", op("Min", [ids, p + "max_id"], "clipped")], "feat16")
    feat64 = op("Cast", [raw], "feat64", to=TensorProto.INT64)
    feat = op("Where", [known, feat64, p + "none"], "feat")  # [B, S]
    rows16 = op("Gather", [p + "table", feat], "rows16")
    rows = op("Cast", [rows16], "rows", to=TensorProto.FLOAT)  # [B, S, 1 + labels]
    parts = [p + "idf"] + [f"{p}{t}/contrib" for t in names]
    nodes.append(helper.make_node("Split", [rows, p + "split"], parts, p + "columns", axis=2))
    col = op("Unsqueeze", [feat, p + "axis2"], "feat_col")
    row = op("Unsqueeze", [feat, p + "axis1"], "feat_row")
    same = op("Cast", [op("Equal", [col, row], "same")], "same_f", to=TensorProto.FLOAT)
    idf_row = op("Transpose", [p + "idf"], "idf_row", perm=[0, 2, 1])  # [B, 1, S]
    pair = op("Mul", [op("Mul", [same, p + "idf"], "same_idf"), idf_row], "pair")  # [B, S, S]
    norm2 = op("ReduceSum", [pair, p + "axes12"], "norm2", keepdims=0)  # [B]
    norm1 = op("Sqrt", [op("Max", [norm2, p + "eps"], "norm2_pos")], "norm1")
    norm = op("Unsqueeze", [norm1, p + "axis1"], "norm")  # [B, 1]
    for t in names:
        q = f"{t}/"
        num = op("ReduceSum", [f"{p}{t}/contrib", p + "axis1"], q + "num", keepdims=0)
        z = op("Add", [op("Div", [num, norm], q + "scaled"), p + q + "intercept"], q + "z")
        lz = op("LogSoftmax", [z], q + "log_probs", axis=-1)
        out, inner = outputs[t], p + q + "transformer"
        for n in g.node:  # the transformer's logits now feed the blend
            for names_ in (n.output, n.input):
                for k, v in enumerate(names_):
                    if v == out:
                        names_[k] = inner
        weighted = op("Mul", [lz, p + q + "weight"], q + "weighted")
        nodes.append(helper.make_node("Add", [inner, weighted], [out], p + q + "blend"))
    g.node.extend(nodes)
    onnx.save(model, str(path))
    return names
