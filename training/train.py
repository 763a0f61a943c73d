"""Multi-task fine-tuning: one shuffled stream of rows, a masked loss per head."""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import DatasetDict
from tqdm.auto import tqdm
from transformers import AutoTokenizer, PreTrainedTokenizerBase, get_linear_schedule_with_warmup

from features.schema import LabelSchema
from training.config import TrainConfig
from training.data import IGNORE
from training.distill import distill_loss, teacher_probs
from training.encoders import resolve_base_model
from training.evaluate import eval_sets, evaluate, fit_temperature
from training.model import MultiTaskModel
from training.predict import collate, make_predictor
from training.resume import EpochState, load_state, restore_rng, save_state

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Trained:
    model: MultiTaskModel
    tokenizer: PreTrainedTokenizerBase
    schema: LabelSchema
    config: TrainConfig
    history: list[dict[str, float]]
    temperatures: dict[str, float]
    selected: str = ""  # which weights were kept, e.g. "epoch 3 ema"


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, rng: random.Random, group: int = 50
) -> list[list[int]]:
    """Shuffle, sort by length inside groups of ``group`` batches, shuffle the batches:
    batches of similar lengths (little padding) in random order."""
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    batches: list[list[int]] = []
    step = batch_size * group
    for s in range(0, len(idx), step):
        chunk = sorted(idx[s : s + step], key=lambda i: lengths[i])
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def load_tokenizer(cfg: TrainConfig):
    if cfg.init_from is not None:
        return AutoTokenizer.from_pretrained(resolve_checkpoint(cfg.init_from) / "tokenizer")
    return AutoTokenizer.from_pretrained(resolve_base_model(cfg.base_model))


def build_model(cfg: TrainConfig, schema: LabelSchema, tokenizer) -> MultiTaskModel:
    if cfg.init_from is not None:
        return grow_from(resolve_checkpoint(cfg.init_from), schema, cfg.dropout)
    if cfg.tiny:
        return MultiTaskModel.tiny(schema, vocab_size=len(tokenizer), seed=cfg.seed)
    # From the pretrained encoder every head is new, so a task that gained labels
    # (``--add-labels``) simply gets a head with the longer label list.
    return MultiTaskModel.from_pretrained(
        resolve_base_model(cfg.base_model), schema, dropout=cfg.dropout
    )


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AMX or AVX-512 BF16): elsewhere bf16
    autocast is emulated and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def use_bf16(precision: str) -> bool:
    """``TrainConfig.precision`` resolved on this machine."""
    return precision == "bf16" or (precision == "auto" and cpu_has_bf16())


def resolve_checkpoint(path: Path) -> Path:
    """The training checkpoint folder ``path`` names: the folder itself (``model.pt``), or,
    for a bundle, the checkpoint it was exported from when it is on this machine. A bundle's
    int8 ONNX weights cannot be trained on, so a bundle without its checkpoint is refused."""
    p = Path(path)
    if (p / "model.pt").is_file():
        return p
    meta = p / "bundle.json"
    if not meta.is_file():
        raise ValueError(f"{p} is neither a training checkpoint (model.pt) nor a bundle")
    training = json.loads(meta.read_text(encoding="utf-8")).get("training") or {}
    looked = [Path(training["checkpoint"])] if training.get("checkpoint") else []
    out_dir = (training.get("config") or {}).get("output_dir")
    if training.get("mlflow_run_id") and out_dir:
        looked.append(Path(out_dir) / training["mlflow_run_id"])
    looked.append(p.parent)  # caretriage train writes the bundle inside its checkpoint
    for c in looked:
        if (c / "model.pt").is_file():
            return c
    raise ValueError(
        f"{p} is a bundle whose training checkpoint is not here (looked in "
        f"{[str(c) for c in looked]}); pass the checkpoint folder (artifacts/train/<run>/)"
    )


def grow_from(checkpoint: Path, schema: LabelSchema, dropout: float) -> MultiTaskModel:
    """The checkpoint's model with heads for ``schema``: the encoder as trained, each head's
    rows copied for the labels the checkpoint knew (matched by name, so order may change),
    fresh rows for new labels and fresh heads for new tasks."""
    old = load_checkpoint(checkpoint)
    model = MultiTaskModel(old.model.encoder, schema, dropout)
    with torch.no_grad():
        for task in schema.tasks:
            if task.name not in old.schema.names:
                continue
            was = old.schema.task(task.name).labels
            src, dst = old.model.heads[task.name], model.heads[task.name]
            for i, label in enumerate(task.labels):
                if label in was:
                    dst.weight[i] = src.weight[was.index(label)]
                    dst.bias[i] = src.bias[was.index(label)]
    grown = {
        t.name: len(t.labels) - len(old.schema.task(t.name).labels)
        for t in schema.tasks
        if t.name in old.schema.names
    }
    log.info("initialized from %s; outputs added per head: %s", checkpoint, grown)
    return model


def class_weights(y: torch.Tensor, n_labels: int, mode: str) -> torch.Tensor | None:
    """Loss weights per class from training frequencies (None: unweighted)."""
    if mode == "none":
        return None
    counts = torch.bincount(y[y != IGNORE], minlength=n_labels).float().clamp(min=1)
    w = counts.sum() / (n_labels * counts)
    return w.sqrt() if mode == "sqrt_inv" else w


def loss_for(task: str, y: torch.Tensor, n_labels: int, cfg: TrainConfig):
    """Cross-entropy with the task's class weights, each row also weighted by its own weight:
    ``loss(logits, y, row_weights)``, the weighted mean over the rows labelled for the task."""
    w = class_weights(y, n_labels, cfg.class_weight.get(task, "none"))
    ce = torch.nn.CrossEntropyLoss(weight=w, ignore_index=IGNORE, reduction="none")

    def loss(logits: torch.Tensor, target: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        keep = target != IGNORE
        denom = rows * (w[target.clamp(min=0)] if w is not None else 1.0)
        return (ce(logits, target) * rows).sum() / denom[keep].sum().clamp(min=1e-12)

    return loss


class WeightAverage:
    """An exponential moving average of the trainable weights (decay warmed up from 0, so
    early steps do not drag the average towards the pretrained start)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.steps = 0
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = dict(model.named_parameters())
        self.live = [params[n] for n in self.names]
        self.shadow = [p.detach().clone() for p in self.live]

    @torch.no_grad()
    def update(self) -> None:
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        torch._foreach_mul_(self.shadow, d)
        torch._foreach_add_(self.shadow, [p.detach() for p in self.live], alpha=1 - d)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange live and averaged weights (call twice to restore)."""
        for p, s in zip(self.live, self.shadow, strict=True):
            tmp = p.detach().clone()
            p.copy_(s)
            s.copy_(tmp)


def selection_score(row: dict[str, float], tasks: Sequence[str]) -> float:
    """Mean validation macro-F1 over the tasks that have validation rows (model selection)."""
    vals = [row[f"val_{t}_macro_f1"] for t in tasks if f"val_{t}_macro_f1" in row]
    return float(np.mean(vals)) if vals else float("nan")


def train(
    cfg: TrainConfig, corpus: DatasetDict, on_epoch=None, schema: LabelSchema | None = None
) -> Trained:
    """Fine-tune all heads jointly; ``on_epoch(epoch, metrics)`` is called after each epoch.
    ``schema`` overrides the config's file (human labels may have added labels to it)."""
    seed_everything(cfg.seed)
    torch.set_num_threads(max(1, cfg.threads))
    schema = schema or LabelSchema.load(cfg.label_schema)
    tokenizer = load_tokenizer(cfg)
    model = build_model(cfg, schema, tokenizer)
    if cfg.freeze_word_embeddings:
        # Tweets are short and the data small: the pretrained vocabulary is kept as it is,
        # which also makes training a third faster and int8 quantization of it safer.
        model.encoder.embeddings.word_embeddings.weight.requires_grad_(False)

    train_ds = corpus["train"]
    enc = tokenizer(list(train_ds["text"]), truncation=True, max_length=cfg.max_length)["input_ids"]
    labels = {t: torch.tensor(train_ds[t]) for t in schema.names}
    row_weights = (
        torch.tensor(train_ds["weight"], dtype=torch.float32)
        if "weight" in train_ds.column_names
        else torch.ones(len(train_ds))
    )
    lengths = [len(x) for x in enc]
    soft = (
        teacher_probs(
            cfg.distill.teachers,
            list(train_ds["text"]),
            schema,
            cfg.data.normalizer,
            cfg.distill.temperature,
            held_out={
                f for f in (cfg.data.complaints_test_fold, cfg.data.val_fold) if f is not None
            },
        )
        if cfg.distill
        else None
    )

    soft_tasks = set(cfg.distill.unlabeled_tasks) if cfg.distill else set()
    if soft_tasks - set(schema.names):
        raise ValueError(
            f"distill.unlabeled_tasks names {sorted(soft_tasks - set(schema.names))}, which the "
            f"label schema lacks; its tasks: {schema.names}"
        )
    head_params = [p for n, p in model.named_parameters() if n.startswith("heads.")]
    enc_params = [
        p for n, p in model.named_parameters() if not n.startswith("heads.") and p.requires_grad
    ]
    opt = torch.optim.AdamW(
        [{"params": enc_params, "lr": cfg.lr}, {"params": head_params, "lr": cfg.head_lr}],
        weight_decay=cfg.weight_decay,
    )
    steps_per_epoch = math.ceil(len(enc) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    sched = get_linear_schedule_with_warmup(opt, int(cfg.warmup_ratio * total), total)
    loss_fns = {t: loss_for(t, labels[t], len(schema.task(t).labels), cfg) for t in schema.names}
    rng = random.Random(cfg.seed)
    predict = make_predictor(model, tokenizer, cfg.max_length)
    history: list[dict[str, float]] = []
    best: tuple[float, str, dict[str, torch.Tensor]] | None = None
    bf16 = use_bf16(cfg.precision)
    log.info("training precision: %s", "bf16 autocast" if bf16 else "fp32")

    # Only the trained tasks are validated: a single-task run skips the others' rows, and a run
    # whose tasks have no validation rows (actionability alone) skips validation altogether.
    val_tasks = [t for t, (texts, _, _) in eval_sets(corpus, "val").items() if texts]
    val_tasks = [t for t in val_tasks if t in cfg.data.tasks]
    # The average is only worth keeping if it can be chosen (validation) or is the result.
    keep_average = cfg.ema_decay and (val_tasks or not cfg.select_best)
    ema = WeightAverage(model, cfg.ema_decay) if keep_average else None

    def validate(prefix: str) -> dict[str, float]:
        if not val_tasks:
            return {}
        val_metrics, _ = evaluate(predict, schema, corpus, split="val", tasks=val_tasks)
        return {
            f"{prefix}val_{t}_{k}": v
            for t, m in val_metrics.items()
            for k, v in m.items()
            if k != "n"
        }

    start = 1
    state = load_state(cfg.resume_dir, cfg) if cfg.resume_dir else None
    if state is not None:
        model.load_state_dict(state.model)
        opt.load_state_dict(state.optimizer)
        sched.load_state_dict(state.scheduler)
        if ema is not None and state.ema is not None:
            ema.steps = state.ema["steps"]
            for s, v in zip(ema.shadow, state.ema["shadow"], strict=True):
                s.copy_(v)
        best, history = state.best, state.history
        restore_rng(rng, state)
        start = state.epoch + 1

    for epoch in range(start, cfg.epochs + 1):
        model.train()
        batches = length_grouped_batches(lengths, cfg.batch_size, rng)
        running = {t: 0.0 for t in schema.names}
        counts = {t: 0 for t in schema.names}
        bar = tqdm(batches, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch")
        for b in bar:
            ids, mask = collate([enc[i] for i in b], tokenizer.pad_token_id)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = model(ids, mask)
            out = {t: v.float() for t, v in out.items()}
            loss = torch.zeros(())
            for t in schema.names:
                y = labels[t][b]
                soft_everywhere = t in soft_tasks
                if (y != IGNORE).any() or soft_everywhere:
                    lt = loss_fns[t](out[t], y, row_weights[b])
                    if soft is not None and cfg.distill is not None:
                        kd = distill_loss(
                            out[t],
                            y,
                            soft[t][b],
                            row_weights[b],
                            cfg.distill.temperature,
                            unlabeled=soft_everywhere,
                        )
                        lt = (1 - cfg.distill.alpha) * lt + cfg.distill.alpha * kd
                    loss = loss + cfg.task_weights.get(t, 1.0) * lt
                    running[t] += lt.item()
                    counts[t] += 1
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        row: dict[str, float] = {"epoch": epoch, "epoch_seconds": bar.format_dict["elapsed"]}
        row.update({f"train_loss_{t}": running[t] / max(1, counts[t]) for t in schema.names})
        row.update(validate(""))
        candidates = [("raw", row)]
        if ema is not None and val_tasks:
            ema.swap()
            ema_row = validate("ema_")
            row.update(ema_row)
            candidates.append(("ema", {k[4:]: v for k, v in ema_row.items()}))
        for kind, metrics in candidates:
            score = selection_score(metrics, schema.names)
            # No validation rows for the trained tasks (a NaN score): nothing to select on.
            if cfg.select_best and not math.isnan(score) and (best is None or score > best[0]):
                state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                if kind == "raw" and ema is not None:  # the live weights are the EMA ones now
                    state = _raw_state(model, ema, state)
                best = (score, f"epoch {epoch} {kind}", state)
        if ema is not None:
            ema.swap()
        history.append(row)
        log.info("epoch %d: %s", epoch, json.dumps(row))
        # The state first: a callback that stops the run (or fails) must not lose the epoch.
        if cfg.resume_dir:
            save_state(
                cfg.resume_dir,
                cfg,
                EpochState(
                    epoch=epoch,
                    model=model.state_dict(),
                    optimizer=opt.state_dict(),
                    scheduler=sched.state_dict(),
                    ema={"steps": ema.steps, "shadow": ema.shadow} if ema is not None else None,
                    best=best,
                    history=history,
                    rng=rng.getstate(),
                    torch_rng=torch.get_rng_state(),
                ),
            )
        if on_epoch:
            on_epoch(epoch, row)

    if best is not None:
        log.info("keeping %s (mean validation macro-F1 %.2f)", best[1], best[0])
        model.load_state_dict(best[2])
    elif ema is not None and not cfg.select_best:
        ema.swap()  # selection off: the averaged weights are the result
    # (selection on but no validation rows: the last raw weights, as without averaging)
    temperatures = calibrate(predict, corpus, schema, val_tasks)
    if best is not None:
        selected = best[1]
    else:
        averaged = ema is not None and not cfg.select_best
        selected = f"epoch {cfg.epochs} {'ema' if averaged else 'raw'}"
    return Trained(model.eval(), tokenizer, schema, cfg, history, temperatures, selected)


def _raw_state(
    model: torch.nn.Module, ema: WeightAverage, state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``state`` (taken while the EMA weights are live) with the raw weights put back."""
    for name, raw in zip(ema.names, ema.shadow, strict=True):
        state[name] = raw.detach().clone()
    return state


def calibrate(
    predict, corpus: DatasetDict, schema: LabelSchema, tasks: Sequence[str] | None = None
) -> dict[str, float]:
    """Per-task temperature on validation rows (of ``tasks`` if given); 1.0 for a task
    without validation data."""
    temps = {t: 1.0 for t in schema.names}
    for task, (texts, gold, _) in eval_sets(corpus, "val").items():
        if texts and (tasks is None or task in tasks):
            temps[task] = fit_temperature(predict(texts)[task], gold)
    return temps


def save_checkpoint(trained: Trained, out: Path) -> Path:
    """Weights, tokenizer, label schema and config together (labels saved with the weights)."""
    out.mkdir(parents=True, exist_ok=True)
    torch.save(trained.model.state_dict(), out / "model.pt")
    trained.model.encoder.config.save_pretrained(out / "encoder")
    trained.tokenizer.save_pretrained(out / "tokenizer")
    trained.schema.save(out / "label_schema.json")
    (out / "train_config.json").write_text(trained.config.model_dump_json(indent=2))
    (out / "temperatures.json").write_text(json.dumps(trained.temperatures, indent=2))
    history = {"epochs": trained.history, "selected": trained.selected}
    (out / "history.json").write_text(json.dumps(history, indent=2))
    return out


def load_checkpoint(path: Path) -> Trained:
    from transformers import AutoConfig, AutoModel

    cfg = TrainConfig.model_validate_json((path / "train_config.json").read_text())
    schema = LabelSchema.load(path / "label_schema.json")
    tok = AutoTokenizer.from_pretrained(path / "tokenizer")
    encoder = AutoModel.from_config(
        AutoConfig.from_pretrained(path / "encoder"), add_pooling_layer=False
    )
    model = MultiTaskModel(encoder, schema, cfg.dropout)
    model.load_state_dict(torch.load(path / "model.pt", map_location="cpu"))
    temps = json.loads((path / "temperatures.json").read_text())
    hist = path / "history.json"
    history = json.loads(hist.read_text()) if hist.is_file() else {}
    return Trained(
        model.eval(),
        tok,
        schema,
        cfg,
        history.get("epochs", []),
        temps,
        history.get("selected", ""),
    )
