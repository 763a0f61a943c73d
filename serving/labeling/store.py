"""The labeling workspace's persistent state: the item pool, leases, labels and accounts.

Every method is one transaction that commits before it returns, so a label the API confirms
is on disk. Handing out items is a claim: on SQLite the write lock (``BEGIN IMMEDIATE``)
serializes claims, on PostgreSQL ``FOR UPDATE SKIP LOCKED`` lets evaluators claim different
items at once; either way no single-label item is leased to two evaluators.

An item's ``state`` is recomputed from its live (not retracted) label rows after every change
(``_settle``): ``open`` while it wants labels, ``done`` once single-labeled or agreed,
``review`` on a disagreement or a flag, ``resolved`` once a lead decided.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import (
    Connection,
    Table,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from serving.labeling.errors import LabelingError
from serving.labeling.reading import StoreReading, item_dict
from serving.labeling.tables import aware as _aware
from serving.labeling.tables import items_table, labels_table, leases_table, users_table
from serving.labeling.tables import utcnow as _now
from serving.labeling.users import ROLES, User, UserStore
from serving.store import Store

KINDS = ("label", "skip", "flag", "resolve")
SOURCES = ("upload", "traffic", "import", "feedback")

I = items_table  # noqa: E741  (short names keep the queries readable)
L = labels_table
LE = leases_table
U = users_table

log = logging.getLogger("caretriage.labeling")

__all__ = ["ROLES", "LabelingError", "LabelingStore", "NewItem", "QueueConfig", "User"]


@dataclass
class NewItem:
    """A post entering the pool, with the served model's view of it (if scored)."""

    text: str
    text_key: str
    source: str = "upload"
    external_id: str | None = None
    channel: str | None = None
    author: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    model_version: str | None = None
    suggestion: dict[str, Any] | None = None
    uncertainty: float = 0.0
    embedding: np.ndarray | None = None
    expires_at: datetime | None = None


@dataclass
class AddResult:
    added: list[int] = field(default_factory=list)
    duplicates: int = 0


@dataclass(frozen=True)
class QueueConfig:
    """How the queue hands items out (from the service settings)."""

    lease_seconds: float = 600.0
    audit_share: float = 0.1
    agreement_share: float = 0.1
    seed: int = 0


# One lock per SQLite database in this process: its writers queue here (woken in turn) rather
# than in SQLite's busy handler, which polls in sleeps of up to 100 ms and gives up after
# the busy timeout ("database is locked"). Other processes are still kept out by the write lock.
_SQLITE_WRITERS: dict[str, threading.Lock] = {}
_SQLITE_WRITERS_LOCK = threading.Lock()
_SQLITE_WRITER_WAIT = 30.0
# Connection.info key: how a write transaction changed the number of open items.
_OPEN_DELTA = "caretriage_open_delta"


def _sqlite_writer(url: str) -> threading.Lock:
    with _SQLITE_WRITERS_LOCK:
        return _SQLITE_WRITERS.setdefault(url, threading.Lock())


def text_key(normalized: str) -> str:
    """The pool's identity of a post: its normalized text, case and spacing folded."""
    folded = " ".join(normalized.casefold().split())
    return hashlib.sha256(folded.encode("utf-8")).hexdigest()


def _share(key: str, salt: str, seed: int) -> float:
    """A stable pseudo-random number in [0, 1) for an item: the audit and agreement draws
    never move when the pool is rebuilt."""
    h = hashlib.blake2b(f"{seed}:{salt}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64


def agree(a: Mapping[str, str] | None, b: Mapping[str, str] | None) -> bool:
    """Two answers agree when every task both gave has the same label."""
    a, b = a or {}, b or {}
    return all(a[t] == b[t] for t in set(a) & set(b))


class LabelingStore(UserStore, StoreReading):
    """The workspace over the service's ``Store`` (same engine, same transactions)."""

    def __init__(self, store: Store, config: QueueConfig | None = None) -> None:
        self.store = store
        self.config = config or QueueConfig()
        self._rng = random.Random()
        self._writer = None if self._pg else _sqlite_writer(str(store.url))
        self._open_count: tuple[float, int] | None = None  # (time.monotonic(), count)
        self._counting = threading.Lock()

    @property
    def _pg(self) -> bool:
        return self.store.dialect == "postgresql"

    @contextmanager
    def _write(self, *lock: Table) -> Iterator[Connection]:
        """``Store._write``; on SQLite, after this process's earlier writers are done (if one
        takes over ``_SQLITE_WRITER_WAIT`` s, SQLite's own busy handling decides, as before)."""
        got = self._writer is not None and self._writer.acquire(timeout=_SQLITE_WRITER_WAIT)
        try:
            with self.store._write(*lock) as conn:
                conn.info[_OPEN_DELTA] = 0
                try:
                    yield conn
                finally:
                    delta = conn.info.pop(_OPEN_DELTA, 0)
            # Committed (an exception skips this): the cached count follows the change.
            self._bump_open(delta)
        finally:
            if got:
                self._writer.release()  # type: ignore[union-attr]

    # -- the pool -------------------------------------------------------------------------

    def add_items(self, items: Sequence[NewItem]) -> AddResult:
        """Add posts; one whose ``text_key`` is already pooled (or repeats within ``items``)
        counts as a duplicate and changes nothing."""
        result = AddResult()
        seen: set[str] = set()
        fresh = []
        for it in items:
            if it.text_key in seen:
                result.duplicates += 1
                continue
            seen.add(it.text_key)
            fresh.append(it)
        if not fresh:
            return result
        now = _now()
        cfg = self.config
        with self._write(I) as conn:
            for chunk_start in range(0, len(fresh), 500):
                chunk = fresh[chunk_start : chunk_start + 500]
                keys = [it.text_key for it in chunk]
                known = set(
                    conn.execute(select(I.c.text_key).where(I.c.text_key.in_(keys))).scalars()
                )
                rows = []
                for it in chunk:
                    if it.text_key in known:
                        result.duplicates += 1
                        continue
                    rows.append(
                        {
                            "text_key": it.text_key,
                            "text": it.text,
                            "external_id": it.external_id,
                            "channel": it.channel,
                            "author": it.author,
                            "context": it.context,
                            "source": it.source,
                            "model_version": it.model_version,
                            "suggestion": it.suggestion,
                            "uncertainty": float(it.uncertainty),
                            "priority": float(it.uncertainty),
                            "audit": _share(it.text_key, "audit", cfg.seed) < cfg.audit_share,
                            "rand": _share(it.text_key, "rand", cfg.seed),
                            "needed": 2
                            if _share(it.text_key, "agree", cfg.seed) < cfg.agreement_share
                            else 1,
                            "done": 0,
                            "state": "open",
                            "embedding": None
                            if it.embedding is None
                            else np.asarray(it.embedding, dtype=np.float16).tobytes(),
                            "created_at": now,
                            "expires_at": it.expires_at,
                        }
                    )
                if rows:
                    ids = conn.execute(insert(I).returning(I.c.id), rows).scalars().all()
                    result.added.extend(ids)
                    conn.info[_OPEN_DELTA] += len(ids)
        return result

    def purge_expired(self, now: datetime | None = None) -> int:
        """Drop sampled traffic past its retention that nobody labeled (labeled items stay:
        their labels are training data)."""
        now = now or _now()
        labeled = exists().where(L.c.item_id == I.c.id)
        with self._write(I) as conn:
            return conn.execute(
                delete(I).where(I.c.expires_at.is_not(None), I.c.expires_at <= now, ~labeled)
            ).rowcount

    # -- the queue ------------------------------------------------------------------------

    def next_items(self, user_id: int, n: int = 2, now: datetime | None = None) -> list[dict]:
        """The items this evaluator should label next, leased to them: the ones they hold
        already (renewed), then fresh claims, up to ``n`` (the page shows the first and
        preloads the rest)."""
        now = now or _now()
        until = now + timedelta(seconds=self.config.lease_seconds)
        with self._write() as conn:
            conn.execute(delete(LE).where(LE.c.user_id == user_id, LE.c.expires_at <= now))
            held = (
                conn.execute(
                    select(LE.c.item_id).where(LE.c.user_id == user_id).order_by(LE.c.leased_at)
                )
                .scalars()
                .all()
            )
            held = list(held[:n])
            if held:
                conn.execute(
                    update(LE)
                    .where(LE.c.user_id == user_id, LE.c.item_id.in_(held))
                    .values(expires_at=until)
                )
            while len(held) < n:
                item_id = self._claim(conn, user_id, now)
                if item_id is None:
                    break
                conn.execute(
                    insert(LE).values(
                        item_id=item_id, user_id=user_id, expires_at=until, leased_at=now
                    )
                )
                held.append(item_id)
                now += timedelta(microseconds=1)  # keeps the page's order stable
            if not held:
                return []
            rows = conn.execute(select(I).where(I.c.id.in_(held))).all()
        by_id = {r._mapping["id"]: item_dict(r) for r in rows}
        out = []
        for i in held:
            item = by_id[i]
            item["lease_expires_at"] = until
            out.append(item)
        return out

    def _claim(self, conn: Connection, user_id: int, now: datetime) -> int | None:
        """One more item for ``user_id``: from the random audit slice with probability
        ``audit_share`` (so accuracy measured on it is unbiased), else the head of the
        active-learning order; the other source when one is empty."""
        audit_first = self._rng.random() < self.config.audit_share
        for audit in (audit_first, not audit_first):
            found = self._claim_from(conn, user_id, now, audit)
            if found is not None:
                return found
        return None

    def _claim_from(self, conn: Connection, user_id: int, now: datetime, audit: bool) -> int | None:
        order = I.c.rand if audit else I.c.priority.desc()
        passed: list[int] = []
        while True:
            q = (
                select(I.c.id)
                .where(*self._claimable(user_id, now), I.c.audit == audit)
                .order_by(order, I.c.id)
                .limit(1)
            )
            if passed:
                q = q.where(I.c.id.not_in(passed))
            if not self._pg:
                return conn.execute(q).scalar()
            found = conn.execute(q.with_for_update(of=I, skip_locked=True)).scalar()
            if found is None:
                return None
            # The row was filtered on this statement's snapshot, which may predate the commit
            # of another claim that held the row's lock until a moment ago (SKIP LOCKED then no
            # longer skips it, and that claim's lease is not in the snapshot). Now that the
            # lock is ours, look again in a new snapshot, which sees every claim committed.
            again = select(I.c.id).where(I.c.id == found, *self._claimable(user_id, now))
            if conn.execute(again).scalar() is not None:
                return found
            passed.append(found)

    @staticmethod
    def _claimable(user_id: int, now: datetime) -> list[Any]:
        """An item ``user_id`` may claim at ``now``: open, not yet covered by answers and
        live leases, not answered (or held) by them, not expired."""
        live_leases = (
            select(func.count())
            .where(LE.c.item_id == I.c.id, LE.c.expires_at > now)
            .scalar_subquery()
        )
        answered = exists().where(
            L.c.item_id == I.c.id, L.c.user_id == user_id, L.c.retracted_at.is_(None)
        )
        mine = exists().where(LE.c.item_id == I.c.id, LE.c.user_id == user_id)
        return [
            I.c.state == "open",
            I.c.done + live_leases < I.c.needed,
            ~answered,
            ~mine,
            or_(I.c.expires_at.is_(None), I.c.expires_at > now),
        ]

    def release(self, user_id: int, item_id: int) -> None:
        with self._write() as conn:
            conn.execute(delete(LE).where(LE.c.user_id == user_id, LE.c.item_id == item_id))

    # -- labels ---------------------------------------------------------------------------

    def submit(
        self,
        user_id: int,
        item_id: int,
        *,
        kind: str,
        idempotency_key: str,
        labels: Mapping[str, str] | None = None,
        note: str | None = None,
        duration_ms: int | None = None,
    ) -> dict[str, Any]:
        """Record an evaluator's answer (label, skip or flag) and release their lease, in one
        transaction. A retry with the same ``idempotency_key`` returns the first answer's
        record and changes nothing. A late answer (lease expired, someone else labeled it
        meanwhile) is kept all the same: it becomes an extra opinion, never lost."""
        if kind not in ("label", "skip", "flag"):
            raise LabelingError(f"kind: must be label, skip or flag, not {kind!r}", 422, ["kind"])
        if kind == "label" and not labels:
            raise LabelingError("labels: required for a label", 422, ["labels"])
        replay = self._by_key(user_id, idempotency_key)
        if replay is not None:
            return self._replayed(replay, item_id)
        now = _now()
        try:
            with self._write() as conn:
                item = self._lock_item(conn, item_id)
                if item is None:
                    raise LabelingError(f"no item {item_id}", 404, ["item_id"])
                # Checked again under the lock: a retry may have landed since the first look.
                done_before = conn.execute(
                    select(L.c.id, L.c.item_id, L.c.kind).where(
                        L.c.user_id == user_id, L.c.idempotency_key == idempotency_key
                    )
                ).first()
                if done_before is not None:
                    replayed = {**done_before._mapping, "state": item["state"]}
                    return self._replayed(replayed, item_id)
                if item["state"] == "resolved":
                    raise LabelingError(f"item {item_id} was resolved by a lead", 409)
                previous = conn.execute(
                    select(L.c.id).where(
                        L.c.item_id == item_id,
                        L.c.user_id == user_id,
                        L.c.retracted_at.is_(None),
                        L.c.kind.in_(("label", "flag")),
                    )
                ).first()
                if previous is not None and kind != "skip":
                    raise LabelingError(
                        f"item {item_id}: you answered it already (undo first to change it)", 409
                    )
                suggestion = item["suggestion"] or {}
                changed = sorted(
                    t
                    for t, lab in (labels or {}).items()
                    if t in suggestion and suggestion[t].get("label") != lab
                )
                label_id = conn.execute(
                    insert(L)
                    .returning(L.c.id)
                    .values(
                        item_id=item_id,
                        user_id=user_id,
                        kind=kind,
                        labels=dict(labels) if labels else None,
                        suggestion={
                            t: {"label": s.get("label"), "confidence": s.get("confidence")}
                            for t, s in suggestion.items()
                        }
                        or None,
                        model_version=item["model_version"],
                        changed=changed if kind == "label" else None,
                        note=note,
                        idempotency_key=idempotency_key,
                        created_at=now,
                        duration_ms=duration_ms,
                    )
                ).scalar_one()
                conn.execute(delete(LE).where(LE.c.user_id == user_id, LE.c.item_id == item_id))
                state = self._settle(conn, item_id)
        except IntegrityError:
            # The same key raced in from a retry on another connection: that one won.
            replay = self._by_key(user_id, idempotency_key)
            if replay is None:
                raise
            return self._replayed(replay, item_id)
        return {"id": label_id, "item_id": item_id, "kind": kind, "state": state, "replay": False}

    def _by_key(self, user_id: int, key: str) -> dict[str, Any] | None:
        with self.store.engine.connect() as conn:
            row = conn.execute(
                select(L.c.id, L.c.item_id, L.c.kind, I.c.state)
                .join(I, I.c.id == L.c.item_id)
                .where(L.c.user_id == user_id, L.c.idempotency_key == key)
            ).first()
        return dict(row._mapping) if row is not None else None

    @staticmethod
    def _replayed(row: Mapping[str, Any], item_id: int) -> dict[str, Any]:
        if row["item_id"] != item_id:
            raise LabelingError(
                "idempotency_key: already used for another item", 422, ["idempotency_key"]
            )
        return {**row, "replay": True}

    def _lock_item(self, conn: Connection, item_id: int) -> dict[str, Any] | None:
        q = select(I).where(I.c.id == item_id)
        if self._pg:
            q = q.with_for_update()
        row = conn.execute(q).first()
        return item_dict(row) if row is not None else None

    def _settle(self, conn: Connection, item_id: int) -> str:
        """Recompute the item's ``done`` count and ``state`` from its live rows."""
        rows = conn.execute(
            select(L.c.kind, L.c.labels)
            .where(L.c.item_id == item_id, L.c.retracted_at.is_(None))
            .order_by(L.c.id)
        ).all()
        item, before = conn.execute(select(I.c.needed, I.c.state).where(I.c.id == item_id)).one()
        answers = [r.labels for r in rows if r.kind == "label"]
        if any(r.kind == "resolve" for r in rows):
            state = "resolved"
        elif any(r.kind == "flag" for r in rows):
            state = "review"
        elif len(answers) >= item:
            state = "done" if all(agree(answers[0], a) for a in answers[1:]) else "review"
        else:
            state = "open"
        conn.execute(update(I).where(I.c.id == item_id).values(done=len(answers), state=state))
        if (state == "open") != (before == "open"):
            conn.info[_OPEN_DELTA] = conn.info.get(_OPEN_DELTA, 0) + (1 if state == "open" else -1)
        return state

    def undo(self, user_id: int, now: datetime | None = None) -> dict[str, Any] | None:
        """Retract this evaluator's latest answer (kept, marked retracted, for the record) and
        hand the item back to them at the head of their queue. None if there is nothing to
        undo; refused once a lead resolved the item."""
        now = now or _now()
        with self._write() as conn:
            row = conn.execute(
                select(L.c.id, L.c.item_id, L.c.kind)
                .where(
                    L.c.user_id == user_id,
                    L.c.retracted_at.is_(None),
                    L.c.kind.in_(("label", "skip", "flag")),
                )
                .order_by(L.c.id.desc())
                .limit(1)
            ).first()
            if row is None:
                return None
            item = self._lock_item(conn, row.item_id)
            if item is not None and item["state"] == "resolved":
                raise LabelingError(f"item {row.item_id} was resolved by a lead; too late", 409)
            conn.execute(update(L).where(L.c.id == row.id).values(retracted_at=now))
            state = self._settle(conn, row.item_id)
            # Taken back only if the item still wants this evaluator: after a skip, others may
            # have claimed or answered it meanwhile, and a lease on top of theirs would let a
            # single-label item be held (and answered) twice. Refused then; nothing changes.
            done, needed = conn.execute(
                select(I.c.done, I.c.needed).where(I.c.id == row.item_id)
            ).one()
            others = conn.execute(
                select(func.count()).where(
                    LE.c.item_id == row.item_id, LE.c.user_id != user_id, LE.c.expires_at > now
                )
            ).scalar_one()
            if state != "open" or done + others >= needed:
                raise LabelingError(
                    f"item {row.item_id} was taken by other evaluators meanwhile; too late", 409
                )
            until = now + timedelta(seconds=self.config.lease_seconds)
            # Back at the head: leased before anything the evaluator holds.
            first = conn.execute(
                select(func.min(LE.c.leased_at)).where(LE.c.user_id == user_id)
            ).scalar()
            at = min(_aware(first) or now, now) - timedelta(seconds=1)
            conn.execute(delete(LE).where(LE.c.user_id == user_id, LE.c.item_id == row.item_id))
            conn.execute(
                insert(LE).values(
                    item_id=row.item_id, user_id=user_id, expires_at=until, leased_at=at
                )
            )
        return {"id": row.id, "item_id": row.item_id, "kind": row.kind, "state": state}

    def resolve(
        self,
        lead_id: int,
        item_id: int,
        labels: Mapping[str, str],
        idempotency_key: str,
        note: str | None = None,
    ) -> dict[str, Any]:
        """A lead's final labels for an item (a disagreement, a flag, or any item)."""
        replay = self._by_key(lead_id, idempotency_key)
        if replay is not None:
            return self._replayed(replay, item_id)
        with self._write() as conn:
            item = self._lock_item(conn, item_id)
            if item is None:
                raise LabelingError(f"no item {item_id}", 404, ["item_id"])
            conn.execute(
                update(L)
                .where(L.c.item_id == item_id, L.c.kind == "resolve", L.c.retracted_at.is_(None))
                .values(retracted_at=_now())
            )
            label_id = conn.execute(
                insert(L)
                .returning(L.c.id)
                .values(
                    item_id=item_id,
                    user_id=lead_id,
                    kind="resolve",
                    labels=dict(labels),
                    model_version=item["model_version"],
                    note=note,
                    idempotency_key=idempotency_key,
                    created_at=_now(),
                )
            ).scalar_one()
            conn.execute(delete(LE).where(LE.c.item_id == item_id))
            state = self._settle(conn, item_id)
        return {"id": label_id, "item_id": item_id, "kind": "resolve", "state": state}

    def import_answer(
        self,
        item_id: int,
        evaluator: str,
        labels: Mapping[str, str],
        *,
        kind: str = "label",
        labeled_at: str | datetime | None = None,
        duration_ms: int | None = None,
    ) -> bool:
        """A label given elsewhere (a Label Studio export), kept with its author and time.
        An unknown author gets a disabled account (an admin sets a password to let them in).
        False when the same author already gave the same labels to this item."""
        if kind not in ("label", "resolve"):
            raise LabelingError(f"kind: cannot import {kind!r}", 422, ["kind"])
        user = self.get_user(name=evaluator)
        if user is None:
            try:
                user = self.add_user(evaluator, "lead" if kind == "resolve" else "evaluator", "!")
                self.update_user(user.id, disabled=True)
            except LabelingError:  # made meanwhile by a concurrent import
                user = self.get_user(name=evaluator)
        assert user is not None
        at = datetime.fromisoformat(labeled_at) if isinstance(labeled_at, str) else labeled_at
        at = _aware(at) or _now()
        digest = hashlib.sha256(repr((item_id, kind, sorted(labels.items()))).encode()).hexdigest()[
            :40
        ]
        key = f"import:{digest}"
        with self._write() as conn:
            known = conn.execute(
                select(L.c.id).where(L.c.user_id == user.id, L.c.idempotency_key == key)
            ).first()
            if known is not None:
                return False
            # The same person's live answer, given in the workspace (our own export coming
            # back): the same label, not a second opinion that would count as agreement.
            live = conn.execute(
                select(L.c.labels).where(
                    L.c.item_id == item_id,
                    L.c.user_id == user.id,
                    L.c.kind == kind,
                    L.c.retracted_at.is_(None),
                )
            ).scalars()
            if any((old or {}) == dict(labels) for old in live):
                return False
            conn.execute(
                insert(L).values(
                    item_id=item_id,
                    user_id=user.id,
                    kind=kind,
                    labels=dict(labels),
                    model_version=None,
                    idempotency_key=key,
                    created_at=at,
                    duration_ms=duration_ms,
                )
            )
            self._settle(conn, item_id)
        return True
