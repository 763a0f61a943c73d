"""One encoder, one classification head per task: a post costs one encoder pass."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, BertConfig

from features.schema import LabelSchema


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over tokens: the pooling all-MiniLM-L6-v2 was trained with."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-6)


class MultiTaskModel(nn.Module):
    """A shared transformer encoder with a linear head per task of the label schema."""

    def __init__(self, encoder: nn.Module, schema: LabelSchema, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.schema = schema
        hidden = encoder.config.hidden_size
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({t.name: nn.Linear(hidden, len(t.labels)) for t in schema.tasks})

    @classmethod
    def from_pretrained(cls, path: str | Path, schema: LabelSchema, dropout: float = 0.1):
        encoder = AutoModel.from_pretrained(str(path), add_pooling_layer=False)
        return cls(encoder, schema, dropout)

    @classmethod
    def tiny(cls, schema: LabelSchema, vocab_size: int, seed: int = 0) -> MultiTaskModel:
        """A randomly initialised two-layer BERT, for fast tests of the whole pipeline."""
        torch.manual_seed(seed)
        cfg = BertConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=512,
        )
        return cls(AutoModel.from_config(cfg, add_pooling_layer=False), schema)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        pooled = self.dropout(mean_pool(out.last_hidden_state, attention_mask))
        return {name: head(pooled) for name, head in self.heads.items()}


class ExportWrapper(nn.Module):
    """Positional inputs and a tuple of logits in schema order, as ONNX export wants."""

    def __init__(self, model: MultiTaskModel) -> None:
        super().__init__()
        self.model = model
        self.names = model.schema.names

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        out = self.model(input_ids, attention_mask)
        return tuple(out[n] for n in self.names)


def base_config(path: str | Path):
    return AutoConfig.from_pretrained(str(path))
