"""Assignments and their outcomes: the transactions behind ``POST /v1/assign`` and
``POST /v1/feedback``, callable without HTTP (the replay benchmark uses them directly).

**Assigning** is one transaction: read the roster with its live caseloads and the recent
assignment counts, choose (``serving.dispatch.choose_agent``), raise the chosen agent's
caseload with a conditional ``UPDATE agents SET caseload = caseload + 1 WHERE id = :a AND
caseload < capacity``, and insert the assignment keyed by the post id; then commit. Neither
limit can be broken by concurrent callers:

* *capacity*: the UPDATE re-checks the caseload on the row it changes. On PostgreSQL a
  concurrent transaction holding the row makes it wait and then re-evaluate the condition on
  the committed row, so it fails rather than overfill (the next candidate is tried); on SQLite
  writers are serialized (``BEGIN IMMEDIATE``, queued in-process by ``tables.writing``).
* *one assignment per post*: the post id is the primary key. A concurrent duplicate fails on
  it, its transaction (caseload increase included) rolls back, and the caller gets the
  assignment that won, marked ``replay``; so does any later call for the post.

**Feedback** upserts the case's outcome (fields left out keep earlier values) and, when the
case closes for the first time (``UPDATE ... WHERE closed_at IS NULL``), lowers the caseload
of the agent it was assigned to and erases the post's text kept for corrections.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, case, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from serving.casework_schemas import FeedbackIn
from serving.dispatch import Case, Choice, RouterConfig, choose_agent
from serving.experiments import ArmRouting, baseline_choice
from serving.performance import Estimates, Priors, Tally
from serving.routing import RoutingPolicy
from serving.schemas import Agent, AgentMatch, AgentStatus, Post, ScoreResult
from serving.store import Store, _row_to_agent, agents_table
from serving.tables import assignments_table, aware, feedback_table, utcnow, writing

if TYPE_CHECKING:
    from serving.settings import Settings

A = assignments_table
F = feedback_table
AG = agents_table


class CaseworkError(Exception):
    """A request the casework store refuses: ``status`` (404, 409, 422) and the fields at
    fault, for the API to report in its one error shape."""

    def __init__(self, message: str, status: int = 422, fields: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.message, self.status, self.fields = message, status, list(fields)


@dataclass(frozen=True)
class Assigned:
    post_id: str
    agent_id: str
    topic: str
    level: str
    score: int
    respond_by: datetime
    assigned_at: datetime
    reasons: list[str]
    closed_at: datetime | None = None
    replay: bool = False
    caseload: int | None = None
    capacity: int | None = None
    alternatives: list[AgentMatch] = field(default_factory=list)
    # The routing experiment and arm the post was routed under (serving.experiments).
    experiment: str | None = None
    arm: str | None = None


@dataclass(frozen=True)
class Outcome:
    """The stored outcome of a case after a feedback call."""

    post_id: str
    agent_id: str
    topic: str
    first_response_minutes: float | None
    resolved: bool | None
    csat: int | None
    nps: int | None
    corrected: dict[str, str] | None
    closed: bool
    released: bool
    updated_at: datetime


def _assigned(row: Any, **kw: Any) -> Assigned:
    m = row._mapping
    return Assigned(
        post_id=m["post_id"],
        agent_id=m["agent_id"],
        topic=m["topic"],
        level=m["level"],
        score=m["score"],
        respond_by=aware(m["respond_by"]),  # type: ignore[arg-type]
        assigned_at=aware(m["assigned_at"]),  # type: ignore[arg-type]
        closed_at=aware(m["closed_at"]),
        reasons=list(m["reasons"]),
        experiment=m["experiment"],
        arm=m["arm"],
        **kw,
    )


class AssignmentStore:
    """Assignments, feedback and learned performance over the service's ``Store``."""

    def __init__(
        self,
        store: Store,
        config: RouterConfig | None = None,
        *,
        prior_strength: float = 5.0,
        window_days: float = 90.0,
        fairness_window: int = 200,
        refresh_seconds: float = 30.0,
    ) -> None:
        self.store = store
        self.config = config or RouterConfig()
        self.prior_strength = prior_strength
        self.window = timedelta(days=window_days)
        self.fairness_window = fairness_window
        self.refresh_seconds = refresh_seconds
        self._tallies: tuple[float, list[Tally]] | None = None
        self._generation = 0
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, store: Store, settings: Settings) -> AssignmentStore:
        return cls(
            store,
            RouterConfig.from_settings(settings),
            prior_strength=settings.performance_prior_strength,
            window_days=settings.performance_window_days,
            fairness_window=settings.routing_fairness_window,
            refresh_seconds=settings.performance_refresh_seconds,
        )

    # -- learned performance ------------------------------------------------------------------

    def tallies(self, now: datetime | None = None) -> list[Tally]:
        """Feedback of the window summed per agent and topic (one aggregate query), cached for
        ``refresh_seconds``; feedback through this store refreshes it at once."""
        hit = self._tallies
        if hit is not None and time.monotonic() - hit[0] <= self.refresh_seconds:
            return hit[1]
        with self._lock:
            generation = self._generation
        taken = time.monotonic()
        since = (now or utcnow()) - self.window
        q = (
            select(
                F.c.agent_id,
                F.c.topic,
                func.count(F.c.csat),
                func.sum(case((F.c.csat >= 4, 1), else_=0)),
                func.count(F.c.resolved),
                func.sum(case((F.c.resolved.is_(True), 1), else_=0)),
                func.count(F.c.log_response),
                func.sum(F.c.log_response),
            )
            .where(F.c.created_at >= since)
            .group_by(F.c.agent_id, F.c.topic)
        )
        with self.store.engine.connect() as conn:
            rows = conn.execute(q).all()
        tallies = [
            Tally(
                a,
                t,
                int(r or 0),
                int(s or 0),
                int(k or 0),
                int(v or 0),
                int(n or 0),
                float(lg or 0),
            )
            for a, t, r, s, k, v, n, lg in rows
        ]
        with self._lock:
            if generation == self._generation:
                self._tallies = (taken, tallies)
        return tallies

    def _forget_tallies(self) -> None:
        with self._lock:
            self._generation += 1
            self._tallies = None

    def priors(self, policy: RoutingPolicy) -> Priors:
        return Priors(
            csat=policy.csat_prior,
            response_minutes=policy.speed_prior_minutes,
            strength=self.prior_strength,
        )

    def estimates(self, agents: Sequence[Agent], policy: RoutingPolicy) -> Estimates:
        return Estimates(self.tallies(), agents, self.priors(policy))

    # -- assignment ---------------------------------------------------------------------------

    def _recent(self, conn: Connection) -> dict[str, int]:
        """Assignments per agent among the last ``fairness_window`` (index on assigned_at)."""
        last = (
            select(A.c.agent_id)
            .order_by(A.c.assigned_at.desc())
            .limit(self.fairness_window)
            .subquery()
        )
        rows = conn.execute(select(last.c.agent_id, func.count()).group_by(last.c.agent_id))
        return {agent_id: int(n) for agent_id, n in rows}

    def get(self, post_id: str) -> Assigned | None:
        with self.store.engine.connect() as conn:
            row = conn.execute(select(A).where(A.c.post_id == post_id)).first()
        return _assigned(row, replay=True) if row is not None else None

    def open_case(self, post_id: str) -> dict[str, Any] | None:
        """The assignment row of a post (text, predicted labels, agent), or None."""
        with self.store.engine.connect() as conn:
            row = conn.execute(select(A).where(A.c.post_id == post_id)).first()
        return dict(row._mapping) if row is not None else None

    def assign(
        self,
        case: Case,
        post: Post,
        result: ScoreResult,
        policy: RoutingPolicy,
        *,
        now: datetime | None = None,
        keep_text: bool = True,
        arm: ArmRouting | None = None,
    ) -> Assigned:
        """Assign ``post`` (scored as ``result``) to the best agent with room, in one committed
        transaction; a post assigned before returns that assignment (``replay``). ``arm``: the
        routing experiment's arm the post is in, which routes it (its strategy, objective and
        routing section) and is recorded with it. Raises ``CaseworkError`` (409) when no agent
        can take it."""
        if case.post_id != post.id or result.id != post.id:
            raise ValueError("case, post and result must be the same post")
        now = now or utcnow()
        tallies = self.tallies()  # read before the write transaction, not inside it
        try:
            with writing(self.store) as conn:
                row = conn.execute(select(A).where(A.c.post_id == post.id)).first()
                if row is not None:
                    return _assigned(row, replay=True)
                agents = [_row_to_agent(r) for r in conn.execute(select(AG).order_by(AG.c.id))]
                if arm is not None and arm.strategy != "caretriage":
                    choice = baseline_choice(arm.strategy, case.topic, agents)
                else:
                    routing = arm.policy if arm is not None and arm.policy else policy
                    choice = choose_agent(
                        case,
                        agents,
                        Estimates(tallies, agents, self.priors(routing)),
                        self._recent(conn),
                        routing,
                        arm.config if arm is not None else self.config,
                    )
                assigned = self._take(conn, choice, case, post, result, now, keep_text, arm)
        except IntegrityError:
            # The same post raced in on another connection and won; its transaction is ours.
            won = self.get(post.id)
            if won is None:
                raise
            return won
        self.store._invalidate_roster()  # scoring must see the new caseload
        return assigned

    def _take(
        self,
        conn: Connection,
        choice: Choice,
        case: Case,
        post: Post,
        result: ScoreResult,
        now: datetime,
        keep_text: bool,
        arm: ArmRouting | None = None,
    ) -> Assigned:
        """Raise the first candidate's caseload that still has room, and record it."""
        for i, match in enumerate(choice.candidates):
            got = conn.execute(
                update(AG)
                .where(
                    AG.c.id == match.id,
                    AG.c.caseload < AG.c.capacity,
                    AG.c.status != AgentStatus.offline.value,
                )
                .values(caseload=AG.c.caseload + 1)
                .returning(AG.c.caseload, AG.c.capacity)
            ).first()
            if got is None:
                continue
            reasons = [*choice.notes, *match.reasons]
            if arm is not None:
                reasons.insert(0, arm.reason)
            if i:
                reasons.append(f"{i} better-ranked agent(s) filled up meanwhile")
            conn.execute(
                insert(A).values(
                    post_id=post.id,
                    agent_id=match.id,
                    topic=case.topic,
                    channel=post.channel.value,
                    level=result.priority.level,
                    score=result.priority.score,
                    predicted={
                        "topic": result.topic.label,
                        "sentiment": result.sentiment.label,
                        "actionability": result.actionability.label,
                        **{t: p.label for t, p in result.tasks.items()},
                    },
                    text=post.text if keep_text else None,
                    reasons=reasons,
                    post_created_at=post.created_at,
                    respond_by=result.priority.respond_by,
                    assigned_at=now,
                    closed_at=None,
                    experiment=arm.experiment if arm is not None else None,
                    arm=arm.arm if arm is not None else None,
                )
            )
            return Assigned(
                post_id=post.id,
                agent_id=match.id,
                topic=case.topic,
                level=result.priority.level,
                score=result.priority.score,
                respond_by=result.priority.respond_by,
                assigned_at=now,
                reasons=reasons,
                caseload=got.caseload,
                capacity=got.capacity,
                alternatives=list(choice.candidates[i + 1 : i + 4]),
                experiment=arm.experiment if arm is not None else None,
                arm=arm.arm if arm is not None else None,
            )
        why = choice.why_none or "every candidate filled up meanwhile"
        raise CaseworkError(f"post {post.id!r} not assigned: {why}", 409)

    # -- feedback -----------------------------------------------------------------------------

    def record_feedback(self, fb: FeedbackIn, now: datetime | None = None) -> Outcome:
        """Store the outcome of ``fb.post_id`` and, if it closes the case for the first time,
        free the assigned agent's caseload; one committed transaction. Raises
        ``CaseworkError`` (422) naming the field when the outcome cannot be attributed."""
        now = now or utcnow()
        for attempt in range(2):
            try:
                outcome = self._feedback(fb, now)
                break
            except IntegrityError:
                if attempt:  # the concurrent insert of the same post's first feedback won
                    raise
        self._forget_tallies()
        if outcome.released:
            self.store._invalidate_roster()
        return outcome

    def _feedback(self, fb: FeedbackIn, now: datetime) -> Outcome:
        pg = self.store.dialect == "postgresql"
        with writing(self.store) as conn:
            q = select(A).where(A.c.post_id == fb.post_id)
            a = conn.execute(q.with_for_update() if pg else q).first()
            q = select(F).where(F.c.post_id == fb.post_id)
            old = conn.execute(q.with_for_update() if pg else q).first()
            old_m: Mapping[str, Any] = old._mapping if old is not None else {}
            agent_id = self._handler(conn, fb, a, old_m)
            corrected = {**(old_m.get("corrected") or {}), **(fb.corrected or {})} or None
            topic = (corrected or {}).get("topic") or fb.topic or old_m.get("topic")
            topic = topic or (a.topic if a is not None else None)
            if not topic:
                raise CaseworkError(
                    f"topic: post {fb.post_id!r} was not assigned through /v1/assign; "
                    "say which topic the outcome counts for",
                    422,
                    ["topic"],
                )
            minutes = _minutes(fb, a)
            if minutes is None:
                minutes = old_m.get("first_response_minutes")
            values = {
                "agent_id": agent_id,
                "topic": topic,
                "channel": a.channel if a is not None else old_m.get("channel"),
                "first_response_minutes": minutes,
                "log_response": None if minutes is None else math.log1p(minutes),
                "resolved": fb.resolved if fb.resolved is not None else old_m.get("resolved"),
                "csat": fb.csat if fb.csat is not None else old_m.get("csat"),
                "nps": fb.nps if fb.nps is not None else old_m.get("nps"),
                "corrected": corrected,
                "updated_at": now,
            }
            if old is None:
                conn.execute(insert(F).values(post_id=fb.post_id, created_at=now, **values))
            else:
                conn.execute(update(F).where(F.c.post_id == fb.post_id).values(**values))
            released = False
            if fb.closed and a is not None:
                released = bool(
                    conn.execute(
                        update(A)
                        .where(A.c.post_id == fb.post_id, A.c.closed_at.is_(None))
                        .values(closed_at=now, text=None)
                    ).rowcount
                )
                if released:
                    conn.execute(
                        update(AG)
                        .where(AG.c.id == a.agent_id, AG.c.caseload > 0)
                        .values(caseload=AG.c.caseload - 1)
                    )
            closed = released or (a is not None and a.closed_at is not None)
        return Outcome(
            post_id=fb.post_id,
            agent_id=agent_id,
            topic=topic,
            first_response_minutes=values["first_response_minutes"],
            resolved=values["resolved"],
            csat=values["csat"],
            nps=values["nps"],
            corrected=corrected,
            closed=closed,
            released=released,
            updated_at=now,
        )

    @staticmethod
    def _handler(conn: Connection, fb: FeedbackIn, a: Any, old: Mapping[str, Any]) -> str:
        """Who the outcome counts for: the one named (the assigned agent, or one on the
        roster), else the one named before, else the assigned agent."""
        if fb.agent_id is None:
            agent_id = old.get("agent_id") or (a.agent_id if a is not None else None)
            if agent_id is None:
                raise CaseworkError(
                    f"agent_id: post {fb.post_id!r} was not assigned through /v1/assign; "
                    "say who handled it",
                    422,
                    ["agent_id"],
                )
            return agent_id
        if (a is None or fb.agent_id != a.agent_id) and fb.agent_id != old.get("agent_id"):
            known = conn.execute(select(AG.c.id).where(AG.c.id == fb.agent_id)).first()
            if known is None:
                raise CaseworkError(
                    f"agent_id: no agent {fb.agent_id!r} on the roster", 422, ["agent_id"]
                )
        return fb.agent_id


def _minutes(fb: FeedbackIn, a: Any) -> float | None:
    """First-response minutes given, or computed from ``first_response_at`` and the post's
    creation time (known for an assigned post)."""
    if fb.first_response_minutes is not None:
        return fb.first_response_minutes
    if fb.first_response_at is None:
        return None
    if a is None:
        raise CaseworkError(
            "first_response_at: the post was not assigned here, so its creation time is "
            "unknown; give first_response_minutes",
            422,
            ["first_response_at"],
        )
    created = aware(a.post_created_at)
    assert created is not None
    if fb.first_response_at < created:
        raise CaseworkError(
            "first_response_at: before the post was created", 422, ["first_response_at"]
        )
    return (fb.first_response_at - created).total_seconds() / 60.0
