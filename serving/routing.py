"""Routing policy: rank the agents best placed to answer one scored post.

The score is multiplicative, as the routing issue asks: skill on the predicted topic × spare
capacity × measured performance (CSAT and speed on that topic). A product means one factor at
zero vetoes the agent, and the policy weights are *exponents* (a weighted geometric mean): 0
ignores a factor, 2 makes a ratio count twice as much.

Design choices:

* Availability is a hard rule: an offline agent, or one with caseload >= capacity, is never
  returned. An *away* agent (on a break, back soon) is kept but its score is multiplied by
  ``away_factor``, so it is chosen only when nobody online fits nearly as well; an
  ``away_factor`` of 0 excludes away agents.
* New agents are not punished to zero: a topic with no CSAT or first-response measurement uses
  the policy's priors (roughly the team median), not 0.
* Uncertain topic: below ``generalist_below`` topic confidence, the agent's general skill (mean
  over every topic the roster knows, absent skills counting as 0) is blended in with weight
  ``1 - confidence / generalist_below``, so a generalist beats a specialist in a topic that may
  be wrong. Above the threshold only the topic skill counts; the blend is continuous.
* Escalation: a strongly negative, high-priority post goes to top-rated agents. CSAT then gets
  the larger exponent ``escalation.csat_weight`` and, when at least one candidate has a measured
  CSAT on the topic >= ``min_csat``, everyone else is dropped (unmeasured agents included: an
  escalation is no place to collect a first measurement).
* Pure: no I/O, no clock; ties are broken by agent id.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from serving.schemas import Agent, AgentMatch, AgentStatus, Priority

Level = Literal["P1", "P2", "P3", "P4"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RoutingWeights(_Strict):
    """Exponents of the multiplicative score."""

    skill: float = Field(ge=0)
    capacity: float = Field(ge=0)
    csat: float = Field(ge=0)
    speed: float = Field(ge=0)


class Escalation(_Strict):
    """When a post needs the best-rated people rather than the best-fitting ones."""

    min_p_negative: float = Field(ge=0, le=1)
    levels: list[Level] = Field(default_factory=list)
    min_score: int | None = Field(default=None, ge=0, le=100)
    min_csat: float = Field(ge=0, le=1)
    csat_weight: float = Field(ge=0)

    def applies(self, p_negative: float, priority: Priority) -> bool:
        high = priority.level in self.levels or (
            self.min_score is not None and priority.score >= self.min_score
        )
        return p_negative >= self.min_p_negative and high


class RoutingPolicy(_Strict):
    """The ``routing:`` section of the policy file."""

    weights: RoutingWeights
    # Assumed CSAT on a topic with no measurement (new agent or new topic).
    csat_prior: float = Field(ge=0, le=1)
    # Speed factor = reference / (reference + median minutes): 1 when instant, 0.5 at reference.
    speed_reference_minutes: float = Field(gt=0)
    # Assumed median first-response minutes on a topic with no measurement.
    speed_prior_minutes: float = Field(ge=0)
    # Topic confidence below which general skill is blended in (0 disables the blend).
    generalist_below: float = Field(ge=0, le=1)
    # Effective skill must exceed this; with 0, an agent with no skill at all is not routed.
    min_skill: float = Field(default=0.0, ge=0, lt=1)
    # Score multiplier for away agents; 0 excludes them.
    away_factor: float = Field(ge=0, le=1)
    top_k: int = Field(default=3, ge=1, le=100)
    escalation: Escalation

    @model_validator(mode="after")
    def _escalation_strengthens_csat(self) -> Self:
        if self.escalation.csat_weight < self.weights.csat:
            raise ValueError(
                f"escalation.csat_weight ({self.escalation.csat_weight:g}) must be >= "
                f"weights.csat ({self.weights.csat:g}): escalation makes CSAT count more"
            )
        return self


def _unit(name: str, x: float) -> None:
    if not (math.isfinite(x) and 0.0 <= x <= 1.0):
        raise ValueError(f"{name} must be within 0-1, got {x!r}")


def _speaks(agent: Agent, language: str) -> bool:
    """Case-insensitive; ``en-GB`` matches an agent listing ``en`` and vice versa."""
    want = language.lower()
    for have in (lang.lower() for lang in agent.languages):
        if have == want or have.split("-")[0] == want.split("-")[0]:
            return True
    return False


def _skill_reason(
    topic: str, own: float, skill: float, general: float | None, confidence: float
) -> str:
    """Why the agent's skill for the post is ``skill``: its own on the topic or, with
    ``general`` given, the blend that ``Roster.rank`` computed."""
    if general is None:
        return f"skill {topic} {own:.2f}"
    return (
        f"skill {skill:.2f} = {topic} {own:.2f} blended with general {general:.2f} "
        f"(topic confidence {confidence:.2f})"
    )


def _skill_sum(agent: Agent) -> float:
    """Sum of the agent's skills in topic order, so every caller gets the same float."""
    return sum(agent.skills[t] for t in sorted(agent.skills))


# Distinct (language, work group) filters a compiled roster remembers; more are computed per call.
_MAX_CACHED_FILTERS = 64


@dataclass(frozen=True)
class _TopicFactors:
    """What a topic's score needs from each agent, computed once per roster and topic."""

    own: np.ndarray  # skill on the topic, 0 where absent
    csat: np.ndarray  # measured CSAT, -1 where unmeasured
    csat_factor: np.ndarray  # (CSAT or prior) ** weights.csat
    csat_factor_escalated: np.ndarray  # ... ** escalation.csat_weight
    speed_factor: np.ndarray  # speed ** weights.speed


class Roster:
    """A roster compiled for one routing policy: per-agent arrays, so that ranking a post is a
    few array operations over every agent rather than a Python loop per agent (a 1,000-agent
    roster cost about 2 ms a post that way). Built once per roster snapshot and shared by the
    posts scored against it; ``rank`` is pure and thread-safe (the per-topic factors it caches
    are deterministic)."""

    def __init__(self, agents: Sequence[Agent], policy: RoutingPolicy) -> None:
        self.source = agents  # the snapshot compiled, to tell whether a cached copy is current
        self.agents = tuple(agents)
        self.policy = policy
        self.ids = [a.id for a in self.agents]
        # The roster's topic universe, for "general skill": absent skills count as 0.
        self.topics = sorted({t for a in self.agents for t in a.skills})
        self._skill_sum = np.array([_skill_sum(a) for a in self.agents], dtype=np.float64)
        capacity = np.array([a.capacity for a in self.agents], dtype=np.float64)
        caseload = np.array([a.caseload for a in self.agents], dtype=np.float64)
        status = [a.status for a in self.agents]
        self._away = np.array([s == AgentStatus.away for s in status], dtype=bool)
        # Availability is a hard rule: offline or full agents are never returned, and away ones
        # only while away agents count at all.
        self._available = (
            np.array([s != AgentStatus.offline for s in status], dtype=bool)
            & (caseload < capacity)
            & ~(self._away & (policy.away_factor == 0))
        )
        # Full agents are never chosen; clipping keeps their (unused) factor a number.
        spare = np.clip((capacity - caseload) / capacity, 0.0, None)
        self._spare_factor = spare**policy.weights.capacity
        # Each agent's place in id order, the tie-breaker between equal scores.
        by_id = np.argsort(np.array(self.ids, dtype=object), kind="stable")
        self._tie_rank = np.empty(len(self.agents), dtype=np.int64)
        self._tie_rank[by_id] = np.arange(len(self.agents))
        self._factors: dict[str, _TopicFactors] = {}
        self._filters: dict[tuple[str | None, str | None], np.ndarray] = {}

    def _topic(self, topic: str) -> _TopicFactors:
        got = self._factors.get(topic)
        if got is None:
            p, w = self.policy, self.policy.weights
            csat = np.array([a.csat.get(topic, -1.0) for a in self.agents], dtype=np.float64)
            csat_value = np.where(csat < 0, p.csat_prior, csat)
            minutes = np.array(
                [a.first_response_minutes.get(topic, p.speed_prior_minutes) for a in self.agents],
                dtype=np.float64,
            )
            ref = p.speed_reference_minutes
            got = _TopicFactors(
                own=np.array([a.skills.get(topic, 0.0) for a in self.agents], dtype=np.float64),
                csat=csat,
                csat_factor=csat_value**w.csat,
                csat_factor_escalated=csat_value**p.escalation.csat_weight,
                speed_factor=(ref / (ref + minutes)) ** w.speed,
            )
            self._factors[topic] = got
        return got

    def _filter(self, language: str | None, work_group: str | None) -> np.ndarray:
        got = self._filters.get((language, work_group))
        if got is None:
            got = np.array(
                [
                    (work_group is None or a.work_group == work_group)
                    and (language is None or _speaks(a, language))
                    for a in self.agents
                ],
                dtype=bool,
            )
            if len(self._filters) < _MAX_CACHED_FILTERS:  # filters may come from requests
                self._filters[(language, work_group)] = got
        return got

    def rank(
        self,
        *,
        topic: str,
        topic_confidence: float,
        p_negative: float,
        priority: Priority,
        language: str | None = None,
        work_group: str | None = None,
        top_k: int | None = None,
    ) -> list[AgentMatch]:
        """The best ``top_k`` (default ``policy.top_k``) agents for a post, best first.

        Empty when nobody is available, matches the filters and has any skill for the post.
        """
        _unit("topic_confidence", topic_confidence)
        _unit("p_negative", p_negative)
        policy, w, esc = self.policy, self.policy.weights, self.policy.escalation
        k = policy.top_k if top_k is None else top_k
        if k < 1:
            raise ValueError(f"top_k must be >= 1, got {k}")
        if not self.agents:
            return []
        f = self._topic(topic)
        topics = self.topics if topic in self.topics else sorted([*self.topics, topic])
        gb = policy.generalist_below
        general = None
        if gb <= 0 or topic_confidence >= gb:
            skill = f.own
        else:
            trust = topic_confidence / gb
            general = self._skill_sum / len(topics)
            skill = trust * f.own + (1 - trust) * general
        keep = self._available & (skill > policy.min_skill)
        if language is not None or work_group is not None:
            keep &= self._filter(language, work_group)
        escalate = esc.applies(p_negative, priority)
        if escalate:
            top = keep & (f.csat >= esc.min_csat)
            if top.any():
                keep = top
        chosen = np.flatnonzero(keep)
        if not len(chosen):
            return []
        csat_factor = f.csat_factor_escalated if escalate else f.csat_factor
        score = (
            skill[chosen] ** w.skill
            * self._spare_factor[chosen]
            * csat_factor[chosen]
            * f.speed_factor[chosen]
        )
        score = np.where(self._away[chosen], score * policy.away_factor, score)
        # Round before comparing so float noise cannot reorder equal agents; then id decides.
        # Reasons are written for the agents returned only (a roster has tens or hundreds).
        order = np.lexsort((self._tie_rank[chosen], -np.round(score, 12)))[:k]
        return [
            AgentMatch(
                id=self.ids[i],
                score=round(float(score[j]), 4),
                reasons=_reasons(
                    self.agents[i],
                    topic,
                    _skill_reason(
                        topic,
                        float(f.own[i]),
                        float(skill[i]),
                        None if general is None else float(general[i]),
                        topic_confidence,
                    ),
                    policy,
                    escalate,
                ),
            )
            for j, i in ((int(j), int(chosen[j])) for j in order)
        ]


def rank_agents(
    *,
    topic: str,
    topic_confidence: float,
    p_negative: float,
    priority: Priority,
    agents: Sequence[Agent],
    policy: RoutingPolicy,
    language: str | None = None,
    work_group: str | None = None,
    top_k: int | None = None,
) -> list[AgentMatch]:
    """``Roster(agents, policy).rank(...)`` for one post; scoring many posts against the same
    roster should compile it once."""
    return Roster(agents, policy).rank(
        topic=topic,
        topic_confidence=topic_confidence,
        p_negative=p_negative,
        priority=priority,
        language=language,
        work_group=work_group,
        top_k=top_k,
    )


def _reasons(
    a: Agent, topic: str, skill_reason: str, policy: RoutingPolicy, escalate: bool
) -> list[str]:
    """Each factor of the agent's score, in the order ``Roster.rank`` multiplies them."""
    w, esc = policy.weights, policy.escalation
    reasons = [
        skill_reason,
        f"spare capacity {a.capacity - a.caseload}/{a.capacity}",
    ]
    csat = a.csat.get(topic)
    if csat is None:
        note = f"CSAT {topic} unmeasured, prior {policy.csat_prior:.2f}"
    else:
        note = f"CSAT {topic} {csat:.2f}"
    if escalate:
        top_rated = csat is not None and csat >= esc.min_csat
        note += " (escalation: top-rated)" if top_rated else " (escalation: none top-rated)"
    if (esc.csat_weight if escalate else w.csat) > 0:
        reasons.append(note)
    minutes = a.first_response_minutes.get(topic)
    if w.speed > 0:
        m = policy.speed_prior_minutes if minutes is None else minutes
        reasons.append(
            f"first response {topic} {m:g} min"
            if minutes is not None
            else f"first response {topic} unmeasured, prior {m:g} min"
        )
    if a.status == AgentStatus.away:
        reasons.append(f"away (score × {policy.away_factor:g})")
    return reasons
