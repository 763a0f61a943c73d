"""The settings of one export, as one typed value: what ``build_bundle`` is told, logged whole
to MLflow (``export/config.json``) beside the report of what it measured."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from features.text import DEFAULT_NORMALIZER
from training.config import LexicalConfig
from training.export.gate import ExportGate


class ExportConfig(BaseModel):
    """How to export, check and describe a trained model as a bundle."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # The bundle's name (its version is ``<name>-<timestamp>-<precision>``).
    name: str
    # The encoder the model was fine-tuned from, as the bundle and model card name it.
    base_model: str
    max_length: int = Field(gt=0)
    # Calibrated softmax temperature per task (validation); tasks given a lexical expert are
    # refitted on the blended graph's validation logits.
    temperatures: dict[str, float]
    precision: Literal["int8", "fp32"] = "int8"
    # A failed check raises ExportCheckFailed; otherwise the bundle is written with its
    # failures on record and the caller decides.
    strict: bool = True
    # How the corpus texts were normalized, so that serving normalizes posts the same way.
    normalizer: str = DEFAULT_NORMALIZER
    # Lexical experts to fit and blend into the graph (None: the transformer alone).
    lexical: LexicalConfig | None = None
    # Thresholds of the checks and the int8 recipes to try, in order.
    gate: ExportGate = Field(default_factory=ExportGate)
