"""ONNX export, graph optimization, int8 quantization and the checks that gate them.

Each step is verified before the next (in the spirit of optimum's export spec + validation):
fp32 ONNX must reproduce the PyTorch logits, and the int8 graph must agree with fp32 on the
test splits. Quantization recipes are tried in order and chosen on validation texts: int8
compute with per-token activation scales (SmoothQuant-smoothed, around calibrated zero points),
int8 weights computed in fp32 (GPTQ-rounded on validation activations, or rounded to nearest),
or dynamic int8 with the most sensitive nodes kept in fp32.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from tqdm.auto import tqdm

from features.bundle import BundleMeta, SelfCheck, host_summary, int8_session_config, write_meta
from features.schema import LabelSchema
from features.text import DEFAULT_NORMALIZER, normalize_text
from training.config import LexicalConfig
from training.embedding_output import expose_embedding
from training.evaluate import Logits, Predictor, eval_sets, evaluate, fit_temperature
from training.lexical import LexicalExperts, add_to_graph, fit_experts, log_softmax, piece_ids
from training.model import ExportWrapper, MultiTaskModel

log = logging.getLogger(__name__)

OPSET = 17


# Posts whose outputs the bundle records for the scorer's check at load (features.SelfCheck):
# written for the purpose, of assorted lengths, so every padding width and head is exercised.
SELF_CHECK_TEXTS = (
    "thanks!",
    "@airline my bag never arrived in Boston. 3 days now and no answer from anyone",
    "@airline flight 1234 delayed again... missed my connection, rebooked for tomorrow?",
    "loving the new seats on this plane 😍 great crew today",
    "@airline how do I change the name on my booking? the website keeps erroring out",
    "cancelled flight, 4 hours on hold and then the line just dropped. never again @airline",
    "just landed",
    "@airline the gate agent in Denver was so helpful getting us on an earlier flight, thank "
    "you!! http://t.co/abc123",
    "@airline charged twice for one bag fee, please refund",
    "what a day " * 20,
)


class ExportCheckFailed(RuntimeError):
    """An exported graph does not match its source closely enough to ship."""


@dataclass
class ExportGate:
    fp32_max_abs_diff: float = 1e-4
    # Quantization recipes to try, in order (see RECIPES), each judged on validation texts.
    # Fastest first. int8 compute with per-token activations: "smooth" (SmoothQuant on the
    # LayerNorm outputs, a calibrated zero point, GPTQ-rounded weights) ran the model 1.52x
    # fp32 at batch 32 against 1.35x for plain per-token "int8_per_token", and agreed with fp32
    # at least as well (benchmarks/quant_recipes.py, AMX host). Adding the attention's QKV
    # projection ("_qkv") reached 1.87x, but on the shipped model its validation agreement
    # (sentiment 99.2, topic 99.11) stayed under the margin below, so the gate passed over it.
    # Then weight-only: on a topic-weight-2 model one scale per 128 weights (+0.4 MB) agreed with
    # fp32 on 99.87% of validation topics vs 99.74% per channel (test 99.38 vs 99.13), and
    # blocks of 64 or 32 bought nothing more (32 breaks the 25 MB budget). GPTQ halved each
    # layer's logit error on an earlier model but moved test agreement by a post or two either
    # way: the posts that flip are near-ties, whatever the rounding.
    recipes: tuple[str, ...] = (
        "int8_per_token_smooth_qkv",
        "int8_per_token_smooth",
        "int8_per_token",
        "int8_weights_b128",
        "int8_weights",
        "int8_weights_gptq",
    )
    # A recipe is chosen only with this margin over int8_min_agreement on validation, so that
    # the test check, on other posts, does not fail on a recipe that just scraped through.
    choose_margin: float = 0.3
    # Percent of labels allowed to change between a post scored alone and in a batch.
    max_batch_flip_rate: float = 0.5
    int8_min_agreement: float = 99.0
    int8_max_metric_drop: float = 1.0
    max_bundle_mb: float = 25.0

    @property
    def validation_target(self) -> float:
        """The validation agreement a recipe needs on every task to be chosen outright."""
        return self.int8_min_agreement + self.choose_margin


@dataclass
class ExportReport:
    fp32_max_abs_diff: float
    int8_agreement: dict[str, float]
    fp32_metrics: dict[str, dict[str, float]]
    int8_metrics: dict[str, dict[str, float]]
    quantization: dict[str, object]
    bundle_mb: float
    passed: bool
    failures: list[str] = field(default_factory=list)
    lexical: dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def output_names(schema: LabelSchema) -> dict[str, str]:
    return {t: f"logits_{t}" for t in schema.names}


def export_onnx(model: MultiTaskModel, path: Path, pad_id: int = 0) -> Path:
    """Trace to ONNX with dynamic batch and sequence axes."""
    was = model.encoder.config._attn_implementation
    # Eager attention traces to plain MatMul/Softmax that ORT's BERT optimizer fuses; the dummy
    # batch carries padding so the mask path is traced (an all-ones mask can be optimised away).
    model.encoder.set_attn_implementation("eager")
    model.eval()
    names = output_names(model.schema)
    ids = torch.full((2, 8), 1000, dtype=torch.long)
    mask = torch.ones_like(ids)
    ids[1, 5:], mask[1, 5:] = pad_id, 0
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}
    axes.update({n: {0: "batch"} for n in names.values()})
    torch.onnx.export(
        ExportWrapper(model),
        (ids, mask),
        str(path),
        input_names=["input_ids", "attention_mask"],
        output_names=[names[t] for t in model.schema.names],
        dynamic_axes=axes,
        opset_version=OPSET,
        dynamo=False,
    )
    model.eval()  # the exporter leaves the module in training mode
    model.encoder.set_attn_implementation(was)
    return path


def optimize(src: Path, dst: Path, num_heads: int, hidden_size: int) -> Path:
    """Fuse attention, LayerNorm and GELU with ONNX Runtime's transformer optimizer."""
    from onnxruntime.transformers.optimizer import optimize_model

    opt = optimize_model(str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size)
    opt.save_model_to_file(str(dst))
    return dst


def centered_rms_layer_norms(path: Path) -> list[str]:
    """Rewrite every (Skip)LayerNormalization over the last axis, in place, as
    ``RMSNorm(s - mean(s)) * gamma + beta`` (``s`` = input + skip + bias); returns the nodes.

    The same function (RMS of a centred row is its standard deviation; differences of a few
    1e-6), but ONNX Runtime's CPU LayerNorm kernels are slow: at batch 32 of tweets one
    SkipLayerNormalization took 1.86 ms on one thread and its six-node replacement 0.51 ms
    (the twelve of them were 14% of this encoder's int8 run). Run it last: the recipes find
    LayerNorm outputs by their op type."""
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    axes = "_cln_axes"
    done: list[str] = []
    nodes = []
    for node in g.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        skip = node.op_type == "SkipLayerNormalization" and node.domain == "com.microsoft"
        plain = node.op_type == "LayerNormalization" and node.domain in ("", "ai.onnx")
        extra_outputs = [o for o in node.output[1:] if o and o in used]
        if not (skip or plain) or extra_outputs or attrs.get("axis", -1) != -1:
            nodes.append(node)
            continue
        p, eps = node.name + "/cln/", float(attrs.get("epsilon", 1e-5))
        if skip:
            x, residual, gamma = node.input[:3]
            beta = node.input[3] if len(node.input) > 3 else ""
            bias = node.input[4] if len(node.input) > 4 else ""
            if bias:
                nodes.append(helper.make_node("Add", [x, bias], [p + "biased"], p + "biased"))
                x = p + "biased"
            nodes.append(helper.make_node("Add", [x, residual], [p + "sum"], p + "sum"))
            x = p + "sum"
        else:
            x, gamma = node.input[:2]
            beta = node.input[2] if len(node.input) > 2 else ""
        nodes += [
            helper.make_node("ReduceMean", [x, axes], [p + "mean"], p + "mean", keepdims=1),
            helper.make_node("Sub", [x, p + "mean"], [p + "centred"], p + "centred"),
        ]
        rms_out = p + "rms" if beta else node.output[0]
        nodes.append(
            helper.make_node(
                "SimplifiedLayerNormalization",
                [p + "centred", gamma],
                [rms_out],
                p + "rms",
                axis=-1,
                epsilon=eps,
            )
        )
        if beta:
            nodes.append(helper.make_node("Add", [rms_out, beta], [node.output[0]], p + "out"))
        done.append(node.name)
    if done:
        g.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), axes))
        del g.node[:]
        g.node.extend(nodes)
        for o in model.opset_import:  # ReduceMean takes its axes as an input from opset 18
            if o.domain in ("", "ai.onnx"):
                o.version = max(o.version, 18)
        onnx.save(model, str(path))
    return done


def gather_before_dequantize(path: Path) -> list[str]:
    """Rewrite, in place, each int8 word-embedding table behind a DequantizeLinear that feeds
    an EmbedLayerNormalization so that only the rows a batch uses are dequantized; returns the
    EmbedLayerNormalization nodes rewritten.

    Served with QDQ handling off (``SESSION_CONFIG``), ONNX Runtime folds the whole
    30,522 x 384 table into an fp32 copy at load (without, it dequantizes all of it on every
    run: 46% of an int8 run at batch 8). Gathering first keeps the table int8 in memory (38 MiB
    less resident, 40 ms less load) at the same speed. The int8 rows and their scales are
    gathered by token id, dequantized by the same node type (the same values), and handed to
    the EmbedLayerNormalization as a table of B x S rows looked up by position (0 .. B*S-1),
    so the fused op, its mask output and the graph after it are unchanged."""
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    inits = {i.name for i in g.initializer}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    dequant = {
        n.output[0]: n
        for n in g.node
        if n.op_type == "DequantizeLinear"
        and n.input[0] in inits
        and all(i in inits for i in n.input[1:] if i)
    }
    rewrites: dict[str, onnx.NodeProto] = {}  # EmbedLayerNormalization name -> its DQ node
    for n in g.node:
        if n.op_type != "EmbedLayerNormalization" or len(n.input) < 3:
            continue
        dq = dequant.get(n.input[2])
        if dq is None or [c.name for c in consumers[dq.output[0]]] != [n.name]:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in dq.attribute}
        # Row-aligned scales only: per tensor, per column (axis 1), or blocks along a row.
        if attrs.get("axis", 1) != 1:
            continue
        rewrites[n.name] = dq
    if not rewrites:
        return []
    done: list[str] = []
    nodes = []
    dropped = {dq.name for dq in rewrites.values()}
    for n in g.node:
        if n.name in dropped:
            continue
        dq = rewrites.get(n.name)
        if dq is None:
            nodes.append(n)
            continue
        p = n.name + "/gather_dq/"
        ids = n.input[0]
        attrs = {a.name: helper.get_attribute_value(a) for a in dq.attribute}
        w8, scale = dq.input[0], dq.input[1]
        zero = dq.input[2] if len(dq.input) > 2 else ""
        blocked = attrs.get("block_size", 0) > 0
        dq_inputs = [p + "rows8"]
        nodes.append(helper.make_node("Gather", [w8, ids], [p + "rows8"], p + "rows8", axis=0))
        # A blocked scale has one row per table row; a per-column scale is shared by all rows.
        for name, suffix in ((scale, "scale"), (zero, "zero")):
            if not name:
                continue
            if blocked:
                nodes.append(
                    helper.make_node("Gather", [name, ids], [p + suffix], p + suffix, axis=0)
                )
                dq_inputs.append(p + suffix)
            else:
                dq_inputs.append(name)
        dq_attrs = {"axis": -1}
        if blocked:
            dq_attrs["block_size"] = attrs["block_size"]
        nodes += [
            helper.make_node("DequantizeLinear", dq_inputs, [p + "rows"], p + "rows", **dq_attrs),
            helper.make_node("Reshape", [p + "rows", p + "width"], [p + "table"], p + "table"),
            helper.make_node("Shape", [ids], [p + "shape"], p + "shape"),
            helper.make_node("ReduceProd", [p + "shape"], [p + "count"], p + "count", keepdims=0),
            helper.make_node("Range", ["_gdq_zero", p + "count", "_gdq_one"], [p + "at"], p + "at"),
            helper.make_node("Cast", [p + "at"], [p + "at32"], p + "at32", to=TensorProto.INT32),
            helper.make_node("Reshape", [p + "at32", p + "shape"], [p + "ids"], p + "ids"),
        ]
        n.input[0], n.input[2] = p + "ids", p + "table"
        nodes.append(n)
        done.append(n.name)
        width = next(i for i in g.initializer if i.name == w8).dims[1]
        g.initializer.append(numpy_helper.from_array(np.array([-1, width], np.int64), p + "width"))
    g.initializer.extend(
        [
            numpy_helper.from_array(np.array(0, np.int64), "_gdq_zero"),
            numpy_helper.from_array(np.array(1, np.int64), "_gdq_one"),
        ]
    )
    del g.node[:]
    g.node.extend(nodes)
    onnx.save(model, str(path))
    return done


def quantize(src: Path, dst: Path, exclude: Sequence[str] = (), per_channel: bool = True) -> Path:
    """Dynamic int8 as for AVX-512 VNNI: signed per-channel int8 weights, uint8 activations
    with one scale per batch, full range; embeddings quantized too so the bundle stays small.
    The nodes in ``exclude`` keep int8-stored weights but compute in fp32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(dst),
        per_channel=per_channel,
        reduce_range=False,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul", "Attention", "Gather", "EmbedLayerNormalization"],
        nodes_to_exclude=list(exclude),
        # Fused contrib ops (Attention, EmbedLayerNormalization) defeat shape inference.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    if exclude:
        weight_only_int8(dst, exclude)
    return dst


# Where each op keeps its weight: (input index, axis of the per-channel scales).
WEIGHT_INPUTS = {
    "MatMul": (1, 1),  # [in, out]: one scale per output column
    "Attention": (1, 1),  # fused QKV [hidden, 3 * hidden]
    "EmbedLayerNormalization": (2, 0),  # word embeddings [vocab, hidden]: one scale per token
    "Gather": (0, 0),
}


def weight_only_int8(
    path: Path,
    nodes: Sequence[str] | None = None,
    min_size: int = 100_000,
    hessians: dict[str, np.ndarray] | None = None,
    block: int | None = None,
) -> list[str]:
    """Store the 2-D weights of ``nodes`` (default: every op of WEIGHT_INPUTS) as symmetric
    per-channel int8 behind a DequantizeLinear, in place. The graph still computes in fp32
    (folded back at session load), so results do not depend on what else shares a batch,
    and the file stays the size of an int8 model. A node with an input Hessian in
    ``hessians`` is rounded by ``gptq_int8`` (errors compensated), the others to nearest.
    ``block`` gives each channel one scale per ``block`` consecutive weights instead of one in
    all (finer steps where a channel's magnitudes vary, for a few hundred kB of scales), as an
    opset-21 blocked DequantizeLinear, which folds at load into one fp32 copy like the
    per-channel one (a Cast -> Mul -> Reshape chain folded into three and peaked at 400 MiB).
    Blocked weights are rounded to nearest: ``hessians`` apply to per-channel weights only.
    Returns the nodes converted."""
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    done: list[str] = []
    new_nodes = []
    blocked = False
    for node in g.node:
        spec = WEIGHT_INPUTS.get(node.op_type)
        wanted = nodes is None or node.name in nodes
        if spec and wanted and len(node.input) > spec[0] and node.input[spec[0]] in inits:
            idx, axis = spec
            base = node.input[idx]
            w = numpy_helper.to_array(inits[base]).astype(np.float32)
            # Small matrices (the task heads) stay fp32: no size to save, all precision to keep.
            if w.ndim == 2 and w.size >= min_size and block and w.shape[1 - axis] % block == 0:
                new_nodes.extend(_blockwise(g, base, w, axis, block))
                blocked = True
                g.initializer.remove(inits[base])
                node.input[idx] = base + "_dq"
                done.append(node.name)
            elif w.ndim == 2 and w.size >= min_size:
                scale = np.maximum(np.abs(w).max(axis=1 - axis), 1e-12) / 127.0
                shaped = scale[None, :] if axis == 1 else scale[:, None]
                h = (hessians or {}).get(node.name)
                if h is not None and axis == 1:
                    q = gptq_int8(w, scale, h)
                else:
                    q = np.clip(np.round(w / shaped), -127, 127).astype(np.int8)
                g.initializer.remove(inits[base])
                g.initializer.extend(
                    [
                        numpy_helper.from_array(q, base + "_w8"),
                        numpy_helper.from_array(scale.astype(np.float32), base + "_w8_scale"),
                        numpy_helper.from_array(np.zeros(scale.shape, np.int8), base + "_w8_zero"),
                    ]
                )
                new_nodes.append(
                    helper.make_node(
                        "DequantizeLinear",
                        [base + "_w8", base + "_w8_scale", base + "_w8_zero"],
                        [base + "_dq"],
                        name=node.name + "_weight_dq",
                        axis=axis,
                    )
                )
                node.input[idx] = base + "_dq"
                done.append(node.name)
        new_nodes.append(node)
    del g.node[:]
    g.node.extend(new_nodes)
    if blocked:
        # Blocked DequantizeLinear needs opset 21. The standard ops of this encoder graph
        # (MatMul, Gemm, ReduceSum, Gather, Where, ...) mean the same in 17 and 21, and the
        # export gate compares the result with fp32 on every test post anyway.
        for o in model.opset_import:
            if o.domain in ("", "ai.onnx"):
                o.version = max(o.version, 21)
    onnx.save(model, str(path))
    return done


def _blockwise(g, base: str, w: np.ndarray, axis: int, block: int) -> list:
    """Symmetric int8 of ``w`` with one scale per channel (``axis``) and block of ``block``
    weights along the other axis, behind an opset-21 blocked DequantizeLinear; returns the
    node that rebuilds ``base + "_dq"``."""
    from onnx import helper, numpy_helper

    along = 1 - axis  # the axis the blocks run along
    blocks = np.moveaxis(w, along, 0)  # blocks along axis 0: [D, C]
    blocks = blocks.reshape(blocks.shape[0] // block, block, blocks.shape[1])
    scale = np.maximum(np.abs(blocks).max(axis=1), 1e-12) / 127.0  # [D / block, C]
    q = np.clip(np.round(blocks / scale[:, None, :]), -127, 127).astype(np.int8)
    q = np.moveaxis(q.reshape(-1, q.shape[2]), 0, along)
    scale = np.moveaxis(scale, 0, along)
    g.initializer.extend(
        [
            numpy_helper.from_array(np.ascontiguousarray(q), base + "_w8"),
            numpy_helper.from_array(np.ascontiguousarray(scale, np.float32), base + "_w8_scale"),
        ]
    )
    return [
        helper.make_node(
            "DequantizeLinear",
            [base + "_w8", base + "_w8_scale"],
            [base + "_dq"],
            name=base + "_dq",
            axis=along,
            block_size=block,
        )
    ]


def per_token_int8(
    path: Path,
    exclude: Sequence[str] = (),
    ops: Sequence[str] = ("MatMul",),
    min_size: int = 100_000,
    asymmetric: bool = True,
    hessians: dict[str, np.ndarray] | None = None,
    zero_points: dict[str, int] | None = None,
    smooth: dict[str, np.ndarray] | None = None,
) -> list[str]:
    """Rewrite the nodes of ``ops`` with a constant 2-D weight (except ``exclude``) to compute
    in int8, in place. Weights: symmetric per-channel int8 (GPTQ-rounded where ``hessians``
    has the node). Activations: quantized at run time per *token*, one scale per row, then
    ``MatMulIntegerToFloat`` (ONNX Runtime's VNNI/AMX kernels) and rescaled to fp32.

    A row's scale depends on that row alone, so a post scores the same whatever it is batched
    with, unlike ONNX Runtime's dynamic quantization (one scale per batch: 2.5-3.4% of labels
    changed with the batch on this encoder), and each scale follows its token's own range (with
    static per-tensor scales, set by a few outlier tokens, 95-98.6% of labels agreed with fp32).
    ``asymmetric`` maps each row's [min, max] onto 0..255 (x = min + s * q, so x @ W =
    s * (q @ W) + min * colsum(W)): GELU outputs, which are one-sided, keep all 8 bits; it cost
    12% of the speed of the symmetric form and bought +0.3 to +0.5 points of topic agreement.
    ``zero_points`` (from ``row_zero_points``) fixes each listed node's activation zero point
    instead: a row's scale is the smallest that fits its [min, max] around that zero point
    (x = s * (q - z)), so ``MatMulIntegerToFloat`` applies the zero point itself and the only
    work left after the product is one multiply by the row's scale, where the asymmetric form
    also subtracts the row's minimum before and adds ``min * colsum(W)`` after (two more passes
    over the output). With the zero point calibrated on the tensor's usual row ranges, most
    rows keep nearly all 8 bits.
    ``smooth`` (from ``smoothing_factors``) divides a listed node's input by per-channel
    factors and multiplies its weight rows by them (SmoothQuant): a LayerNorm output has a few
    channels many times larger than the rest, which otherwise set every token's scale.
    A fused Attention in ``ops`` is split into its QKV projection (int8) and a
    MultiHeadAttention (fp32, same mask and scaling). Returns the nodes rewritten."""
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    # Activation levels: 0..255 (asymmetric) or 128 +- 127. Seven bits (0..127) would never
    # overflow the int16 pair sums of CPUs without VNNI, but cost 0.2-0.3 points of agreement;
    # features.bundle.int8_session_config avoids the overflow on those CPUs instead.
    levels = 255 if asymmetric else 127
    const = {
        "_pt_axes": np.array([-1], np.int64),
        "_pt_eps": np.array(1e-8, np.float32),
        "_pt_one": np.array(1.0, np.float32),
        "_pt_levels": np.array(1.0 / levels, np.float32),
        "_pt_zero": np.array(0 if asymmetric else levels + 1, np.uint8),
    }
    done: list[str] = []
    new_nodes = []
    for node in g.node:
        w_name = node.input[1] if node.op_type in ops else None
        if w_name not in inits or node.name in exclude:
            new_nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[w_name]).astype(np.float32)
        if w.ndim != 2 or w.size < min_size:
            new_nodes.append(node)
            continue
        migrate = (smooth or {}).get(node.name)
        if migrate is not None:  # x @ W = (x / m) @ (m W): range moved from x into W
            w = w * migrate[:, None].astype(np.float32)
        scale = np.maximum(np.abs(w).max(axis=0), 1e-12) / 127.0  # one per output column
        h = (hessians or {}).get(node.name)
        if h is not None and migrate is not None:  # the Hessian of x / m
            h = h / np.outer(migrate, migrate)
        q = (
            gptq_int8(w, scale, h)
            if h is not None
            else np.clip(np.round(w / scale), -127, 127).astype(np.int8)
        )
        g.initializer.remove(inits[w_name])
        g.initializer.extend(
            [
                numpy_helper.from_array(q, w_name + "_w8"),
                numpy_helper.from_array(scale.astype(np.float32), w_name + "_w8_scale"),
            ]
        )
        x, p = node.input[0], node.name + "/per_token/"
        if migrate is not None:
            g.initializer.append(
                numpy_helper.from_array((1.0 / migrate).astype(np.float32), p + "smooth")
            )
            new_nodes.append(
                helper.make_node("Mul", [x, p + "smooth"], [p + "smoothed"], p + "smoothed")
            )
            x = p + "smoothed"
        y = node.output[0] if node.op_type == "MatMul" else p + "qkv"

        def op(kind, inputs, output, p=p, **attrs):
            new_nodes.append(helper.make_node(kind, inputs, [p + output], p + output, **attrs))
            return p + output

        z = (zero_points or {}).get(node.name)
        if z is not None:
            z = int(np.clip(z, 1, 254))
            g.initializer.extend(
                [
                    numpy_helper.from_array(np.array(z, np.uint8), p + "z"),
                    numpy_helper.from_array(np.array(1.0 / (255 - z), np.float32), p + "up"),
                    numpy_helper.from_array(np.array(-1.0 / z, np.float32), p + "down"),
                ]
            )
            lo = op("ReduceMin", [x, "_pt_axes"], "min", keepdims=1)
            hi = op("ReduceMax", [x, "_pt_axes"], "max", keepdims=1)
            s_x = op(
                "Max",
                [op("Mul", [hi, p + "up"], "s_hi"), op("Mul", [lo, p + "down"], "s_lo"), "_pt_eps"],
                "scale",
            )
            zero = op("Expand", [p + "z", op("Shape", [s_x], "shape")], "zero")
            xq = op("QuantizeLinear", [x, s_x, zero], "xq", axis=-1, block_size=w.shape[0])
            mm = [xq, w_name + "_w8", "_pt_one", w_name + "_w8_scale", p + "z"]
            acc = op("MatMulIntegerToFloat", mm, "acc", domain="com.microsoft")
            new_nodes.append(helper.make_node("Mul", [acc, s_x], [y], p + "out"))
        else:
            if asymmetric:
                lo = op("ReduceMin", [x, "_pt_axes"], "min", keepdims=1)
                hi = op("ReduceMax", [x, "_pt_axes"], "max", keepdims=1)
                span = op("Sub", [hi, lo], "span")
                x = op("Sub", [x, lo], "shifted")
            else:
                span = op("ReduceMax", [op("Abs", [x], "abs"), "_pt_axes"], "amax", keepdims=1)
            s_x = op("Max", [op("Mul", [span, "_pt_levels"], "s0"), "_pt_eps"], "scale")
            # Blocked QuantizeLinear, one block per row; its zero point takes the scale's shape.
            zero = op("Expand", ["_pt_zero", op("Shape", [s_x], "shape")], "zero")
            xq = op("QuantizeLinear", [x, s_x, zero], "xq", axis=-1, block_size=w.shape[0])
            mm = [xq, w_name + "_w8", "_pt_one", w_name + "_w8_scale", "_pt_zero"]
            acc = op("MatMulIntegerToFloat", mm, "acc", domain="com.microsoft")
            if asymmetric:
                colsum = (q.astype(np.float64) * scale).sum(axis=0).astype(np.float32)
                g.initializer.append(numpy_helper.from_array(colsum, w_name + "_w8_colsum"))
                offset = op("Mul", [lo, w_name + "_w8_colsum"], "offset")
                new_nodes.append(
                    helper.make_node(
                        "Add", [op("Mul", [acc, s_x], "scaled"), offset], [y], p + "out"
                    )
                )
            else:
                new_nodes.append(helper.make_node("Mul", [acc, s_x], [y], p + "out"))
        if node.op_type == "Attention":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if attrs.get("unidirectional") or attrs.get("qkv_hidden_sizes") or len(node.input) > 4:
                raise ValueError(f"{node.name}: only plain bidirectional attention is split")
            qkv = [p + n for n in ("q", "k", "v")]
            new_nodes.append(
                helper.make_node("Split", [y], qkv, p + "split", axis=-1, num_outputs=3)
            )
            bias = node.input[2] if len(node.input) > 2 else ""
            mask = node.input[3] if len(node.input) > 3 else ""
            new_nodes.append(
                helper.make_node(
                    "MultiHeadAttention",
                    [*qkv, bias, mask],
                    [node.output[0]],
                    p + "mha",
                    domain="com.microsoft",
                    num_heads=attrs["num_heads"],
                )
            )
        done.append(node.name)
    used = {i for n in new_nodes for i in n.input}  # (ORT warns about unused initializers)
    g.initializer.extend(numpy_helper.from_array(v, k) for k, v in const.items() if k in used)
    del g.node[:]
    g.node.extend(new_nodes)
    for o in model.opset_import:  # blocked QuantizeLinear (one block per row) is opset 21
        if o.domain in ("", "ai.onnx"):
            o.version = max(o.version, 21)
    if done and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(path))
    return done


def gptq_int8(w: np.ndarray, scale: np.ndarray, hessian: np.ndarray, damp: float = 0.01):
    """Round ``w`` ([in, out], one scale per output column) to int8 the GPTQ way (Frantar et
    al., 2022): input rows are rounded one at a time, most active first, and each row's
    rounding error is pushed onto the rows not yet rounded, weighted by the inverse of the
    input Hessian ``X^T X`` of calibration activations. The layer's outputs on inputs like the
    calibration ones then move far less than with rounding to nearest; the grid (scales) and
    the file size are the same."""
    n = w.shape[0]
    h = np.asarray(hessian, dtype=np.float64).copy()
    dead = np.diag(h) <= 0  # inputs never active in calibration: nothing to compensate with
    h[dead, dead] = 1.0
    h += damp * float(np.mean(np.diag(h))) * np.eye(n)
    order = np.argsort(-np.diag(h), kind="stable")
    h = h[np.ix_(order, order)]
    upper = np.linalg.cholesky(np.linalg.inv(h)).T  # H^-1 = U^T U, U upper triangular
    work = w.astype(np.float64)[order].copy()
    s = scale.astype(np.float64)
    q = np.empty_like(work)
    for i in range(n):
        q[i] = np.clip(np.round(work[i] / s), -127, 127)
        err = (work[i] - q[i] * s) / upper[i, i]
        work[i + 1 :] -= np.outer(upper[i, i + 1 :], err)
    out = np.empty_like(q)
    out[order] = q
    return out.astype(np.int8)


def _weighted_taps(fp32: Path, min_size: int) -> dict[str, str]:
    """Node -> input tensor of every MatMul/Attention node of ``fp32`` with a constant weight
    of at least ``min_size`` elements."""
    g = onnx.load(str(fp32), load_external_data=False).graph
    dims = {i.name: i.dims for i in g.initializer}
    taps: dict[str, str] = {}
    for node in g.node:
        spec = WEIGHT_INPUTS.get(node.op_type)
        if not spec or spec[1] != 1 or len(node.input) <= spec[0]:
            continue
        weight = dims.get(node.input[spec[0]])
        if weight is not None and np.prod(weight) >= min_size:
            taps[node.name] = node.input[0]
    return taps


def _tapped_inputs(
    fp32: Path, tensors: Sequence[str], feeds: Sequence[dict[str, np.ndarray]]
) -> Iterator[tuple[str, np.ndarray]]:
    """Run ``fp32`` over the calibration ``feeds`` and yield, batch by batch, each of
    ``tensors`` as (name, [tokens, features] of the real, non-padding, positions)."""
    if not tensors:  # (an empty output list would make ORT return every output)
        return
    model = onnx.load(str(fp32))
    known = {o.name for o in model.graph.output}
    for tensor in sorted(set(tensors) - known):
        model.graph.output.append(
            onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None)
        )
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = sorted(set(tensors))
    for feed in tqdm(feeds, desc="calibration", unit="batch"):
        keep = feed["attention_mask"].reshape(-1).astype(bool)
        for name, x in zip(names, sess.run(names, feed), strict=True):
            yield name, x.reshape(-1, x.shape[-1])[keep]


def input_hessians(
    fp32: Path, feeds: Sequence[dict[str, np.ndarray]], min_size: int = 100_000
) -> dict[str, np.ndarray]:
    """``X^T X`` of the input activations of every weighted MatMul/Attention node of ``fp32``
    over the calibration ``feeds`` (padding positions left out), for ``gptq_int8``."""
    taps = _weighted_taps(fp32, min_size)
    sums: dict[str, np.ndarray] = {}
    for name, x in _tapped_inputs(fp32, list(taps.values()), feeds):
        x = x.astype(np.float64)
        sums[name] = sums.get(name, 0.0) + x.T @ x
    return {node: sums[tensor] for node, tensor in taps.items()}


def best_zero_point(low_share: np.ndarray) -> int:
    """The uint8 zero point z that, shared by all rows, wastes the fewest bits: a row whose
    [min, max] puts its minimum at ``low_share`` of the way from min to 0-and-max
    (-min / (max - min)) needs the scale max(max / (255 - z), -min / z), against
    (max - min) / 255 with a zero point of its own; z minimizes the mean log of that ratio."""
    r = np.clip(np.asarray(low_share, np.float64), 0.0, 1.0)[:, None]
    z = np.arange(1, 255, dtype=np.float64)[None, :]
    waste = np.log(np.maximum((1.0 - r) * 255.0 / (255.0 - z), r * 255.0 / z))
    return int(z[0, int(np.argmin(waste.mean(axis=0)))])


def smoothing_factors(
    fp32: Path,
    feeds: Sequence[dict[str, np.ndarray]],
    nodes: Sequence[str],
    alpha: float = 0.5,
    min_size: int = 100_000,
) -> dict[str, np.ndarray]:
    """SmoothQuant (Xiao et al., 2023) factors per input channel of ``nodes``:
    max|x_j|^alpha / max|W_j|^(1 - alpha), so that dividing x by them and multiplying W's rows
    by them evens out the channels that set each token's range."""
    taps = {n: t for n, t in _weighted_taps(fp32, min_size).items() if n in nodes}
    amax: dict[str, np.ndarray] = {}
    for name, x in _tapped_inputs(fp32, list(taps.values()), feeds):
        m = np.abs(x).max(axis=0)
        amax[name] = np.maximum(amax.get(name, m), m)
    g = onnx.load(str(fp32)).graph
    inits = {i.name: i for i in g.initializer}
    weights = {n.name: n.input[WEIGHT_INPUTS[n.op_type][0]] for n in g.node if n.name in taps}
    out = {}
    for node, tensor in taps.items():
        w = np.abs(onnx.numpy_helper.to_array(inits[weights[node]])).max(axis=1)
        f = np.maximum(amax[tensor], 1e-5) ** alpha / np.maximum(w, 1e-5) ** (1 - alpha)
        out[node] = (f / np.exp(np.mean(np.log(f)))).astype(np.float32)
    return out


def row_zero_points(
    fp32: Path,
    feeds: Sequence[dict[str, np.ndarray]],
    min_size: int = 100_000,
    smooth: dict[str, np.ndarray] | None = None,
) -> dict[str, int]:
    """Per weighted node, the activation zero point for ``per_token_int8``'s fixed-zero-point
    form, from the row ranges its input takes on the calibration ``feeds`` (divided by the
    node's ``smooth`` factors, where it has them)."""
    taps = _weighted_taps(fp32, min_size)
    by_tensor = {t: n for n, t in taps.items()}
    shares: dict[str, list[np.ndarray]] = {}
    for name, x in _tapped_inputs(fp32, list(taps.values()), feeds):
        factors = (smooth or {}).get(by_tensor[name])
        if factors is not None:
            x = x / factors
        lo = np.minimum(x.min(axis=1), 0.0)
        hi = np.maximum(x.max(axis=1), 0.0)
        shares.setdefault(name, []).append(-lo / np.maximum(hi - lo, 1e-12))
    return {node: best_zero_point(np.concatenate(shares[t])) for node, t in taps.items()}


# The ONNX Runtime session config a bundle is checked with and records for serving:
# DequantizeLinear on a constant weight is folded into fp32 at load only with QDQ handling off
# (ORT keeps DQ nodes for QDQ fusions otherwise, and would dequantize on every run). The
# exporting and the serving machine each add ``int8_session_config()`` for their own CPU.
SESSION_CONFIG = {"session.disable_quant_qdq": "1"}


def session(
    path: Path, threads: int = 0, config: dict[str, str] | None = None
) -> ort.InferenceSession:
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


def agreement(a: Logits, b: Logits) -> dict[str, float]:
    return {t: round(100.0 * float((a[t].argmax(-1) == b[t].argmax(-1)).mean()), 2) for t in a}


def _eval_logits(predict: Predictor, tasks_texts: dict[str, list[str]]) -> Logits:
    return {t: predict(texts)[t] for t, texts in tasks_texts.items()}


# Quantization recipes. "int8_weights" stores every weight as int8 and computes in fp32:
# batch-invariant and closest to fp32; "_b128" gives each channel one scale per 128 weights
# instead of one in all; "int8_weights_gptq" chooses the rounding to compensate errors on
# calibration activations. The dynamic recipes also quantize activations (faster), but with
# one activation scale per batch a post's scores then depend on the posts it is batched with;
# measured on this encoder, that flipped 1-5% of labels.
@dataclass(frozen=True)
class Recipe:
    dynamic: bool
    fp32_patterns: tuple[str, ...] = ()
    # Round weights with GPTQ error compensation on calibration activations (else nearest).
    calibrated: bool = False
    # One weight scale per this many weights of a channel (None: one per channel).
    block: int | None = None
    # Op types computing in int8 with per-token activation scales (see per_token_int8); the
    # other weights stay weight-only int8 as ``block`` says.
    per_token: tuple[str, ...] = ()
    # Per-token activations around one zero point per tensor, calibrated (row_zero_points),
    # instead of each row's own minimum: fewer passes over the outputs.
    fixed_zero_point: bool = False
    # SmoothQuant alpha for the per-token projections that read a LayerNorm output (whose few
    # outlier channels otherwise set every token's range); None: no smoothing.
    smooth: float | None = None

    @property
    def needs_calibration(self) -> bool:
        return self.calibrated or self.fixed_zero_point or self.smooth is not None

    def describe(self) -> str:
        """How the recipe computes, for the bundle's report and model card."""
        if self.dynamic:
            return "dynamic (int8 per-channel weights, uint8 per-batch activations, full range)"
        weights = f"{self.block} weights of a channel" if self.block else "channel"
        rounding = (
            "GPTQ-rounded on validation activations" if self.calibrated else "rounded to nearest"
        )
        if self.per_token:
            zero = (
                "around a zero point calibrated per tensor"
                if self.fixed_zero_point
                else "over each token's own range"
            )
            if self.smooth is not None:
                zero += f", LayerNorm outputs SmoothQuant-smoothed (alpha {self.smooth})"
            return (
                f"int8 compute in {' and '.join(self.per_token)} projections (per-channel int8 "
                f"weights {rounding}, activations quantized per token {zero}); other int8 "
                f"weights (one scale per {weights}, rounded to nearest) computed in fp32"
            )
        return f"weight-only (int8 weights, one scale per {weights}, {rounding}; fp32 compute)"


RECIPES: dict[str, Recipe] = {
    "int8_per_token_smooth_qkv": Recipe(
        dynamic=False,
        calibrated=True,
        block=128,
        per_token=("MatMul", "Attention"),
        fixed_zero_point=True,
        smooth=0.5,
    ),
    "int8_per_token_smooth": Recipe(
        dynamic=False,
        calibrated=True,
        block=128,
        per_token=("MatMul",),
        fixed_zero_point=True,
        smooth=0.5,
    ),
    "int8_per_token_qkv": Recipe(dynamic=False, block=128, per_token=("MatMul", "Attention")),
    "int8_per_token": Recipe(dynamic=False, block=128, per_token=("MatMul",)),
    "int8_weights_b128": Recipe(dynamic=False, block=128),
    "int8_weights_gptq": Recipe(dynamic=False, calibrated=True),
    "int8_weights": Recipe(dynamic=False),
    "dynamic_int8_ffn_out_fp32": Recipe(
        dynamic=True, fp32_patterns=(r"layer\.\d+/output/dense/MatMul$",)
    ),
    "dynamic_int8": Recipe(dynamic=True),
}


def apply_recipe(
    fp32: Path,
    dst: Path,
    name: str,
    calibration: Sequence[dict[str, np.ndarray]] = (),
) -> tuple[Path, list[str]]:
    """Quantize ``fp32`` into ``dst`` by the named recipe (a calibrated one needs the model
    inputs of ``calibration``); also returns the nodes computing in fp32 from int8 weights.
    LayerNorms are rewritten last (``centered_rms_layer_norms``), and the int8 word embeddings
    are dequantized row by row (``gather_before_dequantize``), so what a recipe is measured on
    is what ships."""
    path, fp32_nodes = _quantize_by_recipe(fp32, dst, name, calibration)
    centered_rms_layer_norms(path)
    gather_before_dequantize(path)
    return path, fp32_nodes


def _quantize_by_recipe(
    fp32: Path, dst: Path, name: str, calibration: Sequence[dict[str, np.ndarray]]
) -> tuple[Path, list[str]]:
    r = RECIPES[name]
    if r.needs_calibration and not calibration:
        raise ValueError(f"recipe {name!r} needs calibration inputs")
    if r.per_token:
        smooth = (
            smoothing_factors(fp32, calibration, layer_norm_fed(fp32, r.per_token), r.smooth)
            if r.smooth is not None
            else None
        )
        zero_points = (
            row_zero_points(fp32, calibration, smooth=smooth) if r.fixed_zero_point else None
        )
        hessians = input_hessians(fp32, calibration) if r.calibrated else None
        shutil.copy(fp32, dst)
        per_token_int8(
            dst,
            exclude=recipe_nodes(fp32, r.fp32_patterns),
            ops=r.per_token,
            zero_points=zero_points,
            smooth=smooth,
            hessians=hessians,
        )
        return dst, weight_only_int8(dst, block=r.block)
    if not r.dynamic:
        hessians = input_hessians(fp32, calibration) if r.calibrated else None
        shutil.copy(fp32, dst)
        return dst, weight_only_int8(dst, hessians=hessians, block=r.block)
    exclude = recipe_nodes(fp32, r.fp32_patterns) if r.fp32_patterns else []
    return quantize(fp32, dst, exclude), exclude


LAYER_NORMS = ("LayerNormalization", "SkipLayerNormalization", "EmbedLayerNormalization")


def layer_norm_fed(fp32: Path, ops: Sequence[str]) -> list[str]:
    """Names of the nodes of ``ops`` whose input is the output of a LayerNorm."""
    graph = onnx.load(str(fp32), load_external_data=False).graph
    produced = {o: n.op_type for n in graph.node for o in n.output}
    return [
        n.name
        for n in graph.node
        if n.op_type in ops and n.input and produced.get(n.input[0]) in LAYER_NORMS
    ]


def recipe_nodes(fp32: Path, patterns: Sequence[str]) -> list[str]:
    """Names of the MatMul nodes matching any of the regular expressions."""
    graph = onnx.load(str(fp32), load_external_data=False).graph
    rx = [re.compile(p) for p in patterns]
    return [
        n.name for n in graph.node if n.op_type == "MatMul" and any(r.search(n.name) for r in rx)
    ]


def choose_recipe(
    fp32: Path,
    tokenizer,
    schema: LabelSchema,
    max_length: int,
    texts: dict[str, list[str]],
    target: float,
    recipes: Sequence[str],
    workdir: Path,
) -> tuple[str, dict[str, dict[str, float]], Path, list[str]]:
    """Measure each recipe's argmax agreement with fp32 on *validation* texts, in the given
    order; take the first that reaches ``target`` on every task, else the best worst task.
    The same texts calibrate the recipes that need it. Returns the recipe, what was measured,
    the quantized graph (in ``workdir``) and its nodes computing in fp32 from int8 weights."""
    ref = _eval_logits(ort_predictor(session(fp32), tokenizer, schema, max_length), texts)
    calibration, _ = feeds(tokenizer, [t for ts in texts.values() for t in ts], max_length, 32)
    measured: dict[str, dict[str, float]] = {}
    built: dict[str, tuple[Path, list[str]]] = {}
    for name in tqdm(recipes, desc="quantization recipes", unit="recipe"):
        built[name] = apply_recipe(fp32, workdir / f"int8_{name}.onnx", name, calibration)
        q = built[name][0]
        got = _eval_logits(ort_predictor(session(q), tokenizer, schema, max_length), texts)
        measured[name] = agreement(ref, got)
        log.info("recipe %s: validation agreement %s", name, measured[name])
        if min(measured[name].values()) >= target:
            break
    best = next(
        (n for n, a in measured.items() if min(a.values()) >= target),
        max(measured, key=lambda n: min(measured[n].values())),
    )
    return best, measured, *built[best]


def batch_flip_rate(predict: Predictor, texts: Sequence[str], schema: LabelSchema) -> float:
    """Percent of (post, task) labels that change between scoring a post alone and within
    length-sorted batches: 0 for a batch-invariant graph."""
    together = predict(texts)
    alone = [predict([t]) for t in texts]
    flips = sum(
        int(alone[i][t][0].argmax() != together[t][i].argmax())
        for i in range(len(texts))
        for t in schema.names
    )
    return round(100.0 * flips / (len(texts) * len(schema.names)), 2)


def tokenizer_json(tokenizer, max_length: int, dst: Path) -> Path:
    """The fast tokenizer's file, with truncation at max_length and no fixed padding (serving
    pads each batch to its longest member)."""
    tok = tokenizer.backend_tokenizer
    tok.no_padding()
    tok.enable_truncation(max_length=max_length)
    # Compact (tokenizers indents it): a quarter of a megabyte of a 25 MB budget.
    tok.save(str(dst), pretty=False)
    return dst


def dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def build_bundle(
    model: MultiTaskModel,
    tokenizer,
    schema: LabelSchema,
    corpus,
    out: Path,
    *,
    name: str,
    base_model: str,
    max_length: int,
    temperatures: dict[str, float],
    training: dict[str, object] | None = None,
    gate: ExportGate | None = None,
    precision: str = "int8",
    torch_predict: Predictor | None = None,
    strict: bool = True,
    normalizer: str = DEFAULT_NORMALIZER,
    lexical: LexicalConfig | None = None,
) -> ExportReport:
    """Export, optimize, quantize and check; write the bundle to ``out`` only if it passes.

    A failed check raises ExportCheckFailed when ``strict``; otherwise the bundle is written
    with the failures recorded (report, bundle.json) and the caller decides. ``corpus`` texts
    are already normalized; ``normalizer`` names how, so serving normalizes posts the same way.
    With ``lexical``, tasks whose validation macro-F1 a lexical expert lifts get one blended
    into the graph (training.lexical) after the PyTorch parity check, and their temperatures
    are refitted on the blended validation logits; every later check and metric is of the
    blended graph, and the blend itself is checked against its NumPy reference.
    """
    gate = gate or ExportGate()
    cfg = model.encoder.config
    work = Path(tempfile.mkdtemp(prefix="ct-export-"))
    try:
        raw = export_onnx(model, work / "raw.onnx", tokenizer.pad_token_id)
        fp32 = optimize(raw, work / "fp32.onnx", cfg.num_attention_heads, cfg.hidden_size)
        # The fp32 graph as it ships: checked against PyTorch and the reference for int8. The
        # recipes start from the fused graph (they find LayerNorm outputs by op type).
        fp32_fast = work / "fp32_fast.onnx"
        shutil.copy(fp32, fp32_fast)
        centered_rms_layer_norms(fp32_fast)
        ort32 = ort_predictor(session(fp32_fast), tokenizer, schema, max_length)

        # 1. fp32 parity against PyTorch, on real test texts (padding included).
        sets = eval_sets(corpus, "test")
        sample = [t for texts, _, _ in sets.values() for t in texts[:200]]
        torch_predict = torch_predict or _torch_predictor(model, tokenizer, max_length)
        a, b = torch_predict(sample), ort32(sample)
        diff = max(float(np.abs(a[t] - b[t]).max()) for t in schema.names)
        log.info("fp32 ONNX vs PyTorch: max |logit diff| = %.2e", diff)

        failures: list[str] = []
        if diff > gate.fp32_max_abs_diff:
            failures.append(
                f"fp32 ONNX differs from PyTorch by {diff:.2e} > {gate.fp32_max_abs_diff}"
            )
        experts = None
        if lexical is not None:
            experts = fit_lexical(corpus, tokenizer, schema, max_length, ort32, lexical)
        if experts is not None:
            add_to_graph(fp32_fast, experts, output_names(schema))
            ort32 = ort_predictor(session(fp32_fast), tokenizer, schema, max_length)
            blend_diff = lexical_parity(experts, tokenizer, max_length, sample, b, ort32)
            log.info("lexical blend vs its reference: max |logit diff| = %.2e", blend_diff)
            if blend_diff > gate.fp32_max_abs_diff:
                failures.append(
                    f"the lexical blend differs from its reference by {blend_diff:.2e}"
                    f" > {gate.fp32_max_abs_diff}"
                )
            temperatures = dict(temperatures)
            for task, (texts, gold, _) in eval_sets(corpus, "val").items():
                if task in experts.tasks and texts:
                    temperatures[task] = fit_temperature(ort32(texts)[task], gold)

        fp32_metrics, fp32_logits = evaluate(ort32, schema, corpus, "test")

        quant: dict[str, object] = {"method": "none"}
        final = fp32_fast
        int8_metrics, agree = fp32_metrics, {t: 100.0 for t in fp32_logits}
        if precision == "int8":
            val_texts = _agreement_texts(corpus)
            recipe, val_agree, final, fp32_nodes = choose_recipe(
                fp32,
                tokenizer,
                schema,
                max_length,
                val_texts,
                gate.validation_target,
                gate.recipes,
                work,
            )
            if experts is not None:
                add_to_graph(final, experts, output_names(schema))
            ort8 = ort_predictor(session(final), tokenizer, schema, max_length)
            int8_metrics, int8_logits = evaluate(ort8, schema, corpus, "test")
            agree = agreement(fp32_logits, int8_logits)
            flip = batch_flip_rate(ort8, sample[:200], schema)
            if flip > gate.max_batch_flip_rate:
                failures.append(
                    f"{flip}% of labels change between a post alone and in a batch"
                    f" > {gate.max_batch_flip_rate}%"
                )
            quant = {
                "batch_flip_rate": flip,
                "method": "ONNX Runtime int8: " + RECIPES[recipe].describe(),
                "recipe": recipe,
                "fp32_compute_int8_weights": fp32_nodes,
                "validation_agreement": val_agree,
                "validation_target": gate.validation_target,
            }
            for t, v in agree.items():
                if v < gate.int8_min_agreement:
                    failures.append(
                        f"int8 agrees with fp32 on {v}% of {t} test posts"
                        f" < {gate.int8_min_agreement}%"
                    )
            for t, m in fp32_metrics.items():
                for k, v in m.items():
                    if k == "n" or "flagged" in k:
                        continue
                    drop = v - int8_metrics[t][k]
                    if drop > gate.int8_max_metric_drop:
                        failures.append(
                            f"int8 {t} {k} {int8_metrics[t][k]} is {drop:.2f} below fp32 {v}"
                        )

        # 2. Write the bundle.
        stage = work / "bundle"
        stage.mkdir()
        shutil.copy(final, stage / "model.onnx")
        embedding = expose_embedding(stage / "model.onnx", output_names(schema))
        tokenizer_json(tokenizer, max_length, stage / "tokenizer.json")
        schema.save(stage / "label_schema.json")
        version = datetime.now(UTC).strftime("%Y%m%d.%H%M%S")
        meta = BundleMeta(
            name=name,
            version=f"{name}-{version}-{precision}",
            created_at=datetime.now(UTC),
            base_model=base_model,
            max_length=max_length,
            normalizer=normalizer,
            precision=precision,  # type: ignore[arg-type]
            pad_token_id=int(tokenizer.pad_token_id),
            outputs=output_names(schema),
            temperatures=temperatures,
            metrics=int8_metrics,
            quantization=quant | {"fp32_metrics": fp32_metrics, "int8_agreement": agree},
            ort_session_config=SESSION_CONFIG,
            training=training or {},
            lexical=experts.summary() if experts is not None else {},
            embedding_output=embedding,
            self_check=self_check(final, tokenizer, schema, max_length, normalizer),
        )
        write_meta(stage, meta)
        mb = dir_mb(stage)
        if mb > gate.max_bundle_mb:
            failures.append(f"bundle is {mb:.1f} MB > {gate.max_bundle_mb} MB")
        if failures:
            meta.quantization["gate_failures"] = failures
            write_meta(stage, meta)
        report = ExportReport(
            diff,
            agree,
            fp32_metrics,
            int8_metrics,
            quant,
            round(mb, 2),
            not failures,
            failures,
            experts.summary() if experts is not None else {},
        )
        (stage / "export_report.json").write_text(
            json.dumps(report.to_dict(), indent=2, default=str)
        )
        if failures and strict:
            raise ExportCheckFailed("; ".join(failures))
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(stage, out)
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def fit_lexical(
    corpus, tokenizer, schema: LabelSchema, max_length: int, predict: Predictor, cfg: LexicalConfig
) -> LexicalExperts | None:
    """Lexical experts for ``cfg.tasks`` from the training rows, each blend chosen on the
    validation rows against the transformer's logits there (``predict``)."""
    train = corpus["train"]
    rows: dict[str, tuple[list[list[int]], list[int]]] = {}
    for task in cfg.tasks:
        pairs = [(t, y) for t, y in zip(train["text"], train[task], strict=True) if y >= 0]
        if pairs:
            texts = [t for t, _ in pairs]
            rows[task] = (piece_ids(tokenizer, texts, max_length), [y for _, y in pairs])
    val = {
        task: (piece_ids(tokenizer, texts, max_length), gold, predict(texts)[task])
        for task, (texts, gold, _) in eval_sets(corpus, "val").items()
        if task in rows and texts
    }
    sizes = {t.name: len(t.labels) for t in schema.tasks}
    experts = fit_experts(rows, val, sizes, cfg)
    log.info("lexical experts: %s", experts.summary() if experts else "none earned a place")
    return experts


def lexical_parity(
    experts: LexicalExperts,
    tokenizer,
    max_length: int,
    texts: Sequence[str],
    before: Logits,
    after: Predictor,
) -> float:
    """Max |blended graph - (graph before + w * log_softmax(reference expert logits))|."""
    blended = after(texts)
    docs = piece_ids(tokenizer, texts, max_length)
    worst = 0.0
    for task, e in experts.tasks.items():
        ref = before[task] + e.weight * log_softmax(experts.logits(task, docs))
        worst = max(worst, float(np.abs(blended[task] - ref).max()))
    return worst


def self_check(
    graph: Path, tokenizer, schema: LabelSchema, max_length: int, normalizer: str
) -> SelfCheck:
    """The logits ``graph`` gives here for SELF_CHECK_TEXTS, for the scorer to compare at load."""
    predict = ort_predictor(session(graph), tokenizer, schema, max_length)
    logits = predict([normalize_text(t, normalizer) for t in SELF_CHECK_TEXTS])
    return SelfCheck(
        texts=list(SELF_CHECK_TEXTS),
        logits={t: np.round(v.astype(np.float64), 6).tolist() for t, v in logits.items()},
        host=host_summary(),
    )


def _torch_predictor(model, tokenizer, max_length):
    from training.train import make_predictor

    return make_predictor(model, tokenizer, max_length)


def _agreement_texts(corpus, cap: int = 1000) -> dict[str, list[str]]:
    """Texts that choose the recipe, mirroring the test sets of the gate but never test
    rows: the validation rows of each task; for a task without validation rows (actionability
    without a validation fold), its training rows (agreement needs no labels), else the first
    task's validation texts."""
    from training.data import task_columns

    val = eval_sets(corpus, "val")
    out = {task: texts[:cap] for task, (texts, _, _) in val.items() if texts}
    train = corpus["train"]
    first = next(iter(out.values()), [])
    for task in task_columns(train):
        if task not in out:
            rows = [t for t, y in zip(train["text"], train[task], strict=True) if y >= 0]
            out[task] = rows[:cap] or first
    return out
