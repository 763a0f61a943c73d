"""The managers' report behind ``GET /v1/reports`` and the ``/reports`` page: first-response
percentiles, SLA breaches per priority level, CSAT and NPS by topic, agent and channel over a
time range of cases.

Two halves, so the arithmetic can be tested without a database:

* ``gather`` reads the range from the store. Everything that sums is summed in SQL: one
  ``GROUP BY`` of topic, agent, channel and level (thousands of cells at most, however many
  cases) counts cases, resolutions, CSAT and NPS answers and each case's SLA state.
  Percentiles cannot be summed, so the first-response minutes of the range are read as they
  are (two small columns a case, no timestamps to parse).
* ``assemble`` is a pure function of those cells and minutes: it rolls the cells up per
  dimension and level and computes percentiles and the histogram.

A case belongs to the range by when it was assigned (``assignments.assigned_at``); the outcome
of a post not assigned here (feedback naming its agent and topic) by when the outcome was first
reported. Such an outcome has no priority level nor promised deadline: it counts for CSAT, NPS
and first-response times, not for SLA breaches.

SLA states, against the ``respond_by`` promised when the case was assigned: *met* (first
response by it, a second's grace: SQLite's date arithmetic rounds to milliseconds),
*late* (after it), *overdue* (open, no first response recorded, past it: a breach already),
*pending* (open, unanswered, not due yet: not counted), *unknown* (closed without a
first-response time: not counted).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy import ColumnElement, and_, case, exists, extract, func, literal, null, select

from serving.store import Store
from serving.tables import assignments_table, feedback_table

A = assignments_table
F = feedback_table

LEVELS = ("P1", "P2", "P3", "P4")
DEFAULT_DAYS = 7
MAX_DAYS = 366
# First-response histogram: (label, lower bound in minutes); each bin runs to the next bound.
BINS: tuple[tuple[str, float], ...] = (
    ("<15m", 0.0),
    ("15-30m", 15.0),
    ("30-60m", 30.0),
    ("1-2h", 60.0),
    ("2-4h", 120.0),
    ("4-8h", 240.0),
    ("8-24h", 480.0),
    ("24h+", 1440.0),
)
UNKNOWN_CHANNEL = "unknown"


# -- what the store gives ---------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """Cases of the range sharing topic, agent, channel and level, summed in SQL. ``level`` is
    None (and ``channel`` usually too) for outcomes of posts not assigned here, whose SLA
    counts are all 0."""

    topic: str
    agent_id: str
    channel: str | None
    level: str | None
    cases: int
    open: int = 0
    resolved_known: int = 0
    resolved: int = 0
    rated: int = 0
    csat_sum: int = 0
    satisfied: int = 0  # CSAT 4 or 5
    nps_responses: int = 0
    promoters: int = 0  # NPS 9 or 10
    detractors: int = 0  # NPS 0 to 6
    met: int = 0
    late: int = 0
    overdue: int = 0
    pending: int = 0
    unknown: int = 0


# (level, minutes to the first response) of one answered case; level None: not assigned here.
Answered = tuple[str | None, float]


# -- what the report says ---------------------------------------------------------------------


class Times(BaseModel):
    responded: int = Field(description="Cases with a recorded first response.")
    p50: float | None = Field(description="Median minutes to the first response.")
    p90: float | None = Field(description="90th percentile, minutes.")
    mean: float | None = None


class LevelTimes(Times):
    level: str


class Bin(BaseModel):
    label: str
    min_minutes: float
    max_minutes: float | None = Field(description="Exclusive; null for the last bin.")
    count: int


class FirstResponse(Times):
    histogram: list[Bin]
    by_level: list[LevelTimes]


class SlaCounts(BaseModel):
    cases: int = Field(description="Cases with a promised deadline (assigned here).")
    met: int = Field(description="Answered by the deadline.")
    breached: int = Field(description="Answered late, or still unanswered past it.")
    overdue: int = Field(description="Of the breached: open, unanswered, past the deadline.")
    pending: int = Field(description="Unanswered, deadline still ahead: not counted yet.")
    unknown: int = Field(description="Closed without a first-response time: not counted.")
    rate: float | None = Field(description="breached / (met + breached); null when neither.")


class LevelSla(SlaCounts):
    level: str


class Sla(SlaCounts):
    by_level: list[LevelSla]


class Group(BaseModel):
    key: str = Field(description="The topic, agent id or channel ('unknown': not recorded).")
    cases: int
    resolved_rate: float | None = Field(description="Of the cases whose resolution is known.")
    rated: int = Field(description="Cases with a CSAT answer.")
    csat: float | None = Field(description="Mean CSAT, 1-5.")
    satisfied: float | None = Field(description="Share of CSAT answers that are 4 or 5.")
    nps_responses: int
    nps: float | None = Field(description="% promoters (9-10) - % detractors (0-6), -100-100.")


class Satisfaction(BaseModel):
    overall: Group
    by_topic: list[Group]
    by_agent: list[Group]
    by_channel: list[Group]


class Report(BaseModel):
    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True)

    start: AwareDatetime = Field(alias="from", description="Start of the range (inclusive).")
    end: AwareDatetime = Field(alias="to", description="End of the range (exclusive).")
    as_of: AwareDatetime = Field(description="The clock overdue cases were judged by.")
    cases: int = Field(
        description="Cases assigned in the range, and outcomes of posts not "
        "assigned here first reported in it."
    )
    open: int = Field(description="Of the assigned cases, those not closed yet.")
    first_response: FirstResponse
    sla: Sla
    satisfaction: Satisfaction


# -- the arithmetic ---------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """The ``p``-th percentile (0-100) by linear interpolation between closest ranks (numpy's
    default), of values sorted ascending; None for none."""
    n = len(sorted_values)
    if not n:
        return None
    at = (n - 1) * p / 100.0
    lo = math.floor(at)
    hi = min(lo + 1, n - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (at - lo)


def _times(minutes: Sequence[float]) -> dict[str, float | int | None]:
    ordered = sorted(minutes)
    return {
        "responded": len(ordered),
        "p50": percentile(ordered, 50),
        "p90": percentile(ordered, 90),
        "mean": sum(ordered) / len(ordered) if ordered else None,
    }


def histogram(minutes: Iterable[float]) -> list[Bin]:
    counts = [0] * len(BINS)
    bounds = [lo for _, lo in BINS]
    for m in minutes:
        i = len(bounds) - 1
        while bounds[i] > m:
            i -= 1
        counts[max(i, 0)] += 1
    return [
        Bin(
            label=label,
            min_minutes=lo,
            max_minutes=BINS[i + 1][1] if i + 1 < len(BINS) else None,
            count=counts[i],
        )
        for i, (label, lo) in enumerate(BINS)
    ]


SLA_STATES = ("met", "late", "overdue", "pending", "unknown")


def _sla(cells: Sequence[Cell]) -> dict[str, int | float | None]:
    n = {k: sum(getattr(c, k) for c in cells) for k in SLA_STATES}
    breached = n["late"] + n["overdue"]
    judged = n["met"] + breached
    return {
        "cases": sum(n.values()),
        "met": n["met"],
        "breached": breached,
        "overdue": n["overdue"],
        "pending": n["pending"],
        "unknown": n["unknown"],
        "rate": breached / judged if judged else None,
    }


def _group(key: str, cells: Iterable[Cell]) -> Group:
    t = defaultdict(int)
    for c in cells:
        for name in (
            "cases",
            "resolved_known",
            "resolved",
            "rated",
            "csat_sum",
            "satisfied",
            "nps_responses",
            "promoters",
            "detractors",
        ):
            t[name] += getattr(c, name)
    nps = t["nps_responses"]
    return Group(
        key=key,
        cases=t["cases"],
        resolved_rate=t["resolved"] / t["resolved_known"] if t["resolved_known"] else None,
        rated=t["rated"],
        csat=t["csat_sum"] / t["rated"] if t["rated"] else None,
        satisfied=t["satisfied"] / t["rated"] if t["rated"] else None,
        nps_responses=nps,
        nps=100.0 * (t["promoters"] - t["detractors"]) / nps if nps else None,
    )


def _by(cells: Sequence[Cell], key: str) -> list[Group]:
    """One group per value of ``key``, most cases first (ties by name)."""
    parts: dict[str, list[Cell]] = defaultdict(list)
    for c in cells:
        parts[getattr(c, key) or UNKNOWN_CHANNEL].append(c)
    groups = [_group(k, v) for k, v in parts.items()]
    return sorted(groups, key=lambda g: (-g.cases, g.key))


def assemble(
    cells: Sequence[Cell],
    answered: Sequence[Answered],
    start: datetime,
    end: datetime,
    now: datetime,
) -> Report:
    """The report of the range ``[start, end)``, read at ``now``, from the store's cells and
    first-response minutes (``gather``). Pure: the same inputs give the same report."""
    minutes = [m for _, m in answered]
    return Report(
        start=start,
        end=end,
        as_of=now,
        cases=sum(c.cases for c in cells),
        open=sum(c.open for c in cells),
        first_response=FirstResponse(
            **_times(minutes),
            histogram=histogram(minutes),
            by_level=[
                LevelTimes(level=lv, **_times([m for level, m in answered if level == lv]))
                for lv in LEVELS
            ],
        ),
        sla=Sla(
            **_sla(cells),
            by_level=[
                LevelSla(level=lv, **_sla([c for c in cells if c.level == lv])) for lv in LEVELS
            ],
        ),
        satisfaction=Satisfaction(
            overall=_group("all", cells),
            by_topic=_by(cells, "topic"),
            by_agent=_by(cells, "agent_id"),
            by_channel=_by(cells, "channel"),
        ),
    )


# -- reading the store ------------------------------------------------------------------------

# A first response up to a second after the deadline still meets it: SQLite's julianday()
# rounds each timestamp to the millisecond, so an answer sent on the deadline could otherwise
# come out a hair late.
ON_TIME_SLACK_MINUTES = 1 / 60


def _span_minutes(dialect: str, start: ColumnElement, end: ColumnElement) -> ColumnElement:
    """Minutes from ``start`` to ``end`` (timestamp columns) in SQL: no portable spelling."""
    if dialect == "postgresql":
        return extract("epoch", end - start) / 60.0
    if dialect == "sqlite":
        return (func.julianday(end) - func.julianday(start)) * 1440.0
    raise NotImplementedError(f"reports on {dialect}")  # the store supports these two


def _sums(csat, nps, resolved) -> list:  # type: ignore[no-untyped-def]
    """Sums of a cell over feedback columns (all NULL for a case without feedback)."""
    return [
        func.count(resolved),
        _count(resolved.is_(True)),
        func.count(csat),
        func.coalesce(func.sum(csat), 0),
        _count(csat >= 4),
        func.count(nps),
        _count(nps >= 9),
        _count(nps <= 6),
    ]


def _count(condition: ColumnElement) -> ColumnElement:
    return func.coalesce(func.sum(case((condition, literal(1)), else_=0)), 0)


def _sla_sums(dialect: str, now: datetime) -> list:
    """Per cell, its cases in each SLA state (``SLA_STATES``' order)."""
    minutes = F.c.first_response_minutes
    allowed = _span_minutes(dialect, A.c.post_created_at, A.c.respond_by)
    answered, closed = minutes.is_not(None), A.c.closed_at.is_not(None)
    waiting = and_(minutes.is_(None), A.c.closed_at.is_(None))
    return [
        _count(and_(answered, minutes <= allowed + ON_TIME_SLACK_MINUTES)),
        _count(and_(answered, minutes > allowed + ON_TIME_SLACK_MINUTES)),
        _count(and_(waiting, A.c.respond_by <= now)),
        _count(and_(waiting, A.c.respond_by > now)),
        _count(and_(minutes.is_(None), closed)),
    ]


def _cell(row: Sequence) -> Cell:
    topic, agent_id, channel, level, *counts = row
    return Cell(topic, agent_id, channel, level, *(int(n or 0) for n in counts))


def gather(
    store: Store, start: datetime, end: datetime, now: datetime
) -> tuple[list[Cell], list[Answered]]:
    """The cells and first-response minutes of the cases in ``[start, end)``, SLA states read
    at ``now``: four queries on one connection, the assigned cases (on the index of
    ``assigned_at``), then outcomes of posts not assigned here (by ``feedback.created_at``,
    unindexed: such outcomes are the exception)."""
    topic = func.coalesce(F.c.topic, A.c.topic)
    agent = func.coalesce(F.c.agent_id, A.c.agent_id)
    joined = A.outerjoin(F, F.c.post_id == A.c.post_id)
    in_range = and_(A.c.assigned_at >= start, A.c.assigned_at < end)
    assigned_cells = (
        select(
            topic,
            agent,
            A.c.channel,
            A.c.level,
            func.count(),
            func.count() - func.count(A.c.closed_at),
            *_sums(F.c.csat, F.c.nps, F.c.resolved),
            *_sla_sums(store.dialect, now),
        )
        .select_from(joined)
        .where(in_range)
        .group_by(topic, agent, A.c.channel, A.c.level)
    )
    assigned_minutes = (
        select(A.c.level, F.c.first_response_minutes)
        .select_from(A.join(F, F.c.post_id == A.c.post_id))
        .where(in_range, F.c.first_response_minutes.is_not(None))
    )
    unassigned = and_(
        F.c.created_at >= start,
        F.c.created_at < end,
        ~exists().where(A.c.post_id == F.c.post_id),
    )
    other_cells = (
        select(
            F.c.topic,
            F.c.agent_id,
            F.c.channel,
            null(),
            func.count(),
            literal(0),
            *_sums(F.c.csat, F.c.nps, F.c.resolved),
        )
        .where(unassigned)
        .group_by(F.c.topic, F.c.agent_id, F.c.channel)
    )
    other_minutes = select(null(), F.c.first_response_minutes).where(
        unassigned, F.c.first_response_minutes.is_not(None)
    )
    with store.engine.connect() as conn:
        cells = [_cell(r) for r in conn.execute(assigned_cells)]
        cells += [_cell(r) for r in conn.execute(other_cells)]
        answered = [(lv, float(m)) for lv, m in conn.execute(assigned_minutes)]
        answered += [(None, float(m)) for _, m in conn.execute(other_minutes)]
    return cells, answered
