"""Studies beyond the main job: 10-fold cross-validation of actionability (the published
protocol) and single-task baselines for the multi-task comparison."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from training.config import TrainConfig
from training.pipeline import run

log = logging.getLogger(__name__)


def cross_validate(
    cfg: TrainConfig, folds: list[int] | None = None, out: Path | None = None
) -> dict:
    """For each fold k: test on k, validate on the next fold (unless validation is off), train
    on the rest; mean and spread of the complaint-vs-rest macro-F1 (the published figure) and of
    the other actionability metrics, and which weights validation kept per fold."""
    per_fold: dict[int, dict[str, float]] = {}
    kept: dict[int, str | None] = {}
    for k in folds if folds is not None else range(10):
        c = cfg.model_copy(deep=True)
        c.data.complaints_test_fold = k
        if isinstance(c.data.complaints_val_fold, int):  # an explicit fold would collide
            c.data.complaints_val_fold = "next"
        c.register_model = False
        res = run(c, export=False)
        per_fold[k] = dict(res.metrics["actionability"])
        kept[k] = res.selected
        log.info("fold %d: %s", k, per_fold[k])
    keys = next(iter(per_fold.values())).keys()
    summary = {
        "folds": per_fold,
        "mean": {k: round(float(np.mean([f[k] for f in per_fold.values()])), 2) for k in keys},
        "std": {k: round(float(np.std([f[k] for f in per_fold.values()])), 2) for k in keys},
        "tasks": cfg.data.tasks,
        "weights_kept": kept,
        "validation": "the fold after the test fold"
        if cfg.data.complaints_val_fold == "next"
        else str(cfg.data.complaints_val_fold),
    }
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=2))
    return summary


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
