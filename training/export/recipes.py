"""The named int8 recipes, how each is applied to an fp32 graph, and how one is chosen on
validation texts by its agreement with fp32.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from features.schema import LabelSchema
from training.evaluate import Logits, Predictor
from training.export.calibrate import input_hessians, row_zero_points, smoothing_factors
from training.export.gate import agreement
from training.export.graph import (
    centered_rms_layer_norms,
    gather_before_dequantize,
    layer_norm_fed,
    recipe_nodes,
)
from training.export.quantize import per_token_int8, quantize, weight_only_int8
from training.export.runtime import feeds, ort_predictor, session

log = logging.getLogger(__name__)


# Quantization recipes. "int8_weights" stores every weight as int8 and computes in fp32:
# batch-invariant and closest to fp32; "_b128" gives each channel one scale per 128 weights
# instead of one in all; "int8_weights_gptq" chooses the rounding to compensate errors on
# calibration activations. The dynamic recipes also quantize activations (faster), but with
# one activation scale per batch a post's scores then depend on the posts it is batched with
# (how many labels that flipped: training/EXPERIMENTS.md).
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


def _eval_logits(predict: Predictor, tasks_texts: dict[str, list[str]]) -> Logits:
    """Each task's logits on its own texts."""
    return {t: predict(texts)[t] for t, texts in tasks_texts.items()}
