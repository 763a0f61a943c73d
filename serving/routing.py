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


@dataclass
class _Candidate:
    agent: Agent
    skill: float
    score: float = 0.0


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


def _eligible(
    agent: Agent, policy: RoutingPolicy, language: str | None, work_group: str | None
) -> bool:
    if agent.status == AgentStatus.offline or agent.caseload >= agent.capacity:
        return False
    if agent.status == AgentStatus.away and policy.away_factor == 0:
        return False
    if work_group is not None and agent.work_group != work_group:
        return False
    return language is None or _speaks(agent, language)


def _skill(
    agent: Agent,
    topic: str,
    topics: Sequence[str],
    confidence: float,
    policy: RoutingPolicy,
    explain: bool = True,
) -> tuple[float, str]:
    """The agent's skill for the post and, if ``explain``, the reason that says so."""
    own = agent.skills.get(topic, 0.0)
    if policy.generalist_below <= 0 or confidence >= policy.generalist_below:
        return own, f"skill {topic} {own:.2f}" if explain else ""
    trust = confidence / policy.generalist_below
    # The mean over ``topics`` (a superset of the agent's skills, absent ones 0), summed in
    # the same sorted order so the result is bit-identical, without a lookup per topic.
    general = sum(agent.skills[t] for t in sorted(agent.skills)) / len(topics)
    blended = trust * own + (1 - trust) * general
    if not explain:
        return blended, ""
    return blended, (
        f"skill {blended:.2f} = {topic} {own:.2f} blended with general {general:.2f} "
        f"(topic confidence {confidence:.2f})"
    )


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
    """The best ``top_k`` (default ``policy.top_k``) agents for a post, best first.

    Empty when nobody is available, matches the filters and has any skill for the post.
    """
    _unit("topic_confidence", topic_confidence)
    _unit("p_negative", p_negative)
    k = policy.top_k if top_k is None else top_k
    if k < 1:
        raise ValueError(f"top_k must be >= 1, got {k}")
    # The roster's topic universe, for "general skill": absent skills count as 0.
    topics = sorted({t for a in agents for t in a.skills} | {topic})

    candidates: list[_Candidate] = []
    for agent in agents:
        if not _eligible(agent, policy, language, work_group):
            continue
        skill, _ = _skill(agent, topic, topics, topic_confidence, policy, explain=False)
        if skill > policy.min_skill:
            candidates.append(_Candidate(agent, skill))

    esc = policy.escalation
    escalate = esc.applies(p_negative, priority)
    if escalate:
        top = [c for c in candidates if c.agent.csat.get(topic, -1.0) >= esc.min_csat]
        candidates = top or candidates
    w = policy.weights
    csat_weight = esc.csat_weight if escalate else w.csat
    ref = policy.speed_reference_minutes

    for c in candidates:
        a = c.agent
        spare = (a.capacity - a.caseload) / a.capacity
        csat = a.csat.get(topic)
        csat_value = policy.csat_prior if csat is None else csat
        minutes = a.first_response_minutes.get(topic)
        speed = ref / (ref + (policy.speed_prior_minutes if minutes is None else minutes))
        c.score = c.skill**w.skill * spare**w.capacity * csat_value**csat_weight * speed**w.speed
        if a.status == AgentStatus.away:
            c.score *= policy.away_factor

    # Round before comparing so float noise cannot reorder equal agents; then id decides.
    # Reasons are written for the agents returned only (a roster has tens or hundreds).
    candidates.sort(key=lambda c: (-round(c.score, 12), c.agent.id))
    return [
        AgentMatch(
            id=c.agent.id,
            score=round(c.score, 4),
            reasons=_reasons(c.agent, topic, topics, topic_confidence, policy, escalate),
        )
        for c in candidates[:k]
    ]


def _reasons(
    a: Agent,
    topic: str,
    topics: Sequence[str],
    confidence: float,
    policy: RoutingPolicy,
    escalate: bool,
) -> list[str]:
    """Each factor of the agent's score, in the order ``rank_agents`` multiplies them."""
    w, esc = policy.weights, policy.escalation
    reasons = [
        _skill(a, topic, topics, confidence, policy)[1],
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
