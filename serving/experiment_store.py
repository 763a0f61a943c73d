"""The routing experiment in force, kept durably, and its report.

Every change of the configuration is a new row of ``experiments`` (never updated, so the table
is the audit trail); the highest version is in force. ``POST /v1/assign`` asks
``arm_routing`` which arm a post is in; that reads the configuration from memory, re-read from
the store at most every ``refresh_seconds`` (so an edit made by another process is followed
within that time; one made through this process at once).

The report reads every assignment recorded under the experiment's name with its outcome
(``feedback``) and computes, per arm and as B − A with a confidence interval
(``serving.experiments``): CSAT, first response (median and mean), resolution rate and SLA
breach rate. A case counts for a KPI once its feedback carries that figure; an SLA breach is
judged on cases with a recorded first response (first response later than ``respond_by``),
and cases still open past their deadline with none recorded are reported beside it, not
guessed into it.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, insert, select
from starlette.concurrency import run_in_threadpool

from serving import experiments as ex
from serving.dispatch import RouterConfig
from serving.store import Store
from serving.tables import (
    assignments_table,
    aware,
    experiments_table,
    feedback_table,
    utcnow,
    writing,
)

log = logging.getLogger("caretriage.serving")

T = experiments_table
A = assignments_table
F = feedback_table


@dataclass(frozen=True)
class StoredExperiment:
    version: int
    config: ex.ExperimentConfig
    created_at: datetime
    created_by: str


class ExperimentConflict(RuntimeError):
    """The caller expected another version to be in force (a concurrent edit won)."""

    def __init__(self, expected: int, current: int | None) -> None:
        super().__init__(f"expected version {expected} in force, found {current}")
        self.expected, self.current = expected, current


def _row(row: Any) -> StoredExperiment:
    m = row._mapping
    created = aware(m["created_at"])
    assert created is not None
    return StoredExperiment(
        m["version"], ex.ExperimentConfig.model_validate(m["config"]), created, m["created_by"]
    )


class ExperimentStore:
    """The experiment configuration's versions over the service's ``Store``."""

    def __init__(self, store: Store, refresh_seconds: float = 5.0) -> None:
        self.store = store
        self.refresh_seconds = refresh_seconds
        self._cache: tuple[float, StoredExperiment | None] | None = None
        self._lock = threading.Lock()

    def _newest(self, name: str | None = None) -> StoredExperiment | None:
        """The newest version (under ``name``) this code can read; others are logged."""
        q = select(T).order_by(T.c.version.desc())
        if name is not None:
            q = q.where(T.c.name == name)
        with self.store.engine.connect() as conn:
            for row in conn.execute(q):
                try:
                    return _row(row)
                except ValidationError:
                    log.error("skipping experiment version %d: this code cannot read it", row[0])
        return None

    def peek(self) -> tuple[bool, StoredExperiment | None]:
        """(fresh, the experiment in force) from memory: never touches the database."""
        hit = self._cache
        if hit is None or time.monotonic() - hit[0] > self.refresh_seconds:
            return False, None
        return True, hit[1]

    def current(self) -> StoredExperiment | None:
        """The version in force, from memory if read within ``refresh_seconds``."""
        fresh, found = self.peek()
        if fresh:
            return found
        taken = time.monotonic()
        found = self._newest()
        with self._lock:
            if self._cache is None or self._cache[0] < taken:
                self._cache = (taken, found)
        return found

    def named(self, name: str) -> StoredExperiment | None:
        """The newest configuration stored under ``name`` (a finished experiment too)."""
        return self._newest(name)

    def save(
        self, config: ex.ExperimentConfig, who: str, expected: int | None = None
    ) -> StoredExperiment:
        """Store ``config`` as the next version, committed before returning, and put it in
        force in this process. ``expected``: refuse (ExperimentConflict) unless that version is
        in force. Writers take turns (SQLite's write lock, a PostgreSQL table lock)."""
        now = utcnow()
        with writing(self.store, T) as conn:
            current = conn.execute(select(func.max(T.c.version))).scalar()
            if expected is not None and current != expected:
                raise ExperimentConflict(expected, current)
            version = (current or 0) + 1
            conn.execute(
                insert(T).values(
                    version=version,
                    name=config.name,
                    config=config.model_dump(mode="json"),
                    created_at=now,
                    created_by=who,
                )
            )
        saved = StoredExperiment(version, config, now, who)
        with self._lock:
            self._cache = (time.monotonic(), saved)
        log.info("experiment: version %d in force (by %s)", version, who)
        return saved

    def outcomes(self, name: str, now: datetime | None = None) -> dict[str, ArmOutcomes]:
        """Every assignment of experiment ``name`` with its outcome, per arm."""
        now = now or utcnow()
        q = (
            select(
                A.c.arm,
                A.c.post_created_at,
                A.c.respond_by,
                A.c.closed_at,
                F.c.post_id.label("feedback_of"),
                F.c.csat,
                F.c.resolved,
                F.c.first_response_minutes,
            )
            .select_from(A.outerjoin(F, F.c.post_id == A.c.post_id))
            .where(A.c.experiment == name, A.c.arm.in_(("A", "B")))
        )
        arms = {"A": ArmOutcomes(), "B": ArmOutcomes()}
        with self.store.engine.connect() as conn:
            for r in conn.execute(q):
                arms[r.arm].add(
                    created=aware(r.post_created_at),
                    due=aware(r.respond_by),
                    closed=r.closed_at is not None,
                    feedback=r.feedback_of is not None,
                    csat=r.csat,
                    resolved=r.resolved,
                    minutes=r.first_response_minutes,
                    now=now,
                )
        return arms


@dataclass
class ArmOutcomes:
    """One arm's cases and the values each KPI is computed from."""

    assigned: int = 0
    closed: int = 0
    with_feedback: int = 0
    # Open, past the deadline, no first response recorded: not yet judged for the SLA.
    awaiting_past_due: int = 0
    csat: list[float] = field(default_factory=list)
    first_response: list[float] = field(default_factory=list)
    resolved: list[float] = field(default_factory=list)
    breached: list[float] = field(default_factory=list)

    def add(
        self,
        created: datetime | None,
        due: datetime | None,
        closed: bool,
        feedback: bool,
        csat: int | None,
        resolved: bool | None,
        minutes: float | None,
        now: datetime,
    ) -> None:
        self.assigned += 1
        self.closed += closed
        self.with_feedback += feedback
        if csat is not None:
            self.csat.append(float(csat))
        if resolved is not None:
            self.resolved.append(1.0 if resolved else 0.0)
        if minutes is not None:
            self.first_response.append(float(minutes))
            if created is not None and due is not None:
                late = created + timedelta(minutes=float(minutes)) > due
                self.breached.append(1.0 if late else 0.0)
        elif not closed and due is not None and now > due:
            self.awaiting_past_due += 1

    def values(self, kpi: ex.Kpi) -> Sequence[float]:
        if kpi.key == "csat":
            return self.csat
        if kpi.key.startswith("first_response"):
            return self.first_response
        if kpi.key == "resolution_rate":
            return self.resolved
        return self.breached


def _estimate(kpi: ex.Kpi, values: Sequence[float]) -> float | None:
    if not values:
        return None
    if kpi.kind == "median":
        return float(statistics.median(values))
    return statistics.fmean(values)


def build_report(
    stored: StoredExperiment,
    arms: dict[str, ArmOutcomes],
    level: float = 0.95,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The report's body: per arm, per KPI (B − A with its interval and a sentence), and the
    headline verdict."""
    now = now or datetime.now(UTC)
    cfg = stored.config
    kpis, said = [], {}
    for kpi in ex.KPIS:
        va, vb = arms["A"].values(kpi), arms["B"].values(kpi)
        got = ex.interval_of(kpi, va, vb, level)
        sentence = ex.verdict(kpi, got, len(va), len(vb))
        said[kpi.key] = (got, sentence)
        kpis.append(
            {
                "key": kpi.key,
                "label": kpi.label,
                "better": kpi.better,
                "unit": "share" if kpi.kind == "proportion" else (kpi.unit or None),
                "a": _estimate(kpi, va),
                "b": _estimate(kpi, vb),
                "n_a": len(va),
                "n_b": len(vb),
                "difference": None if got is None else got.difference,
                "low": None if got is None else got.low,
                "high": None if got is None else got.high,
                "method": None if got is None else got.method,
                "significant": False if got is None else got.significant,
                "verdict": sentence,
            }
        )
    return {
        "name": cfg.name,
        "version": stored.version,
        "active": cfg.active(now),
        "split": cfg.split,
        "share_b": cfg.share_b if cfg.split == "share" else None,
        "period_minutes": cfg.period_minutes if cfg.split == "time" else None,
        "start": cfg.start,
        "stop": cfg.stop,
        "confidence": level,
        "arms": {
            arm: {
                "policy": cfg.arm(arm).describe(),  # type: ignore[arg-type]
                "strategy": cfg.arm(arm).strategy,  # type: ignore[arg-type]
                "assigned": o.assigned,
                "closed": o.closed,
                "with_feedback": o.with_feedback,
                "awaiting_first_response_past_due": o.awaiting_past_due,
            }
            for arm, o in arms.items()
        },
        "kpis": kpis,
        "verdict": ex.overall(said),
        "note": (
            f"{len(ex.KPIS)} KPIs at {level:.0%} each: by chance alone one may look "
            "significant now and then; judge on the KPI chosen before the start, and read the "
            "report once the planned sample is in rather than stopping at the first good look."
        ),
        "generated_at": now,
    }


async def arm_routing(state: object, post_id: str, base: RouterConfig) -> ex.ArmRouting | None:
    """The experiment arm routing ``post_id`` now, or None (no experiment, or outside it).
    Reads the store only when the in-memory configuration is older than its refresh."""
    store: ExperimentStore | None = getattr(state, "experiments", None)
    if store is None:
        return None
    fresh, found = store.peek()
    if not fresh:
        found = await run_in_threadpool(store.current)
    if found is None:
        return None
    return ex.routing_for(found.config, post_id, datetime.now(UTC), base)
