"""The ONNX graph itself: trace the model, fuse it, and rewrite it for ONNX Runtime's CPU kernels.

Every rewrite here keeps the graph's function (checked by the export gate) and only changes
how ONNX Runtime computes it; the quantization recipes (``recipes``) run them last, so what a
recipe is measured on is what ships.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch

from features.schema import LabelSchema
from training.model import ExportWrapper, MultiTaskModel

OPSET = 17


def output_names(schema: LabelSchema) -> dict[str, str]:
    """Task -> the graph output holding its logits: the names the checks and serving read."""
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
    1e-6), but ONNX Runtime's CPU LayerNorm kernels are slow, and the replacement several
    times faster (training/EXPERIMENTS.md, "Figures behind the export code"). Run it last:
    the recipes find LayerNorm outputs by their op type."""
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
    run). Gathering first keeps the table int8 in memory at the same speed (resident memory
    and load time saved: training/EXPERIMENTS.md). The int8 rows and their scales are
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
