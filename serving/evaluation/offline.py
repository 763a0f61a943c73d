"""Score a labelled corpus offline exactly as the API would: the served bundle's probabilities,
then the triage core's priority. Shared by the priority-quality and replay benchmarks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from features.schema import LabelSchema
from serving import routing, triage
from serving.inference import Scorer
from serving.priority import Policy
from serving.schemas import Post, ScoreResult
from serving.settings import Settings


def serving_defaults() -> tuple[float, dict[str, float]]:
    """(actionable threshold, per-task abstention) as a server with default settings uses them,
    read from the one Settings class rather than copied."""
    fields = Settings.model_fields
    abstain = fields["abstain_below"].default_factory()  # type: ignore[misc]
    return float(fields["actionable_threshold"].default), dict(abstain)


def predict(scorer: Scorer, texts: Sequence[str], chunk: int = 512) -> dict[str, np.ndarray]:
    """Per-task probabilities for every text, computed in chunks (bounded memory)."""
    parts = [scorer.predict(texts[i : i + chunk]) for i in range(0, len(texts), chunk)]
    return {t: np.concatenate([p[t] for p in parts]) for t in scorer.tasks}


def prioritize(
    posts: Sequence[Post],
    probs: Mapping[str, np.ndarray],
    schema: LabelSchema,
    policy: Policy,
    *,
    actionable_threshold: float | None = None,
    abstain_below: Mapping[str, float] | None = None,
) -> list[ScoreResult]:
    """The API's results for ``posts`` (routes empty: no roster), from precomputed ``probs``."""
    threshold, abstain = serving_defaults()
    return triage.triage(
        posts,
        probs,
        schema,
        policy,
        routing.Roster([], policy.routing),
        actionable_threshold=threshold if actionable_threshold is None else actionable_threshold,
        abstain_below=abstain if abstain_below is None else abstain_below,
    )
