"""ONNX Runtime sessions and the predictor over them: how every exported graph is scored in
training (the export checks, distillation teachers, promotion), tokenized exactly as in
training. Serving has its own scorer and never imports this.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from features.bundle import int8_session_config
from features.schema import LabelSchema
from training.evaluate import Logits, Predictor
from training.export.graph import output_names

# The ONNX Runtime session config a bundle is checked with and records for serving:
# DequantizeLinear on a constant weight is folded into fp32 at load only with QDQ handling off
# (ORT keeps DQ nodes for QDQ fusions otherwise, and would dequantize on every run). The
# exporting and the serving machine each add ``int8_session_config()`` for their own CPU.
SESSION_CONFIG = {"session.disable_quant_qdq": "1"}


def session(
    path: Path, threads: int = 0, config: dict[str, str] | None = None
) -> ort.InferenceSession:
    """A CPU session set up as bundles are checked and served: ``config`` (a bundle's own, else
    SESSION_CONFIG) plus this CPU's int8 settings; ``threads`` 0 leaves ORT's default."""
    so = ort.SessionOptions()
    for key, value in ((config or SESSION_CONFIG) | int8_session_config()).items():
        so.add_session_config_entry(key, value)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def feeds(
    tokenizer, texts: Sequence[str], max_length: int, batch_size: int = 64
) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """Model inputs for ``texts`` in length-sorted batches, each padded to its longest, and
    the order they are in (``texts[order[i]]`` is the i-th row fed)."""
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    order = np.argsort([len(x) for x in enc], kind="stable")
    out = []
    for s in range(0, len(order), batch_size):
        chunk = [enc[i] for i in order[s : s + batch_size]]
        n = max(len(x) for x in chunk)
        ids = np.full((len(chunk), n), tokenizer.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(chunk), n), dtype=np.int64)
        for i, x in enumerate(chunk):
            ids[i, : len(x)], mask[i, : len(x)] = x, 1
        out.append({"input_ids": ids, "attention_mask": mask})
    return out, order


def ort_predictor(
    sess: ort.InferenceSession,
    tokenizer,
    schema: LabelSchema,
    max_length: int,
    batch_size: int = 64,
) -> Predictor:
    """texts -> logits per task from an ONNX session, tokenized exactly as in training."""
    names = output_names(schema)
    outs = [names[t] for t in schema.names]

    def predict(texts: Sequence[str]) -> Logits:
        batches, order = feeds(tokenizer, texts, max_length, batch_size)
        parts = [sess.run(outs, feed) for feed in batches]
        inv = np.empty_like(order)
        inv[order] = np.arange(len(order))
        return {t: np.concatenate([p[k] for p in parts])[inv] for k, t in enumerate(schema.names)}

    return predict
