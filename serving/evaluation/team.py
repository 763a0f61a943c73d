"""The simulated care team of the replay: agents on shifts with a hidden skill per topic, the
roster they declare (noisy, partial), and the outcome model that turns an assignment into a
handling time, a first-response delay and a CSAT rating.

The hidden world is drawn from the seed alone, before and independently of any router: skills
are per agent and topic, the declared roster is the hidden skill plus noise (and a CSAT
measured on half the topics, also noisy), and each post's luck (how long it takes, how the
customer rates it) is drawn once per post, so every router meets the same posts with the same
luck and only its choices differ. Nothing here knows how a router decides.

Outcome model (minutes; ``s`` is the hidden skill of the agent on the post's true topic):

* handling (the case holds one of the agent's slots): ``base[topic] × (1.6 - s) × noise``,
  noise log-normal (σ 0.3, mean 1);
* reply delay (assignment to first response): ``(1 + 4 × (1 - s)) × noise``;
* CSAT 1-5: ``round(1 + 4 s + 0.5 [not negative] - 0.4 [strongly negative]
  - 0.5 × min(4, first response / 60) + N(0, 0.6))``, clipped to 1-5; "satisfied" is 4 or 5.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

# The true topic of a post with no concrete complaint (praise, questions, "Can't Tell").
GENERAL = "general"

# Handling minutes at skill 0.6, by true topic: a rebooking or a lost bag takes longer than a
# thank-you. Set once from care-team rules of thumb; not fitted to anything.
BASE_MINUTES: Mapping[str, float] = {
    GENERAL: 5.0,
    "customer_service_issue": 15.0,
    "late_flight": 12.0,
    "cancelled_flight": 20.0,
    "lost_luggage": 20.0,
    "bad_flight": 10.0,
    "flight_booking_problems": 18.0,
    "flight_attendant_complaints": 10.0,
    "long_lines": 8.0,
    "damaged_luggage": 18.0,
}
DEFAULT_BASE_MINUTES = 12.0
CSAT_NOISE = 0.6
SATISFIED = 4  # a rating of 4 or 5


@dataclass(frozen=True)
class Shift:
    """Local working hours (``start`` to ``end``, 0-24; ``end`` < ``start`` runs past midnight)
    of ``agents`` agents, every day (airline care is staffed 24/7)."""

    name: str
    start: int
    end: int
    agents: int

    def on(self, local_hour: float) -> bool:
        if self.start <= self.end:
            return self.start <= local_hour < self.end
        return local_hour >= self.start or local_hour < self.end


# Twelve agents, sized to the airline data's hourly volume (4 on shift at night ... 6 at the
# morning peak): 00-04 1, 04-08 4, 08-12 6, 12-16 5, 16-20 5, 20-24 3.
DEFAULT_SHIFTS: tuple[Shift, ...] = (
    Shift("early", 4, 12, 3),
    Shift("day", 8, 16, 3),
    Shift("late", 12, 20, 2),
    Shift("evening", 16, 24, 3),
    Shift("night", 0, 8, 1),
)


@dataclass(frozen=True)
class TeamConfig:
    """How the team is drawn. ``utc_offset_hours``: the team's clock (the airline data's
    timestamps are US Pacific, UTC-8, in February)."""

    shifts: tuple[Shift, ...] = DEFAULT_SHIFTS
    # Concurrent cases, drawn uniformly per agent. With the default shifts the work the airline
    # tweets bring (handling at the mean skill) is about two thirds of the team's slot time
    # over the replay: a team staffed for its average day, overrun on the two storm days
    # (Feb 22-23, twice the volume). At (3, 4, 5) it was 90%, and every router left a backlog
    # of about a day.
    capacity: tuple[int, ...] = (4, 5, 6)
    ability: tuple[float, float] = (0.45, 0.85)  # agent's mean skill, uniform
    topic_spread: float = 0.15  # σ of a topic's skill around the agent's mean
    declared_skill_noise: float = 0.15  # σ of the roster's skill around the hidden one
    declared_csat_share: float = 0.5  # share of (agent, topic) with a measured CSAT
    declared_csat_noise: float = 0.08  # σ of a measured CSAT around the true satisfied share
    utc_offset_hours: float = -8.0


@dataclass(frozen=True)
class SimAgent:
    """One agent: the hidden truth, and what the roster declares about them."""

    id: str
    shift: Shift
    capacity: int
    skill: Mapping[str, float]  # hidden, per true topic (GENERAL included)
    declared_skills: Mapping[str, float]  # per model topic
    declared_csat: Mapping[str, float] = field(default_factory=dict)  # measured topics only


def satisfied_share(skill: float, negative_share: float = 0.63, strong_share: float = 0.8) -> float:
    """P(rating >= 4) for an agent of this skill answering within minutes, on the airline mix
    (63% negative, 80% of them unanimously so): what a measured CSAT converges to."""
    mean = 1 + 4 * skill + 0.5 * (1 - negative_share) - 0.4 * negative_share * strong_share
    return 0.5 * (1 + math.erf((mean - (SATISFIED - 0.5)) / (CSAT_NOISE * math.sqrt(2))))


def draw_team(topics: Sequence[str], seed: int, config: TeamConfig | None = None) -> list[SimAgent]:
    """The agents, ids ``a01``..., drawn from ``seed`` alone."""
    cfg = config or TeamConfig()
    rng = np.random.default_rng([seed, 1])
    agents: list[SimAgent] = []
    shifts = [s for s in cfg.shifts for _ in range(s.agents)]
    for n, shift in enumerate(shifts, start=1):
        ability = rng.uniform(*cfg.ability)
        skill = {
            t: float(np.clip(ability + rng.normal(0, cfg.topic_spread), 0.05, 0.99))
            for t in (GENERAL, *topics)
        }
        declared = {
            t: round(float(np.clip(skill[t] + rng.normal(0, cfg.declared_skill_noise), 0, 1)), 2)
            for t in topics
        }
        measured = rng.random(len(topics)) < cfg.declared_csat_share
        noise = rng.normal(0, cfg.declared_csat_noise, len(topics))
        csat = {
            t: round(float(np.clip(satisfied_share(skill[t]) + e, 0, 1)), 2)
            for t, m, e in zip(topics, measured, noise, strict=True)
            if m
        }
        agents.append(
            SimAgent(
                id=f"a{n:02d}",
                shift=shift,
                capacity=int(rng.choice(cfg.capacity)),
                skill=skill,
                declared_skills=declared,
                declared_csat=csat,
            )
        )
    return agents


@dataclass(frozen=True)
class Luck:
    """Each post's draws, shared by every router: standard normals for handling time, reply
    delay and rating."""

    handling: np.ndarray
    reply: np.ndarray
    rating: np.ndarray

    @classmethod
    def draw(cls, posts: int, seed: int) -> Luck:
        rng = np.random.default_rng([seed, 2])
        z = rng.standard_normal((3, posts))
        return cls(handling=z[0], reply=z[1], rating=z[2])


_LOGNORMAL_MEAN_1 = -0.5 * 0.3**2  # log-normal σ 0.3 with mean 1


def handling_minutes(skill: float, topic: str, z: float) -> float:
    base = BASE_MINUTES.get(topic, DEFAULT_BASE_MINUTES)
    return base * (1.6 - skill) * math.exp(0.3 * z + _LOGNORMAL_MEAN_1)


def reply_minutes(skill: float, z: float) -> float:
    return (1 + 4 * (1 - skill)) * math.exp(0.3 * z + _LOGNORMAL_MEAN_1)


def csat_rating(
    skill: float, negative: bool, strongly_negative: bool, first_response: float, z: float
) -> int:
    latent = (
        1
        + 4 * skill
        + (0.0 if negative else 0.5)
        - (0.4 if strongly_negative else 0.0)
        - 0.5 * min(4.0, first_response / 60)
        + CSAT_NOISE * z
    )
    return int(min(5, max(1, math.floor(latent + 0.5))))


def local_hour(minutes: float, t0_local_hour: float) -> float:
    """The team's local hour of day ``minutes`` after a moment at local hour ``t0_local_hour``."""
    return (t0_local_hour + minutes / 60) % 24


def shift_changes(
    t0_local_hour: float, until_minutes: float, shifts: Sequence[Shift]
) -> list[float]:
    """Every minute offset (from 0 to ``until_minutes``) at which some shift starts or ends."""
    hours = sorted({s.start % 24 for s in shifts} | {s.end % 24 for s in shifts})
    out = []
    day = -60 * 24
    while day <= until_minutes + 60 * 24:
        for h in hours:
            t = day + ((h - t0_local_hour) % 24) * 60
            if 0 <= t <= until_minutes:
                out.append(t)
        day += 60 * 24
    return sorted(set(out))
