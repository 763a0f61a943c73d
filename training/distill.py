"""Soft targets from trained bundles (knowledge distillation).

A teacher is a model bundle (ONNX, as shipped). Its predictions on the training rows, averaged
over teachers at a temperature, become a second target beside the human label: crowd labels
on tweets are noisy (a quarter of the airline rows have annotator agreement under 0.7), and a
teacher's soft scores say how ambiguous each row looked, which one-hot labels cannot.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from features.bundle import read_bundle
from features.calibration import softmax
from features.schema import LabelSchema
from training.data import IGNORE
from training.export.runtime import ort_predictor, session


class TeacherMismatch(ValueError):
    """A teacher bundle cannot teach this run (other labels or normalizer, or it trained on
    rows this run holds out)."""


def check_held_out(path: Path, training: dict, held_out: set[int]) -> None:
    """Refuse a teacher whose recorded training folds include this run's held-out complaints
    folds: its soft targets would carry those rows' labels into selection and the test figures.
    A bundle that records no training config cannot be checked and is refused too."""
    data = (training.get("config") or {}).get("data")
    if not data:
        raise TeacherMismatch(f"teacher {path} records no training data config to check")
    from training.config import DataConfig

    taught = DataConfig.model_validate(data)
    trained_on = set(range(10)) - {taught.complaints_test_fold, taught.val_fold}
    leaked = sorted(trained_on & held_out)
    if leaked:
        raise TeacherMismatch(
            f"teacher {path} trained on complaints folds {leaked}, which this run holds out"
        )


def teacher_probs(
    teachers: Sequence[Path],
    texts: Sequence[str],
    schema: LabelSchema,
    normalizer: str,
    temperature: float,
    held_out: set[int] | None = None,
    batch_size: int = 64,
) -> dict[str, torch.Tensor]:
    """Per task, the teachers' mean softmax(logits / temperature) for each of ``texts``.
    ``texts`` are already normalized: each teacher must have been trained with ``normalizer``,
    with the same tasks and labels, and (when ``held_out`` is given) without those complaints
    folds, or it is refused by name."""
    from transformers import PreTrainedTokenizerFast

    total: dict[str, np.ndarray] = {}
    for path in teachers:
        bundle = read_bundle(path)
        meta = bundle.meta
        if meta.normalizer != normalizer:
            raise TeacherMismatch(
                f"teacher {path} normalizes text with {meta.normalizer!r}, this run with "
                f"{normalizer!r}"
            )
        if held_out is not None:
            check_held_out(Path(path), meta.training, held_out)
        for task in schema.tasks:
            if task.name not in bundle.schema_.names or (
                bundle.schema_.task(task.name).labels != task.labels
            ):
                raise TeacherMismatch(f"teacher {path} has other labels for task {task.name!r}")
        tok = PreTrainedTokenizerFast(tokenizer_file=str(bundle.tokenizer_path))
        tok.pad_token = tok.convert_ids_to_tokens(meta.pad_token_id)
        predict = ort_predictor(
            session(bundle.onnx_path, config=meta.ort_session_config or None),
            tok,
            bundle.schema_,
            meta.max_length,
            batch_size,
        )
        step = 1024
        parts: dict[str, list[np.ndarray]] = {t: [] for t in schema.names}
        for s in tqdm(range(0, len(texts), step), desc=f"teacher {Path(path).name}", unit="chunk"):
            logits = predict(texts[s : s + step])
            for t in schema.names:
                parts[t].append(softmax(logits[t], temperature))
        for t in schema.names:
            total[t] = total.get(t, 0.0) + np.concatenate(parts[t])
    return {t: torch.from_numpy((p / len(teachers)).astype(np.float32)) for t, p in total.items()}


def distill_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    soft: torch.Tensor,
    rows: torch.Tensor,
    temperature: float,
    unlabeled: bool = False,
) -> torch.Tensor:
    """KL(teacher || student) at ``temperature``, times temperature² (so its gradients keep
    the scale of the label loss, Hinton et al. 2015), the row-weighted mean over the rows
    labelled for the task (a task's soft targets teach only where its labels would), or over
    every row when ``unlabeled`` (the teacher also teaches on rows the labels left out)."""
    keep = torch.ones_like(target, dtype=torch.bool) if unlabeled else target != IGNORE
    log_q = torch.log_softmax(logits / temperature, dim=-1)
    kl = (soft * (torch.log(soft.clamp(min=1e-12)) - log_q)).sum(-1)
    w = rows * keep
    return temperature**2 * (kl * w).sum() / w.sum().clamp(min=1e-12)
