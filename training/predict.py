"""The PyTorch predictor: texts -> logits per task from a model in memory.

Training validates with it every epoch, the pipeline evaluates with it, and the export checks
the ONNX graph against it; it lives apart from the training loop so that all of them import it
from here (the ONNX Runtime predictor is ``training.export.runtime.ort_predictor``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from training.evaluate import Logits, Predictor
from training.model import MultiTaskModel


def collate(ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids padded to the longest row, and the attention mask."""
    n = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), n), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1
    return input_ids, mask


def make_predictor(
    model: MultiTaskModel, tokenizer, max_length: int, batch_size: int = 64
) -> Predictor:
    """texts -> logits per task, in input order (length-sorted batches inside)."""

    @torch.inference_mode()
    def predict(texts: Sequence[str]) -> Logits:
        model.eval()
        enc = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
        order = np.argsort([len(x) for x in enc], kind="stable")
        out: dict[str, list[np.ndarray]] = {n: [] for n in model.schema.names}
        for s in range(0, len(order), batch_size):
            ids, mask = collate([enc[i] for i in order[s : s + batch_size]], tokenizer.pad_token_id)
            for n, v in model(ids, mask).items():
                out[n].append(v.float().numpy())
        inv = np.empty_like(order)
        inv[order] = np.arange(len(order))
        return {n: np.concatenate(v)[inv] for n, v in out.items()}

    return predict
