"""Studies beyond the main job: 10-fold cross-validation of actionability (the published
protocol) and single-task baselines for the multi-task comparison."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from training.config import DataConfig, TrainConfig
from training.pipeline import run

log = logging.getLogger(__name__)


def fingerprint(path: str | Path) -> str:
    """Where a file or folder is does not matter, what it holds does: a short hash of a file's
    bytes, or of a folder's file names and sizes (a model's weights or a data set; hashing
    their bytes would cost seconds for nothing). A string that names no path is kept as is."""
    p = Path(path)
    if p.is_file():
        return "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
        listing = "\n".join(f"{f.relative_to(p).as_posix()} {f.stat().st_size}" for f in files)
        return "files:" + hashlib.sha256(listing.encode()).hexdigest()[:16]
    return str(path)


def _study_key(cfg: TrainConfig) -> dict:
    """What makes two folds' results comparable: the whole config but the fold choice, where
    things run or are written, and what only the export uses (a CV does not export). The base
    model, label schema and data folder count by content, not path, so a study file committed
    on one machine resumes on another."""
    d = cfg.model_dump(
        mode="json",
        exclude={
            "output_dir",
            "threads",
            "tracking_uri",
            "register_model",
            "lexical",
            "gate",
            "promotion",
        },
    )
    d["data"].pop("complaints_test_fold", None)
    # Settings added after study files were written count only when set, so the files'
    # folds stay valid for the configs that produced them.
    if [s.resolved() for s in cfg.data.sources] == [s.resolved() for s in DataConfig().sources]:
        d["data"].pop("sources")
    for key, where in (("human", d["data"]), ("init_from", d)):
        if where.get(key) is None:
            where.pop(key, None)
    d["base_model"] = fingerprint(cfg.base_model)
    d["label_schema"] = fingerprint(cfg.label_schema)
    d["data"]["data_dir"] = fingerprint(cfg.data.data_dir)
    return d


def _summary(cfg: TrainConfig, per_fold: dict[int, dict], kept: dict[int, str | None]) -> dict:
    keys = next(iter(per_fold.values())).keys()
    return {
        "folds": {str(k): per_fold[k] for k in sorted(per_fold)},
        "mean": {k: round(float(np.mean([f[k] for f in per_fold.values()])), 2) for k in keys},
        "std": {k: round(float(np.std([f[k] for f in per_fold.values()])), 2) for k in keys},
        "tasks": cfg.data.tasks,
        "weights_kept": {str(k): kept[k] for k in sorted(kept)},
        "validation": "the fold after the test fold"
        if cfg.data.complaints_val_fold == "next"
        else str(cfg.data.complaints_val_fold),
        "config": _study_key(cfg),
    }


def cross_validate(
    cfg: TrainConfig, folds: list[int] | None = None, out: Path | None = None
) -> dict:
    """For each fold k: test on k, validate on the next fold (unless validation is off), train
    on the rest; mean and spread of the complaint-vs-rest macro-F1 (the published figure) and of
    the other actionability metrics, and which weights validation kept per fold.

    With ``out``, the file is rewritten after every fold with every fold done so far, and folds
    already in it from the same config are reused: a multi-task CV takes two hours on two
    cores, and an interrupted one resumes where it stopped instead of starting over. The
    summary returned covers ``folds`` only."""
    cfg = cfg.model_copy(deep=True)
    if isinstance(cfg.data.complaints_val_fold, int):  # an explicit fold would collide
        cfg.data.complaints_val_fold = "next"
    per_fold: dict[int, dict[str, float]] = {}
    kept: dict[int, str | None] = {}
    wanted = folds if folds is not None else list(range(10))
    if out and out.is_file():
        prev = json.loads(out.read_text())
        if prev.get("config") == _study_key(cfg):
            for k, v in prev.get("folds", {}).items():
                per_fold[int(k)] = v
                kept[int(k)] = prev.get("weights_kept", {}).get(k)
            log.info("resuming %s: folds %s already done", out, sorted(per_fold))
        else:
            log.warning("%s holds another config's folds; they are replaced", out)
    for k in wanted:
        if k in per_fold:
            continue
        c = cfg.model_copy(deep=True)
        c.data.complaints_test_fold = k
        c.register_model = False
        res = run(c, export=False)
        per_fold[k] = dict(res.metrics["actionability"])
        kept[k] = res.selected
        log.info("fold %d: %s", k, per_fold[k])
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(_summary(cfg, per_fold, kept), indent=2))
    return _summary(cfg, {k: per_fold[k] for k in wanted}, {k: kept.get(k) for k in wanted})


def single_task_baselines(
    cfg: TrainConfig, out: Path | None = None, tasks: list[str] | None = None
) -> dict:
    """One model per task (default: all three), trained the same way on that task's rows only.
    Actionability's baseline is also fold 0 of ``cross_validate``."""
    results = {}
    order = ("actionability", "topic", "sentiment")  # cheapest first
    for task in [t for t in order if tasks is None or t in tasks]:
        c = cfg.model_copy(deep=True)
        c.data.tasks = [task]
        c.register_model = False
        results[task] = run(c, export=False).metrics[task]
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
    return results
