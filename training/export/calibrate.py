"""Activation statistics of an fp32 graph on calibration inputs, for the calibrated recipes:
input Hessians (GPTQ rounding), SmoothQuant factors and per-tensor activation zero points.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from tqdm.auto import tqdm

from training.export.quantize import WEIGHT_INPUTS


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
