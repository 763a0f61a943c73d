"""Choosing the one agent a post is assigned to: the routing policy's ranking
(``serving.routing.Roster.rank``) over the roster as feedback has taught it
(``serving.performance``), with a skill floor, fairness and a top band for the posts that
need the best people.

Pure: the caller (``serving.assignments.AssignmentStore.assign``, the replay benchmark) reads
the roster with live caseloads, the recent assignment counts and the estimates, and hands
them in; ``choose_agent`` returns candidates in order of preference, each with its reasons.

The order, step by step:

1. **Learned roster.** Each agent's CSAT and first-response time on the post's topic are the
   estimates (own cases shrunk toward the declared figure or the team), so the router's
   "CSAT × speed" factor is the *expected outcome* of giving this agent this post.
2. **Objective.** ``csat`` ranks by expected CSAT alone (the speed exponent set to 0),
   ``speed`` by expected first-response time alone, ``mix`` by both with the dictionary's
   routing weights. Either way the score is multiplied by spare capacity and skill, and full
   or offline agents are never candidates.
3. **Skill floor.** Agents whose skill on the topic is below ``skill_floor`` are not
   candidates at all.
4. **Top band.** A strongly negative post (P(negative) ≥ the dictionary's escalation
   ``min_p_negative``) from a high-value customer (a VIP tier, or lifetime value ≥
   ``high_value``) or an influential author (the dictionary's influencer thresholds) goes only
   to candidates whose estimated CSAT on the topic is in the top ``top_band`` share.
5. **Fairness**, over the last assignments (``recent``: counts per agent): once the window
   holds ``fairness_min_sample`` assignments, a candidate with less than ``min_share`` of them
   (starved) goes first, and one with more than ``max_share`` (flooded) is used only if
   nobody else can take the post.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from serving.performance import Estimates, apply_estimates
from serving.routing import Roster, RoutingPolicy
from serving.schemas import Agent, AgentMatch, Post, Priority, ScoreResult

if TYPE_CHECKING:
    from serving.priority import Policy
    from serving.settings import Settings

Objective = Literal["csat", "speed", "mix"]


@dataclass(frozen=True)
class RouterConfig:
    """How assignment picks among the agents the routing policy ranks (from Settings)."""

    objective: Objective = "mix"
    skill_floor: float = 0.0
    max_share: float = 0.3
    min_share: float = 0.01
    fairness_min_sample: int = 20
    top_band: float = 0.25
    high_value: float = 5000.0

    def __post_init__(self) -> None:
        for name in ("skill_floor", "max_share", "min_share"):
            x = getattr(self, name)
            if not (math.isfinite(x) and 0.0 <= x <= 1.0):
                raise ValueError(f"{name} must be within 0-1, got {x!r}")
        if not 0.0 < self.top_band <= 1.0:
            raise ValueError(f"top_band must be within (0, 1], got {self.top_band!r}")
        if self.min_share > self.max_share:
            raise ValueError(f"min_share {self.min_share} exceeds max_share {self.max_share}")

    @classmethod
    def from_settings(cls, settings: Settings) -> RouterConfig:
        return cls(
            objective=settings.routing_objective,
            skill_floor=settings.routing_skill_floor,
            max_share=settings.routing_max_share,
            min_share=settings.routing_min_share,
            fairness_min_sample=settings.routing_fairness_min_sample,
            top_band=settings.routing_top_band,
            high_value=settings.routing_high_value,
        )


@dataclass(frozen=True)
class Case:
    """What choosing an agent needs to know about one scored post."""

    post_id: str
    topic: str
    topic_confidence: float
    p_negative: float
    priority: Priority
    high_value: bool = False
    influential: bool = False


def case_of(
    post: Post,
    result: ScoreResult,
    policy: Policy,
    negative_labels: Sequence[str],
    config: RouterConfig,
) -> Case:
    """The case of a post and its triage result, judged by the dictionary in force."""
    p_negative = min(
        1.0, max(0.0, sum(result.sentiment.scores.get(n, 0.0) for n in negative_labels))
    )
    customer, author = post.customer, post.author
    rule, _ = policy.priority.customer_tiers.of(customer.tier if customer else None)
    value = customer.lifetime_value if customer else 0.0
    return Case(
        post_id=post.id,
        topic=result.topic.label,
        topic_confidence=min(1.0, max(0.0, result.topic.confidence)),
        p_negative=p_negative,
        priority=result.priority,
        high_value=rule.vip or value >= config.high_value,
        influential=author is not None
        and policy.priority.influencer.of(author.followers, author.verified),
    )


@dataclass(frozen=True)
class Choice:
    """Candidates in order of preference (the first is the choice; the store falls back to
    the next if a concurrent assignment filled it meanwhile), each with its reasons."""

    candidates: tuple[AgentMatch, ...]
    # Why nobody, when there are no candidates.
    why_none: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def agent_id(self) -> str | None:
        return self.candidates[0].id if self.candidates else None


def routing_policy(policy: RoutingPolicy, config: RouterConfig) -> RoutingPolicy:
    """The dictionary's routing policy with the objective's exponents and the skill floor."""
    w = policy.weights
    if config.objective == "csat":
        w = w.model_copy(update={"speed": 0.0})
    elif config.objective == "speed":
        w = w.model_copy(update={"csat": 0.0})
    floor = policy.min_skill
    if config.skill_floor > 0:
        # Roster.rank keeps skill > min_skill; a floor is "at least".
        floor = max(floor, math.nextafter(config.skill_floor, -math.inf))
    if w is policy.weights and floor == policy.min_skill:
        return policy
    return policy.model_copy(update={"weights": w, "min_skill": floor})


def _band(
    ranked: list[AgentMatch], csat: Mapping[str, float], share: float
) -> tuple[list[AgentMatch], float]:
    """The candidates whose estimated CSAT is in the top ``share`` (ties kept), and the
    threshold."""
    values = sorted((csat[m.id] for m in ranked), reverse=True)
    size = max(1, math.ceil(len(values) * share))
    threshold = values[size - 1]
    return [m for m in ranked if csat[m.id] >= threshold], threshold


def choose_agent(
    case: Case,
    agents: Sequence[Agent],
    estimates: Estimates,
    recent: Mapping[str, int],
    policy: RoutingPolicy,
    config: RouterConfig,
) -> Choice:
    """The agents to assign ``case`` to, best first (see the module's docstring)."""
    if not agents:
        return Choice((), why_none="the roster is empty")
    learned = apply_estimates(agents, estimates, [case.topic])
    by_id = {a.id: a for a in agents}
    ranked = Roster(learned, routing_policy(policy, config)).rank(
        topic=case.topic,
        topic_confidence=case.topic_confidence,
        p_negative=case.p_negative,
        priority=case.priority,
        top_k=len(learned),
    )
    if not ranked:
        floor = f" (skill floor {config.skill_floor:g})" if config.skill_floor > 0 else ""
        return Choice(
            (), why_none=f"no available agent with spare capacity and skill for {case.topic}{floor}"
        )
    est = {m.id: estimates.of(by_id[m.id], case.topic) for m in ranked}
    k = estimates.priors.strength
    extra: dict[str, list[str]] = {m.id: [est[m.id].reason(case.topic, k)] for m in ranked}
    notes: list[str] = []

    top = case.p_negative >= policy.escalation.min_p_negative and (
        case.high_value or case.influential
    )
    if top:
        ranked, threshold = _band(ranked, {i: e.csat for i, e in est.items()}, config.top_band)
        who = " and ".join(
            w
            for w, on in (("high-value", case.high_value), ("influential", case.influential))
            if on
        )
        notes.append(
            f"strongly negative ({case.p_negative:.2f}) post from a {who} customer: "
            f"top {config.top_band:.0%} by estimated CSAT {case.topic} (>= {threshold:.2f})"
        )
        for m in ranked:
            extra[m.id].append(f"top band: estimated CSAT {est[m.id].csat:.2f} >= {threshold:.2f}")

    total = sum(recent.values())
    if total >= max(1, config.fairness_min_sample):
        starved, fair, flooded = [], [], []
        for m in ranked:
            n = recent.get(m.id, 0)
            share = n / total
            said = f"{n} of the last {total} assignments ({share:.1%})"
            if share < config.min_share:
                starved.append(m)
                extra[m.id].append(f"fairness: {said} < min share {config.min_share:.0%}: first")
            elif share > config.max_share:
                flooded.append(m)
                extra[m.id].append(
                    f"fairness: {said} > max share {config.max_share:.0%}: only if no one else"
                )
            else:
                fair.append(m)
        ranked = starved + fair + flooded

    out = tuple(
        AgentMatch(id=m.id, score=m.score, reasons=[*m.reasons, *extra[m.id]]) for m in ranked
    )
    return Choice(out, notes=tuple(notes))
