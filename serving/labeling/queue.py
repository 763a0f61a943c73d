"""The queue's active-learning order: re-rank the head of the open items by uncertainty and
diversity (``features.active``), off the request path (the app's upkeep task calls it)."""

from __future__ import annotations

import numpy as np
from sqlalchemy import and_, bindparam, false, select, update

from features import active
from serving.labeling.store import LabelingStore
from serving.labeling.tables import items_table as I


def refresh_priorities(
    ls: LabelingStore,
    head: int = 500,
    *,
    diversity_weight: float = 0.5,
    labeled_cap: int = 2000,
    diversify: active.Diversify = "kcenter",
) -> int:
    """Re-order the queue's head by uncertainty and diversity (``features.active``): the
    ``head * 4`` most uncertain open items are ranked by greedy k-center against the
    most recently labeled ones; the first ``head`` get priorities above every plain
    uncertainty (which stays the order of the rest). Returns how many were ranked. With
    ``diversify`` "kmeans" the pool is ``head * 10`` items cut into k-means clusters, one
    representative each (fewer labels to a target early on: benchmarks/active_learning.py)."""
    pool_factor = 10.0 if diversify == "kmeans" else 4.0
    with ls.store.engine.connect() as conn:
        cand = conn.execute(
            select(I.c.id, I.c.uncertainty, I.c.embedding)
            .where(I.c.state == "open", I.c.audit == false(), I.c.embedding.is_not(None))
            .order_by(I.c.uncertainty.desc(), I.c.id)
            .limit(int(head * pool_factor))
        ).all()
        done = (
            conn.execute(
                select(I.c.embedding)
                .where(I.c.done > 0, I.c.embedding.is_not(None))
                .order_by(I.c.id.desc())
                .limit(labeled_cap)
            )
            .scalars()
            .all()
        )
    if not cand:
        return 0
    vecs = np.stack([np.frombuffer(c.embedding, dtype=np.float16) for c in cand])
    labeled = np.stack([np.frombuffer(b, dtype=np.float16) for b in done]) if done else None
    order = active.select(
        np.array([c.uncertainty for c in cand]),
        vecs.astype(np.float32),
        min(head, len(cand)),
        labeled.astype(np.float32) if labeled is not None else None,
        pool_factor=pool_factor,
        diversity_weight=diversity_weight,
        diversify=diversify,
    )
    ranked = {cand[j].id: 2.0 - rank / max(1, len(order)) for rank, j in enumerate(order)}
    with ls.store._write() as conn:
        # Items ranked before but not now fall back to their plain uncertainty.
        conn.execute(
            update(I)
            .where(I.c.state == "open", I.c.priority > 1.0, ~I.c.id.in_(list(ranked)))
            .values(priority=I.c.uncertainty)
        )
        conn.execute(
            update(I)
            .where(and_(I.c.id == bindparam("b_id"), I.c.state == "open"))
            .values(priority=bindparam("b_prio")),
            [{"b_id": i, "b_prio": p} for i, p in ranked.items()],
        )
    return len(ranked)
