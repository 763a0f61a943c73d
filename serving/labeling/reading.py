"""The labeling store's reads: items, counts, label records, the review queue. A mixin of
``LabelingStore`` (same engine; its ``__init__`` sets the open-count cache)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select

from serving.labeling.tables import aware as _aware
from serving.labeling.tables import items_table as I
from serving.labeling.tables import labels_table as L
from serving.labeling.tables import users_table as U
from serving.store import Store

log = logging.getLogger("caretriage.labeling")


def item_dict(row: Any) -> dict[str, Any]:
    """An item row as a dict, timestamps made aware, the vector left out."""
    m = dict(row._mapping)
    m.pop("embedding", None)
    for k in ("created_at", "expires_at"):
        if k in m:
            m[k] = _aware(m[k])
    return m


class StoreReading:
    """The read half of ``LabelingStore``."""

    store: Store
    _open_count: tuple[float, int] | None
    _counting: threading.Lock

    def get_item(self, item_id: int) -> dict[str, Any] | None:
        with self.store.engine.connect() as conn:
            row = conn.execute(select(I).where(I.c.id == item_id)).first()
        return item_dict(row) if row is not None else None

    def open_count(self, max_age: float = 1.0) -> int:
        """Items still open, as the queue shows it beside the items it hands out. Counting
        scans the open items (on a 100,000-item pool, tens of ms, and seconds from a cold
        disk), so no request waits for it but the first: a count older than ``max_age``
        seconds is returned as it is while a background thread counts anew."""
        cached = self._open_count
        if cached is None:
            with self._counting:
                if self._open_count is None:
                    self._recount()
            return self._open_count[1]  # type: ignore[index]
        if time.monotonic() - cached[0] > max_age and self._counting.acquire(blocking=False):
            threading.Thread(target=self._recount, args=(True,), daemon=True).start()
        return cached[1]

    def _bump_open(self, delta: int) -> None:
        """Keep the cached count exact for this process's own writes between recounts."""
        cached = self._open_count
        if delta and cached is not None:
            self._open_count = (cached[0], max(0, cached[1] + delta))

    def _recount(self, release: bool = False) -> None:
        try:
            taken = time.monotonic()
            with self.store.engine.connect() as conn:
                n = conn.execute(select(func.count()).where(I.c.state == "open")).scalar_one()
            self._open_count = (taken, int(n))
        except Exception:
            if not release:
                raise
            log.warning(
                "counting the open items failed; the next request tries again", exc_info=True
            )
        finally:
            if release:
                self._counting.release()

    def pool_counts(self) -> dict[str, int]:
        with self.store.engine.connect() as conn:
            rows = conn.execute(select(I.c.state, func.count()).group_by(I.c.state)).all()
        counts = {s: 0 for s in ("open", "done", "review", "resolved")}
        counts.update({s: int(n) for s, n in rows})
        counts["total"] = sum(counts.values())
        return counts

    # -- reading labels ---------------------------------------------------------------------

    def records(
        self, *, kinds: Iterable[str] = ("label", "resolve", "flag"), item_ids=None
    ) -> list[dict[str, Any]]:
        """Live label rows joined with their item and evaluator, oldest first: what the
        stats, review and export are computed from."""
        q = (
            select(
                L.c.id,
                L.c.item_id,
                L.c.kind,
                L.c.labels,
                L.c.suggestion,
                L.c.model_version,
                L.c.changed,
                L.c.note,
                L.c.created_at,
                L.c.duration_ms,
                U.c.name.label("evaluator"),
                U.c.role,
                I.c.text,
                I.c.text_key,
                I.c.channel,
                I.c.author,
                I.c.source,
                I.c.state,
                I.c.needed,
                I.c.external_id,
            )
            .join(U, U.c.id == L.c.user_id)
            .join(I, I.c.id == L.c.item_id)
            .where(L.c.retracted_at.is_(None), L.c.kind.in_(tuple(kinds)))
            .order_by(L.c.id)
        )
        if item_ids is not None:
            q = q.where(L.c.item_id.in_(list(item_ids)))
        with self.store.engine.connect() as conn:
            rows = conn.execute(q).all()
        out = []
        for r in rows:
            m = dict(r._mapping)
            m["labeled_at"] = _aware(m.pop("created_at"))
            out.append(m)
        return out

    def review_queue(self, limit: int = 50) -> list[dict[str, Any]]:
        """Items waiting for a lead (disagreements and flags), oldest first, with every live
        answer given."""
        with self.store.engine.connect() as conn:
            rows = conn.execute(
                select(I).where(I.c.state == "review").order_by(I.c.id).limit(limit)
            ).all()
        items = [item_dict(r) for r in rows]
        answers = self.records(kinds=("label", "flag"), item_ids=[i["id"] for i in items])
        for item in items:
            item["answers"] = [a for a in answers if a["item_id"] == item["id"]]
        return items

    def all_items(self) -> list[dict[str, Any]]:
        with self.store.engine.connect() as conn:
            return [item_dict(r) for r in conn.execute(select(I).order_by(I.c.id)).all()]

    def item_id_for(self, key: str) -> int | None:
        with self.store.engine.connect() as conn:
            return conn.execute(select(I.c.id).where(I.c.text_key == key)).scalar()

    def unlabeled_items(self, limit: int | None = None) -> list[dict[str, Any]]:
        q = select(I).where(I.c.done == 0, I.c.state == "open").order_by(I.c.id)
        if limit:
            q = q.limit(limit)
        with self.store.engine.connect() as conn:
            return [item_dict(r) for r in conn.execute(q).all()]
