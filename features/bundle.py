"""The model bundle's metadata: the one contract between training (writes it) and serving
(reads it). A bundle folder holds the ONNX graph, the tokenizer, the label schema, this
metadata file and a model card; serving hard-codes none of what is recorded here.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from features.schema import LabelSchema
from features.text import DEFAULT_NORMALIZER, NORMALIZERS

BUNDLE_FORMAT = 1
META_FILE = "bundle.json"


class SelfCheck(BaseModel):
    """The logits the exported graph gave, on the machine that exported and checked it, for a
    few fixed posts. The scorer re-runs them at load: int8 kernels differ by CPU (ONNX
    Runtime's uint8 x int8 products can saturate on CPUs without VNNI) and by runtime version,
    so a bundle that passed the export gate on one machine may score differently on another."""

    texts: list[str]  # raw posts; the scorer normalizes them as it normalizes requests
    logits: dict[str, list[list[float]]]
    host: dict[str, str] = Field(default_factory=dict)  # where the logits were recorded
    max_abs_diff: float = 1e-3


def compare_self_check(check: SelfCheck, logits: dict[str, np.ndarray]) -> dict[str, object]:
    """Agreement of argmax labels per task (percent) and the largest logit difference between
    the recorded outputs and ``logits`` (same posts, same order); ``passed`` when every label
    agrees and no logit moved more than the check's tolerance."""
    agreement: dict[str, float] = {}
    diff = 0.0
    for task, ref in check.logits.items():
        want = np.asarray(ref, dtype=np.float64)
        got = np.asarray(logits[task], dtype=np.float64)
        if got.shape != want.shape:
            raise ValueError(f"self-check {task}: got shape {got.shape}, recorded {want.shape}")
        agreement[task] = round(100.0 * float((want.argmax(-1) == got.argmax(-1)).mean()), 2)
        diff = max(diff, float(np.abs(want - got).max()) if want.size else 0.0)
    passed = all(v == 100.0 for v in agreement.values()) and diff <= check.max_abs_diff
    return {
        "passed": passed,
        "agreement": agreement,
        "max_abs_diff": diff,
        "recorded_on": check.host,
        "host": host_summary(),
    }


# CPUs whose int8 dot products cannot saturate (VNNI and AMX accumulate in int32).
EXACT_INT8_ISAS = frozenset({"amx_int8", "avx512_vnni", "avx_vnni"})


def int8_session_config(isa: str | None = None) -> dict[str, str]:
    """ONNX Runtime session entries that keep int8 kernels exact on this CPU. Without VNNI, x86
    sums uint8 x int8 products in saturating int16 pairs (AVX2 vpmaddubsw): on the per-token
    graph 0.04% of pairs would overflow, moving the projections' outputs by 0.02-3%.
    ``x64quantprecision`` turns such weights into uint8 for an exact kernel; it is asked for
    only there, since ORT also applies it on an AMX CPU, where it cost 36% of the throughput
    for identical outputs."""
    isa = isa if isa is not None else host_summary()["int8_isa"]
    return {} if isa in EXACT_INT8_ISAS else {"session.x64quantprecision": "1"}


def host_summary() -> dict[str, str]:
    """The CPU and runtime facts that change int8 results: model name, the best int8 dot-product
    instructions (AMX, AVX-512 VNNI, AVX-VNNI, else AVX2/none), ONNX Runtime version."""
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:  # not Linux: leave the CPU unknown
        pass
    isa = next(
        (f for f in ("amx_int8", "avx512_vnni", "avx_vnni", "avx2") if f in flags),
        "unknown" if not flags else "none",
    )
    out = {"cpu": model, "int8_isa": isa}
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:  # a training host may lack it; the check records what it has
        pass
    return out


class BundleMeta(BaseModel):
    format: int = BUNDLE_FORMAT
    name: str
    version: str
    created_at: datetime
    base_model: str
    max_length: int = Field(gt=0)
    normalizer: str = DEFAULT_NORMALIZER
    precision: Literal["fp32", "int8"]
    onnx_file: str = "model.onnx"
    tokenizer_file: str = "tokenizer.json"
    label_schema_file: str = "label_schema.json"
    pad_token_id: int = 0
    # ONNX input names, and the output name of each task's logits.
    inputs: list[str] = Field(default_factory=lambda: ["input_ids", "attention_mask"])
    outputs: dict[str, str]
    # Per-task softmax temperature fitted on validation data, so confidences are calibrated.
    temperatures: dict[str, float] = Field(default_factory=dict)
    # Metrics on the fixed test splits, keyed by task then metric name (percent).
    metrics: dict[str, dict[str, float]] = Field(default_factory=dict)
    quantization: dict[str, object] = Field(default_factory=dict)
    # ONNX Runtime session config entries the graph was validated with (e.g. letting constant
    # folding turn int8-stored weights back into fp32 once, at load).
    ort_session_config: dict[str, str] = Field(default_factory=dict)
    training: dict[str, object] = Field(default_factory=dict)
    # Lexical experts blended into the graph's logits, per task (informational: the graph
    # computes them, serving needs nothing more).
    lexical: dict[str, object] = Field(default_factory=dict)
    # The graph output holding the pooled sentence embedding the heads read (None: not
    # exported). Serving uses it only for the labeling queue's diversity.
    embedding_output: str | None = None
    # Reference outputs the scorer re-runs at load (absent in bundles from before it existed).
    self_check: SelfCheck | None = None


class Bundle(BaseModel):
    """A bundle as read from disk: where it is, its metadata and its label schema."""

    path: Path
    meta: BundleMeta
    schema_: LabelSchema = Field(alias="schema")

    model_config = {"populate_by_name": True}

    @property
    def onnx_path(self) -> Path:
        return self.path / self.meta.onnx_file

    @property
    def tokenizer_path(self) -> Path:
        return self.path / self.meta.tokenizer_file


class BundleError(ValueError):
    """The folder is not a usable model bundle."""


def read_bundle(path: str | Path) -> Bundle:
    """Read and check a bundle's metadata; raise BundleError naming what is wrong."""
    p = Path(path)
    meta_path = p / META_FILE
    if not meta_path.is_file():
        raise BundleError(f"{p} is not a model bundle: {META_FILE} is missing")
    meta = BundleMeta.model_validate_json(meta_path.read_text(encoding="utf-8"))
    if meta.format != BUNDLE_FORMAT:
        raise BundleError(f"{p}: bundle format {meta.format}, this code reads {BUNDLE_FORMAT}")
    if meta.normalizer not in NORMALIZERS:
        raise BundleError(
            f"{p}: trained with text normalizer {meta.normalizer!r}, this code has "
            f"{sorted(NORMALIZERS)}"
        )
    schema = LabelSchema.load(p / meta.label_schema_file)
    missing = [t for t in schema.names if t not in meta.outputs]
    if missing:
        raise BundleError(f"{p}: no ONNX output for tasks {missing}")
    for f in (meta.onnx_file, meta.tokenizer_file):
        if not (p / f).is_file():
            raise BundleError(f"{p}: {f} is missing")
    return Bundle(path=p, meta=meta, schema=schema)


def write_meta(path: str | Path, meta: BundleMeta) -> None:
    (Path(path) / META_FILE).write_text(meta.model_dump_json(indent=2) + "\n", encoding="utf-8")
