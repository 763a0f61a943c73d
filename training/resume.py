"""Per-epoch training state, so that a long run (the teacher's takes hours on a CPU) that is
interrupted continues after its last finished epoch instead of starting over.

The state is everything the next epoch depends on: weights, optimizer and schedule, the weight
average, the best weights so far, the history, and the random states (batch order, dropout).
A run resumed from it takes the same batches and gets the same weights as one that was never
interrupted. The state names the config it belongs to; another config's state is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from training.config import TrainConfig

log = logging.getLogger(__name__)
STATE = "state.pt"


class ResumeMismatch(ValueError):
    """The resume folder holds the state of a run with another config."""


def config_fingerprint(cfg: TrainConfig) -> str:
    """What must match for a state to be resumed: the config minus the fields that do not
    change the trained weights (where things are written, threads, tracking)."""
    d = json.loads(cfg.model_dump_json())
    skip = ("threads", "output_dir", "tracking_uri", "experiment", "register_model", "name")
    after = ("lexical", "max_bundle_mb", "export_precision", "gate", "promotion", "policy")
    for key in (*skip, *after, "resume_dir"):  # export-time settings; a moved state folder
        d.pop(key, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class EpochState:
    epoch: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    ema: dict[str, Any] | None
    best: tuple[float, str, dict[str, torch.Tensor]] | None
    history: list[dict[str, float]]
    rng: Any  # random.Random state (batch order)
    torch_rng: torch.Tensor  # dropout


def save_state(folder: Path, cfg: TrainConfig, state: EpochState) -> Path:
    """Write ``state`` atomically (a temporary file renamed over the last one)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{STATE}.tmp"
    torch.save({"fingerprint": config_fingerprint(cfg), **state.__dict__}, tmp)
    os.replace(tmp, folder / STATE)
    return folder / STATE


def load_state(folder: Path, cfg: TrainConfig) -> EpochState | None:
    """The state saved in ``folder`` for this config, or None when there is none."""
    path = folder / STATE
    if not path.is_file():
        return None
    raw = torch.load(path, map_location="cpu", weights_only=False)
    if raw.pop("fingerprint") != config_fingerprint(cfg):
        raise ResumeMismatch(
            f"{path} was written by a run with another config; use another resume_dir or "
            "delete the folder to start over"
        )
    state = EpochState(**raw)
    log.info("resuming after epoch %d from %s", state.epoch, path)
    return state


def restore_rng(rng: random.Random, state: EpochState) -> None:
    rng.setstate(state.rng)
    torch.set_rng_state(state.torch_rng)
