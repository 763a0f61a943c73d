"""Learned agent performance: per agent and topic, CSAT, resolution rate and first-response time
estimated from case outcomes (``POST /v1/feedback``), shrunk toward the agent's team when the
agent has few cases.

Pure functions of their inputs (no I/O, no clock): the store sums feedback into ``Tally`` rows
in SQL, and everything here is arithmetic on those sums, so the API, the assignment
transaction and the replay benchmark compute the same figures.

The model, per agent ``a`` and topic ``t``, with prior strength ``k`` (pseudo-cases):

* **CSAT** is the share of satisfied customers (a 1-5 rating of 4 or 5, the usual CSAT%),
  beta-binomial: ``(k·p0 + satisfied) / (k + rated)``.
* **Resolution rate**, the same over cases whose resolution is known.
* **First-response minutes**, normal-normal on ``log(1 + minutes)`` (response times are
  skewed; the estimate is a geometric mean): ``exp((k·log1p(m0) + Σ log1p(m)) / (k + n)) - 1``.

The prior ``p0``/``m0`` is the roster's declared figure for the agent (``Agent.csat``,
``Agent.first_response_minutes``) when it declares one: a manager's estimate of this person,
the starting point until feedback outweighs it. Otherwise it is the agent's team (same
``work_group``) on that topic, estimated the same way from the *other* members' cases (leave
one out, so an agent's cases do not count twice) and itself shrunk toward the routing policy's
defaults (``csat_prior``, ``speed_prior_minutes``). With no feedback at all every estimate is
its prior, so a roster without feedback routes exactly as before.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from serving.schemas import Agent

# A 1-5 rating from which the customer counts as satisfied (CSAT% convention).
SATISFIED_FROM = 4
# Assumed resolution rate where nothing is known (no declared figure exists for it).
DEFAULT_RESOLUTION = 0.8

PriorSource = Literal["declared", "team", "default"]


@dataclass(frozen=True)
class Tally:
    """Feedback sums of one agent on one topic: what the store aggregates in SQL."""

    agent_id: str
    topic: str
    rated: int = 0  # cases with a CSAT rating
    satisfied: int = 0  # ... of which rated 4 or 5
    resolution_known: int = 0
    resolved: int = 0
    timed: int = 0  # cases with a first-response time
    log_minutes: float = 0.0  # sum of log1p(first-response minutes)

    def __add__(self, other: Tally) -> Tally:
        return replace(
            self,
            rated=self.rated + other.rated,
            satisfied=self.satisfied + other.satisfied,
            resolution_known=self.resolution_known + other.resolution_known,
            resolved=self.resolved + other.resolved,
            timed=self.timed + other.timed,
            log_minutes=self.log_minutes + other.log_minutes,
        )

    def __sub__(self, other: Tally) -> Tally:
        return replace(
            self,
            rated=self.rated - other.rated,
            satisfied=self.satisfied - other.satisfied,
            resolution_known=self.resolution_known - other.resolution_known,
            resolved=self.resolved - other.resolved,
            timed=self.timed - other.timed,
            log_minutes=self.log_minutes - other.log_minutes,
        )

    @property
    def cases(self) -> int:
        return max(self.rated, self.resolution_known, self.timed)


def tally_of(
    agent_id: str,
    topic: str,
    *,
    csat: int | None = None,
    resolved: bool | None = None,
    first_response_minutes: float | None = None,
) -> Tally:
    """The tally of one outcome (what a feedback row contributes)."""
    return Tally(
        agent_id,
        topic,
        rated=int(csat is not None),
        satisfied=int(csat is not None and csat >= SATISFIED_FROM),
        resolution_known=int(resolved is not None),
        resolved=int(bool(resolved)),
        timed=int(first_response_minutes is not None),
        log_minutes=math.log1p(first_response_minutes or 0.0),
    )


@dataclass(frozen=True)
class Priors:
    """Where estimates start without feedback, and how many cases that start is worth."""

    csat: float = 0.8  # the routing policy's csat_prior
    resolution: float = DEFAULT_RESOLUTION
    response_minutes: float = 30.0  # the routing policy's speed_prior_minutes
    strength: float = 5.0  # k: pseudo-cases; 0 trusts an agent's first case entirely

    def __post_init__(self) -> None:
        for name in ("csat", "resolution"):
            x = getattr(self, name)
            if not (math.isfinite(x) and 0.0 <= x <= 1.0):
                raise ValueError(f"{name} prior must be within 0-1, got {x!r}")
        if not (math.isfinite(self.response_minutes) and self.response_minutes >= 0):
            raise ValueError(f"response_minutes prior must be >= 0, got {self.response_minutes}")
        if not (math.isfinite(self.strength) and self.strength >= 0):
            raise ValueError(f"strength must be >= 0, got {self.strength!r}")


def posterior_share(successes: int, n: int, prior: float, strength: float) -> float:
    """Beta-binomial posterior mean of a rate: ``prior`` worth ``strength`` cases."""
    if n <= 0:
        return prior
    return (strength * prior + successes) / (strength + n)


def posterior_minutes(sum_log: float, n: int, prior_minutes: float, strength: float) -> float:
    """Normal-normal posterior on log1p(minutes), back in minutes (a geometric mean)."""
    if n <= 0:
        return prior_minutes
    mean = (strength * math.log1p(prior_minutes) + sum_log) / (strength + n)
    return max(0.0, math.expm1(mean))


@dataclass(frozen=True)
class Estimate:
    """One agent's (or team's) expected outcomes on one topic, and what they rest on."""

    csat: float
    resolution: float
    response_minutes: float
    rated: int  # own cases behind csat
    resolution_known: int
    timed: int
    csat_prior: float
    csat_prior_source: PriorSource
    minutes_prior_source: PriorSource
    # Any evidence at all: own or team feedback, or a declared figure. Without it the
    # estimate is the policy's default and the router treats the agent as unmeasured.
    csat_known: bool
    minutes_known: bool

    def reason(self, topic: str, strength: float) -> str:
        """One line for a route's reasons: the estimate and what it rests on."""
        if self.rated:
            return (
                f"estimated CSAT {topic} {self.csat:.2f} from {self.rated} rated case(s), "
                f"shrunk toward {self.csat_prior_source} {self.csat_prior:.2f} (k={strength:g})"
            )
        return f"CSAT {topic} {self.csat:.2f}: no rated cases, {self.csat_prior_source} prior"


_EMPTY = Tally("", "")


class Estimates:
    """Estimates for every agent and topic, from feedback tallies and the roster.

    ``of(agent, topic)`` is computed on demand (and remembered): a roster of hundreds and a
    taxonomy of tens need only the pairs routing asks about."""

    def __init__(self, tallies: Iterable[Tally], agents: Sequence[Agent], priors: Priors) -> None:
        self.priors = priors
        self._own: dict[tuple[str, str], Tally] = {}
        for t in tallies:
            key = (t.agent_id, t.topic)
            self._own[key] = self._own[key] + t if key in self._own else t
        group_of = {a.id: a.work_group for a in agents}
        team: dict[tuple[str, str], Tally] = defaultdict(lambda: _EMPTY)
        for (agent_id, topic), t in self._own.items():
            group = group_of.get(agent_id)
            if group is not None:  # agents gone from the roster count for nobody's team
                team[(group, topic)] = team[(group, topic)] + t
        self._team = dict(team)
        self._memo: dict[tuple[str, str, str, float | None, float | None], Estimate] = {}

    @property
    def topics(self) -> set[str]:
        return {topic for _, topic in self._own}

    def own(self, agent_id: str, topic: str) -> Tally:
        return self._own.get((agent_id, topic), _EMPTY)

    def team(self, work_group: str, topic: str, *, excluding: str | None = None) -> Estimate:
        """The team's estimate on ``topic``, shrunk toward the defaults; ``excluding`` leaves
        one agent's cases out (the prior of that agent)."""
        t = self._team.get((work_group, topic), _EMPTY)
        if excluding is not None:
            t = t - self.own(excluding, topic)
        p = self.priors
        return Estimate(
            csat=posterior_share(t.satisfied, t.rated, p.csat, p.strength),
            resolution=posterior_share(t.resolved, t.resolution_known, p.resolution, p.strength),
            response_minutes=posterior_minutes(
                t.log_minutes, t.timed, p.response_minutes, p.strength
            ),
            rated=t.rated,
            resolution_known=t.resolution_known,
            timed=t.timed,
            csat_prior=p.csat,
            csat_prior_source="default",
            minutes_prior_source="default",
            csat_known=t.rated > 0,
            minutes_known=t.timed > 0,
        )

    def of(self, agent: Agent, topic: str) -> Estimate:
        """The agent's estimate on ``topic``: own cases, shrunk toward the declared figure if
        the roster gives one, else toward the rest of the team."""
        declared_csat = agent.csat.get(topic)
        declared_minutes = agent.first_response_minutes.get(topic)
        key = (agent.id, agent.work_group, topic, declared_csat, declared_minutes)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        team = self.team(agent.work_group, topic, excluding=agent.id)
        own, k = self.own(agent.id, topic), self.priors.strength
        csat0, csat_src = (
            (declared_csat, "declared") if declared_csat is not None else (team.csat, "team")
        )
        min0, min_src = (
            (declared_minutes, "declared")
            if declared_minutes is not None
            else (team.response_minutes, "team")
        )
        est = Estimate(
            csat=posterior_share(own.satisfied, own.rated, csat0, k),
            resolution=posterior_share(own.resolved, own.resolution_known, team.resolution, k),
            response_minutes=posterior_minutes(own.log_minutes, own.timed, min0, k),
            rated=own.rated,
            resolution_known=own.resolution_known,
            timed=own.timed,
            csat_prior=csat0,
            csat_prior_source=csat_src if csat_src == "declared" or team.csat_known else "default",
            minutes_prior_source=(
                min_src if min_src == "declared" or team.minutes_known else "default"
            ),
            csat_known=own.rated > 0 or declared_csat is not None or team.csat_known,
            minutes_known=own.timed > 0 or declared_minutes is not None or team.minutes_known,
        )
        if len(self._memo) < 100_000:
            self._memo[key] = est
        return est


def apply_estimates(
    agents: Sequence[Agent], estimates: Estimates, topics: Iterable[str]
) -> tuple[Agent, ...]:
    """The roster as the router should see it: each agent's ``csat`` and
    ``first_response_minutes`` on ``topics`` replaced by the estimates, where there is any
    evidence (otherwise left unmeasured, so the routing policy's own priors apply)."""
    wanted = list(dict.fromkeys(topics))
    out = []
    for agent in agents:
        csat: dict[str, float] = dict(agent.csat)
        minutes: dict[str, float] = dict(agent.first_response_minutes)
        for topic in wanted:
            est = estimates.of(agent, topic)
            if est.csat_known:
                csat[topic] = min(1.0, max(0.0, est.csat))
            if est.minutes_known:
                minutes[topic] = est.response_minutes
        out.append(agent.model_copy(update={"csat": csat, "first_response_minutes": minutes}))
    return tuple(out)


def summary(
    agents: Sequence[Agent], estimates: Estimates, topics: Iterable[str] | None = None
) -> list[dict[str, object]]:
    """Per agent and topic (the agent's skills, declared figures and feedback topics, or
    ``topics``): the estimates and their evidence, for ``GET /v1/performance``."""
    rows: list[dict[str, object]] = []
    for agent in sorted(agents, key=lambda a: a.id):
        mine = (
            set(topics)
            if topics is not None
            else {
                *agent.skills,
                *agent.csat,
                *agent.first_response_minutes,
                *(t for t in estimates.topics if estimates.own(agent.id, t).cases),
            }
        )
        for topic in sorted(mine):
            e = estimates.of(agent, topic)
            rows.append(
                {
                    "agent_id": agent.id,
                    "work_group": agent.work_group,
                    "topic": topic,
                    "csat": round(e.csat, 4),
                    "resolution_rate": round(e.resolution, 4),
                    "first_response_minutes": round(e.response_minutes, 2),
                    "rated_cases": e.rated,
                    "resolution_cases": e.resolution_known,
                    "timed_cases": e.timed,
                    "csat_prior": round(e.csat_prior, 4),
                    "csat_prior_source": e.csat_prior_source,
                }
            )
    return rows


def tallies_from(rows: Iterable[Mapping[str, object]]) -> list[Tally]:
    """Tallies from per-outcome rows (``agent_id``, ``topic``, ``csat``, ``resolved``,
    ``first_response_minutes``), for callers holding outcomes rather than SQL sums (the
    replay benchmark)."""
    return [
        tally_of(
            str(r["agent_id"]),
            str(r["topic"]),
            csat=r.get("csat"),  # type: ignore[arg-type]
            resolved=r.get("resolved"),  # type: ignore[arg-type]
            first_response_minutes=r.get("first_response_minutes"),  # type: ignore[arg-type]
        )
        for r in rows
    ]
