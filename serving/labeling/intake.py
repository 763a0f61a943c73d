"""Posts entering the labeling pool with the served model's view of them: its suggested labels
and confidences (shown to evaluators), its uncertainty (the queue's order) and a sentence
vector (the queue's diversity).

The vector is the model's own sentence embedding when the bundle's graph exports it
(``embedding_output``; the shipped bundle does), else a hashed bag of the post's word pieces
(``features.active.hashed_vector``), which needs nothing but the tokenizer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from features import active
from features.bundle import Bundle
from features.schema import LabelSchema
from serving.labeling.store import NewItem, text_key

if TYPE_CHECKING:
    from serving.inference import Scorer


@dataclass
class Incoming:
    """One post offered to the pool, whatever it came from (upload, traffic, import)."""

    text: str
    external_id: str | None = None
    channel: str | None = None
    author: dict[str, Any] | None = None
    context: dict[str, Any] | None = None


def suggestions(
    probs: Mapping[str, np.ndarray], schema: LabelSchema
) -> list[dict[str, dict[str, Any]]]:
    """Per post, per task: the model's label, its confidence and every label's probability."""
    tasks = [t for t in schema.tasks if t.name in probs]
    n = len(next(iter(probs.values()))) if probs else 0
    out: list[dict[str, dict[str, Any]]] = [{} for _ in range(n)]
    for task in tasks:
        p = np.asarray(probs[task.name], dtype=np.float64)
        best = p.argmax(axis=1)
        for i in range(n):
            out[i][task.name] = {
                "label": task.labels[int(best[i])],
                "confidence": round(float(p[i, best[i]]), 4),
                "scores": {
                    lab: round(float(x), 4) for lab, x in zip(task.labels, p[i], strict=True)
                },
            }
    return out


def new_items(
    posts: Sequence[Incoming],
    probs: Mapping[str, np.ndarray],
    token_ids: Sequence[Sequence[int]],
    normalized: Sequence[str],
    schema: LabelSchema,
    *,
    model_version: str,
    source: str,
    method: active.Method = "margin",
    expires_at: datetime | None = None,
    vectors: np.ndarray | None = None,
) -> list[NewItem]:
    """Pool items for ``posts`` given the model's probabilities, their token ids and their
    normalized texts (the pool's identity); ``vectors`` are the model's sentence embeddings
    when its graph exports them (``Scorer.embed``), else word pieces are hashed."""
    sugg = suggestions(probs, schema)
    unc = active.uncertainty(probs, method) if probs else np.zeros(len(posts))
    return [
        NewItem(
            text=post.text,
            text_key=text_key(norm),
            source=source,
            external_id=post.external_id,
            channel=post.channel,
            author=post.author,
            context=post.context,
            model_version=model_version,
            suggestion=sugg[i],
            uncertainty=float(unc[i]),
            embedding=active.hashed_vector(ids) if vectors is None else vectors[i],
            expires_at=expires_at,
        )
        for i, (post, ids, norm) in enumerate(zip(posts, token_ids, normalized, strict=True))
    ]


def incoming(post: Any) -> Incoming:
    """A scored post (``schemas.Post``) or an uploaded one (``schemas.UploadPost``)."""
    return Incoming(
        text=post.text,
        external_id=post.id,
        channel=post.channel.value if post.channel else None,
        author=post.author.model_dump() if post.author else None,
        context={"customer": post.customer.model_dump(mode="json")} if post.customer else None,
    )


def pool_items(
    posts: Sequence[Incoming],
    probs: Mapping[str, np.ndarray],
    scorer: Scorer,
    bundle: Bundle,
    *,
    source: str,
    method: active.Method = "margin",
    expires_at: datetime | None = None,
) -> list[NewItem]:
    """``new_items`` for posts the scorer of ``bundle`` gave ``probs``: tokenized, normalized
    and embedded by that same scorer (blocking: call it from a worker thread)."""
    texts = [p.text for p in posts]
    return new_items(
        posts,
        probs,
        scorer.encode(texts),
        [scorer.normalize(t) for t in texts],
        bundle.schema_,
        model_version=bundle.meta.version,
        source=source,
        method=method,
        expires_at=expires_at,
        vectors=scorer.embed(texts),
    )
