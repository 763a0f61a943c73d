"""int8 rewrites of an fp32 graph: ONNX Runtime's dynamic quantization, weight-only int8
(per channel or blocked, rounded to nearest or by GPTQ) and int8 compute with per-token
activation scales. Which of them a bundle gets is a recipe's choice (``recipes``); the
activation statistics some of them need come from ``calibrate``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx


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
    per-channel one (a Cast -> Mul -> Reshape chain folded into three copies; EXPERIMENTS.md).
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
    with, unlike ONNX Runtime's dynamic quantization (one scale per batch: labels changed with
    the batch), and each scale follows its token's own range (static per-tensor scales, set by
    a few outlier tokens, agreed with fp32 far less often; figures in training/EXPERIMENTS.md).
    ``asymmetric`` maps each row's [min, max] onto 0..255 (x = min + s * q, so x @ W =
    s * (q @ W) + min * colsum(W)): GELU outputs, which are one-sided, keep all 8 bits: it
    costs some speed against the symmetric form and buys topic agreement.
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
    # overflow the int16 pair sums of CPUs without VNNI, but cost agreement (EXPERIMENTS.md);
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
