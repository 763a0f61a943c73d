"""The in-process variants, each a ``texts -> outputs`` callable built from the project's own
code: the PyTorch pipeline baseline, ONNX Runtime fp32 and int8 through the export checks'
predictor (``training.export.runtime.ort_predictor``), and the serving ``Scorer``."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from features.bundle import Bundle

if TYPE_CHECKING:
    from serving.inference import Scorer

log = logging.getLogger("caretriage.bench")

Order = Literal["arrival", "sorted"]
# Names under which a bundle may ship its fp32 graph beside the int8 ``model.onnx``.
FP32_FILES = ("model_fp32.onnx", "model.fp32.onnx", "fp32.onnx")


@dataclass
class Variant:
    key: str
    label: str
    # How batch-32 calls are formed: arrival-order posts, or posts sorted by token length.
    order: Order
    predict: Callable[[Sequence[str]], Any] | None = None
    skipped: str | None = None  # why the variant did not run
    info: dict[str, Any] = field(default_factory=dict)


def skipped(key: str, label: str, order: Order, reason: str) -> Variant:
    log.warning("%s skipped: %s", label, reason)
    return Variant(key, label, order, skipped=reason)


def pipeline_variant(
    base_model: str, max_length: int, threads: int = 0, num_labels: int = 3
) -> Variant:
    """transformers ``pipeline("text-classification")`` over an fp32 PyTorch MiniLM: what a team
    gets without an export step. Padding is the pipeline's default (each batch to its longest
    post, posts in arrival order); truncation at the bundle's max length like the others."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the load report of the random head is expected
    if threads:
        torch.set_num_threads(threads)
    model = AutoModelForSequenceClassification.from_pretrained(base_model, num_labels=num_labels)
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    pipe = pipeline("text-classification", model=model.eval(), tokenizer=tokenizer, device="cpu")

    def predict(texts: Sequence[str]) -> Any:
        with torch.inference_mode():
            return pipe(list(texts), batch_size=len(texts), truncation=True, max_length=max_length)

    info = {
        "base_model": base_model,
        "attn_implementation": model.config._attn_implementation,
        "torch_threads": torch.get_num_threads(),
    }
    return Variant("pytorch_pipeline", "PyTorch pipeline fp32", "arrival", predict, info=info)


def bundled_fp32(bundle: Bundle) -> Path | None:
    """The bundle's fp32 graph: model.onnx itself for an fp32 bundle, else a sibling file."""
    if bundle.meta.precision == "fp32":
        return bundle.onnx_path
    return next((bundle.path / n for n in FP32_FILES if (bundle.path / n).is_file()), None)


def export_fp32(base_model: str, bundle: Bundle, workdir: Path, seed: int = 0) -> Path:
    """The base encoder with random heads, exported and optimized exactly as a trained model
    is (``export_onnx``, ``optimize``, ``centered_rms_layer_norms``): same graph shape, hence
    the same cost."""
    import torch
    from transformers.utils import logging as hf_logging

    from training.export.graph import centered_rms_layer_norms, export_onnx, optimize
    from training.model import MultiTaskModel

    hf_logging.set_verbosity_error()
    torch.manual_seed(seed)
    model = MultiTaskModel.from_pretrained(base_model, bundle.schema_).eval()
    with warnings.catch_warnings():  # tracer warnings: the export path is the trained model's
        warnings.simplefilter("ignore")
        raw = export_onnx(model, workdir / "raw.onnx", bundle.meta.pad_token_id)
    cfg = model.encoder.config
    fp32 = optimize(raw, workdir / "fp32.onnx", cfg.num_attention_heads, cfg.hidden_size)
    centered_rms_layer_norms(fp32)
    return fp32


def bundle_hf_tokenizer(bundle: Bundle) -> Any:
    """The bundle's tokenizer.json behind the transformers API ``ort_predictor`` calls."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_file(str(bundle.tokenizer_path))
    pad = tok.id_to_token(bundle.meta.pad_token_id)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=pad)


def ort_variant(
    key: str, label: str, onnx_path: Path, bundle: Bundle, tokenizer: Any, threads: int = 0
) -> Variant:
    """An ONNX graph behind ``training.export.runtime.ort_predictor``: length-sorted batches
    padded to the longest member, raw logits (the runtime alone, no serving code)."""
    from training.export.runtime import ort_predictor, session

    sess = session(onnx_path, threads)
    predict = ort_predictor(sess, tokenizer, bundle.schema_, bundle.meta.max_length, batch_size=32)
    info = {
        "onnx": str(onnx_path),
        "mb": round(onnx_path.stat().st_size / 1e6, 1),
        "intra_op_threads": threads or "ORT default",
    }
    return Variant(key, label, "sorted", predict, info=info)


def scorer_variant(scorer: Scorer, key: str = "scorer", label: str | None = None) -> Variant:
    """The serving ``Scorer`` as the HTTP path uses it: normalization, tokenizers, token-capped
    length-sorted batches run ``scorer.workers`` at a time, calibrated softmax."""
    info = {
        "max_batch_tokens": scorer.max_batch_tokens,
        "max_batch_size": scorer.max_batch_size,
        "workers": scorer.workers,
        "intra_op_threads": scorer.intra_op_threads,
    }
    label = label or f"serving Scorer ({scorer.meta.precision})"
    return Variant(key, label, "sorted", scorer.predict, info=info)
