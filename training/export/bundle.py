"""Build a model bundle: export, optimize, quantize and check the graph, then write the bundle
folder only if it passes (or, not strict, with its failures on record).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from features.bundle import BundleMeta, SelfCheck, host_summary, write_meta
from features.schema import LabelSchema
from features.text import normalize_text
from training.config import LexicalConfig
from training.data import task_columns
from training.evaluate import Predictor, eval_sets, evaluate, fit_temperature
from training.export.config import ExportConfig
from training.export.embedding import expose_embedding
from training.export.gate import (
    ExportCheckFailed,
    ExportReport,
    agreement,
    batch_flip_rate,
    lexical_parity,
)
from training.export.graph import centered_rms_layer_norms, export_onnx, optimize, output_names
from training.export.recipes import RECIPES, choose_recipe
from training.export.runtime import SESSION_CONFIG, ort_predictor, session
from training.lexical import LexicalExperts, add_to_graph, fit_experts, piece_ids
from training.model import MultiTaskModel
from training.predict import make_predictor

log = logging.getLogger(__name__)


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


def tokenizer_json(tokenizer, max_length: int, dst: Path) -> Path:
    """The fast tokenizer's file, with truncation at max_length and no fixed padding (serving
    pads each batch to its longest member)."""
    tok = tokenizer.backend_tokenizer
    tok.no_padding()
    tok.enable_truncation(max_length=max_length)
    # Compact: tokenizers indents it, which costs bundle budget (EXPERIMENTS.md).
    tok.save(str(dst), pretty=False)
    return dst


def dir_mb(path: Path) -> float:
    """Size of the files under ``path`` in MB (1e6 bytes), as the gate's budget counts it."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def build_bundle(
    model: MultiTaskModel,
    tokenizer,
    schema: LabelSchema,
    corpus,
    out: Path,
    config: ExportConfig,
    *,
    training: dict[str, object] | None = None,
    torch_predict: Predictor | None = None,
) -> ExportReport:
    """Export, optimize, quantize and check; write the bundle to ``out`` only if it passes.

    A failed check raises ExportCheckFailed when ``config.strict``; otherwise the bundle is
    written with the failures recorded (report, bundle.json) and the caller decides. ``corpus``
    texts are already normalized; ``config.normalizer`` names how, so serving normalizes posts
    the same way. With ``config.lexical``, tasks whose validation macro-F1 a lexical expert
    lifts get one blended into the graph (training.lexical) after the PyTorch parity check,
    and their temperatures are refitted on the blended validation logits; every later check
    and metric is of the blended graph, and the blend itself is checked against its NumPy
    reference. ``training`` is the run's record for bundle.json; ``torch_predict`` reuses the
    caller's PyTorch predictor for the parity check.
    """
    gate, max_length, precision = config.gate, config.max_length, config.precision
    temperatures = dict(config.temperatures)
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
        torch_predict = torch_predict or make_predictor(model, tokenizer, max_length)
        a, b = torch_predict(sample), ort32(sample)
        diff = max(float(np.abs(a[t] - b[t]).max()) for t in schema.names)
        log.info("fp32 ONNX vs PyTorch: max |logit diff| = %.2e", diff)

        failures: list[str] = []
        if diff > gate.fp32_max_abs_diff:
            failures.append(
                f"fp32 ONNX differs from PyTorch by {diff:.2e} > {gate.fp32_max_abs_diff}"
            )
        experts = None
        if config.lexical is not None:
            experts = fit_lexical(corpus, tokenizer, schema, max_length, ort32, config.lexical)
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
            quant = {
                "batch_flip_rate": flip,
                "method": "ONNX Runtime int8: " + RECIPES[recipe].describe(),
                "recipe": recipe,
                "fp32_compute_int8_weights": fp32_nodes,
                "validation_agreement": val_agree,
                "validation_target": gate.validation_target,
            }
            failures += gate.int8_failures(flip, agree, fp32_metrics, int8_metrics)

        # 2. Write the bundle.
        stage = work / "bundle"
        stage.mkdir()
        shutil.copy(final, stage / "model.onnx")
        embedding = expose_embedding(stage / "model.onnx", output_names(schema))
        tokenizer_json(tokenizer, max_length, stage / "tokenizer.json")
        schema.save(stage / "label_schema.json")
        version = datetime.now(UTC).strftime("%Y%m%d.%H%M%S")
        meta = BundleMeta(
            name=config.name,
            version=f"{config.name}-{version}-{precision}",
            created_at=datetime.now(UTC),
            base_model=config.base_model,
            max_length=max_length,
            normalizer=config.normalizer,
            precision=precision,
            pad_token_id=int(tokenizer.pad_token_id),
            outputs=output_names(schema),
            temperatures=temperatures,
            metrics=int8_metrics,
            quantization=quant | {"fp32_metrics": fp32_metrics, "int8_agreement": agree},
            ort_session_config=SESSION_CONFIG,
            training=training or {},
            lexical=experts.summary() if experts is not None else {},
            embedding_output=embedding,
            self_check=self_check(final, tokenizer, schema, max_length, config.normalizer),
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
        if failures and config.strict:
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


def _agreement_texts(corpus, cap: int = 1000) -> dict[str, list[str]]:
    """Texts that choose the recipe, mirroring the test sets of the gate but never test
    rows: the validation rows of each task; for a task without validation rows (actionability
    without a validation fold), its training rows (agreement needs no labels), else the first
    task's validation texts."""
    val = eval_sets(corpus, "val")
    out = {task: texts[:cap] for task, (texts, _, _) in val.items() if texts}
    train = corpus["train"]
    first = next(iter(out.values()), [])
    for task in task_columns(train):
        if task not in out:
            rows = [t for t, y in zip(train["text"], train[task], strict=True) if y >= 0]
            out[task] = rows[:cap] or first
    return out
