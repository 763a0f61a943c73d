"""ONNX export, graph optimization, int8 quantization and the checks that gate them.

Each step is verified before the next (in the spirit of optimum's export spec + validation):
fp32 ONNX must reproduce the PyTorch logits, and the int8 graph must agree with fp32 on the
test splits. Quantization recipes are tried in order and chosen on validation texts: int8
compute with per-token activation scales (SmoothQuant-smoothed, around calibrated zero points),
int8 weights computed in fp32 (GPTQ-rounded on validation activations, or rounded to nearest),
or dynamic int8 with the most sensitive nodes kept in fp32.

The modules, each importing only those before it: ``graph`` (trace, fuse, rewrite),
``embedding`` (the sentence-vector output), ``quantize`` (int8 rewrites), ``calibrate``
(activation statistics), ``runtime`` (ONNX Runtime sessions, ``ort_predictor``), ``gate``
(thresholds, report, checks), ``recipes`` (named recipes, choosing one), ``config``
(``ExportConfig``) and ``bundle`` (``build_bundle``). The names below are re-exported so that
``from training.export import X`` keeps working.
"""

from training.export.bundle import (
    SELF_CHECK_TEXTS,
    build_bundle,
    dir_mb,
    fit_lexical,
    self_check,
    tokenizer_json,
)
from training.export.calibrate import (
    best_zero_point,
    input_hessians,
    row_zero_points,
    smoothing_factors,
)
from training.export.config import ExportConfig
from training.export.embedding import add_embedding_to_bundle, expose_embedding
from training.export.gate import (
    ExportCheckFailed,
    ExportGate,
    ExportReport,
    agreement,
    batch_flip_rate,
    lexical_parity,
)
from training.export.graph import (
    LAYER_NORMS,
    OPSET,
    centered_rms_layer_norms,
    export_onnx,
    gather_before_dequantize,
    layer_norm_fed,
    optimize,
    output_names,
    recipe_nodes,
)
from training.export.quantize import (
    WEIGHT_INPUTS,
    gptq_int8,
    per_token_int8,
    quantize,
    weight_only_int8,
)
from training.export.recipes import RECIPES, Recipe, apply_recipe, choose_recipe
from training.export.runtime import SESSION_CONFIG, feeds, ort_predictor, session

__all__ = [
    "LAYER_NORMS",
    "OPSET",
    "RECIPES",
    "SELF_CHECK_TEXTS",
    "SESSION_CONFIG",
    "WEIGHT_INPUTS",
    "ExportCheckFailed",
    "ExportConfig",
    "ExportGate",
    "ExportReport",
    "Recipe",
    "add_embedding_to_bundle",
    "agreement",
    "apply_recipe",
    "batch_flip_rate",
    "best_zero_point",
    "build_bundle",
    "centered_rms_layer_norms",
    "choose_recipe",
    "dir_mb",
    "export_onnx",
    "expose_embedding",
    "feeds",
    "fit_lexical",
    "gather_before_dequantize",
    "gptq_int8",
    "input_hessians",
    "layer_norm_fed",
    "lexical_parity",
    "optimize",
    "ort_predictor",
    "output_names",
    "per_token_int8",
    "quantize",
    "recipe_nodes",
    "row_zero_points",
    "self_check",
    "session",
    "smoothing_factors",
    "tokenizer_json",
    "weight_only_int8",
]
