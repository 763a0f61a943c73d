"""Learned agent performance (serving/performance.py) and the choice of an agent built on it
(serving/dispatch.py): pure functions, tested table-driven."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from serving.dispatch import Case, RouterConfig, choose_agent, routing_policy
from serving.performance import (
    Estimates,
    Priors,
    Tally,
    apply_estimates,
    posterior_minutes,
    posterior_share,
    summary,
    tallies_from,
    tally_of,
)
from serving.priority import load_policy
from serving.schemas import Agent, AgentStatus, Priority

ROUTING = load_policy().routing
PRIORS = Priors(csat=0.8, resolution=0.8, response_minutes=30.0, strength=5.0)
T = "lost_luggage"


def rated(agent: str, n: int, satisfied: int, topic: str = T) -> Tally:
    return Tally(agent, topic, rated=n, satisfied=satisfied)


def timed(agent: str, minutes: list[float], topic: str = T) -> Tally:
    return Tally(agent, topic, timed=len(minutes), log_minutes=sum(map(math.log1p, minutes)))


# -- the posteriors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("successes", "n", "prior", "k", "expected"),
    [
        (0, 0, 0.8, 5, 0.8),  # no cases: the prior
        (2, 2, 0.6, 5, (3 + 2) / 7),  # two good cases move it a little
        (0, 10, 0.9, 0, 0.0),  # k = 0 trusts the cases entirely
        (180, 200, 0.5, 5, (2.5 + 180) / 205),  # many cases: close to their rate (0.9)
        (1, 1, 0.0, 1, 0.5),
    ],
)
def test_posterior_share(successes, n, prior, k, expected):
    assert posterior_share(successes, n, prior, k) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("minutes", "prior", "k", "expected"),
    [
        ([], 30.0, 5, 30.0),  # no cases: the prior
        ([10.0] * 10, 10.0, 5, 10.0),  # cases agreeing with the prior leave it
        ([0.0, 99.0], 30.0, 0, 9.0),  # geometric mean of 1+m: sqrt(1 * 100) - 1
        ([5.0] * 1000, 60.0, 5, 5.0),  # many fast cases: fast, whatever the prior
    ],
)
def test_posterior_minutes(minutes, prior, k, expected):
    got = posterior_minutes(sum(map(math.log1p, minutes)), len(minutes), prior, k)
    assert got == pytest.approx(expected, rel=0.02)


def test_tally_of_one_outcome_and_sums():
    t = tally_of("a", T, csat=4, resolved=False, first_response_minutes=9.0)
    assert (t.rated, t.satisfied, t.resolution_known, t.resolved, t.timed) == (1, 1, 1, 0, 1)
    assert t.log_minutes == pytest.approx(math.log(10))
    assert tally_of("a", T, csat=3).satisfied == 0  # 3 of 5 is not satisfied
    both = t + tally_of("a", T, csat=5, resolved=True)
    assert (both.rated, both.satisfied, both.resolved, both.timed) == (2, 2, 1, 1)
    assert both - t == tally_of("a", T, csat=5, resolved=True)
    rows = [{"agent_id": "a", "topic": T, "csat": 2, "resolved": None}]
    assert tallies_from(rows)[0].rated == 1 and tallies_from(rows)[0].resolution_known == 0


def test_priors_refuse_nonsense():
    with pytest.raises(ValueError, match="csat"):
        Priors(csat=1.5)
    with pytest.raises(ValueError, match="strength"):
        Priors(strength=-1)


# -- estimates: shrinkage toward the declared figure or the team --------------------------------

TEAM_RATE = (5 * 0.8 + 10) / (5 + 20)  # the rest of team "a": 20 rated, 10 satisfied


@pytest.mark.parametrize(
    ("name", "agent", "tallies", "csat", "source", "known"),
    [
        ("declared, no feedback", Agent(id="a", csat={T: 0.95}), [], 0.95, "declared", True),
        ("nothing known: the default", Agent(id="a"), [], 0.8, "default", False),
        (
            "no own cases: the team",
            Agent(id="a"),
            [rated("mate", 20, 10)],
            TEAM_RATE,
            "team",
            True,
        ),
        (
            "two own cases, shrunk toward the team",
            Agent(id="a"),
            [rated("mate", 20, 10), rated("a", 2, 2)],
            (5 * TEAM_RATE + 2) / 7,
            "team",
            True,
        ),
        (
            "own cases never count twice (leave one out)",
            Agent(id="a"),
            [rated("a", 10, 10)],
            (5 * 0.8 + 10) / 15,
            "default",
            True,
        ),
        (
            "another work group's cases are not the team",
            Agent(id="a", work_group="other"),
            [rated("mate", 20, 10)],
            0.8,
            "default",
            False,
        ),
        (
            "declared figure beats the team as prior",
            Agent(id="a", csat={T: 0.9}),
            [rated("mate", 20, 10), rated("a", 5, 0)],
            (5 * 0.9 + 0) / 10,
            "declared",
            True,
        ),
        (
            "many own cases: close to their own rate",
            Agent(id="a", csat={T: 0.99}),
            [rated("a", 500, 250)],
            (5 * 0.99 + 250) / 505,
            "declared",
            True,
        ),
        (
            "other topics do not count",
            Agent(id="a"),
            [rated("mate", 20, 0, topic="late_flight")],
            0.8,
            "default",
            False,
        ),
    ],
)
def test_csat_estimate(name, agent, tallies, csat, source, known):
    roster = [agent, Agent(id="mate")]
    est = Estimates(tallies, roster, PRIORS).of(agent, T)
    assert est.csat == pytest.approx(csat), name
    assert est.csat_prior_source == source, name
    assert est.csat_known is known, name


def test_resolution_and_minutes_estimates():
    roster = [Agent(id="a", first_response_minutes={T: 12.0}), Agent(id="mate"), Agent(id="b")]
    tallies = [
        Tally("mate", T, resolution_known=10, resolved=2),
        timed("mate", [100.0] * 20),
        timed("a", [12.0] * 3),
    ]
    e = Estimates(tallies, roster, PRIORS)
    a, b = e.of(roster[0], T), e.of(roster[2], T)
    # Resolution: no own cases, so the team's (shrunk toward the default 0.8).
    assert a.resolution == pytest.approx((5 * 0.8 + 2) / 15)
    # Minutes: the declared 12 is the prior, and three 12-minute answers keep it there.
    assert a.response_minutes == pytest.approx(12.0) and a.minutes_prior_source == "declared"
    # b declares nothing: the team's slow answers (shrunk toward 30) are its prior.
    assert 60 < b.response_minutes < 100 and b.minutes_prior_source == "team"


def test_apply_estimates_leaves_unmeasured_agents_unmeasured():
    roster = [Agent(id="a", csat={"x": 0.5}), Agent(id="mate"), Agent(id="far", work_group="g")]
    learned = apply_estimates(roster, Estimates([rated("mate", 4, 4)], roster, PRIORS), [T])
    by = {a.id: a for a in learned}
    assert by["a"].csat[T] == pytest.approx((5 * 0.8 + 4) / 9)  # the team's
    assert by["a"].csat["x"] == 0.5  # other topics untouched
    assert T not in by["far"].csat  # nothing known about them: the router's prior applies
    assert roster[0].csat == {"x": 0.5}  # the input is not changed


def test_summary_lists_skills_declared_and_feedback_topics():
    roster = [Agent(id="a", skills={"late_flight": 0.5}, csat={T: 0.9})]
    rows = summary(roster, Estimates([rated("a", 3, 3, topic="bad_flight")], roster, PRIORS))
    assert [r["topic"] for r in rows] == ["bad_flight", "late_flight", T]
    assert rows[0]["rated_cases"] == 3 and rows[2]["csat_prior_source"] == "declared"


# -- choosing the agent -----------------------------------------------------------------------


def prio(level: str = "P3", score: int = 40) -> Priority:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return Priority(score=score, level=level, respond_by=at, internal_target=at, reasons=[])


def case(**kw) -> Case:
    base = dict(post_id="p", topic=T, topic_confidence=0.9, p_negative=0.2, priority=prio())
    return Case(**{**base, **kw})


def agent(i: str, **kw) -> Agent:
    return Agent(**{"id": i, "skills": {T: 0.8}, "capacity": 10, **kw})


FAST_BUT_POOR = agent("fast", csat={T: 0.6}, first_response_minutes={T: 2.0})
SLOW_BUT_GOOD = agent("good", csat={T: 0.97}, first_response_minutes={T: 90.0})


def choose(c: Case, agents, tallies=(), recent=None, **cfg):
    est = Estimates(list(tallies), agents, PRIORS)
    return choose_agent(c, agents, est, recent or {}, ROUTING, RouterConfig(**cfg))


@pytest.mark.parametrize(
    ("objective", "expected"),
    [
        ("csat", "good"),
        ("speed", "fast"),
        # The dictionary's mix, CSAT x speed^0.5 with speed = 30 / (30 + minutes):
        # 0.60 x 0.97 = 0.58 for "fast" beats 0.97 x 0.50 = 0.49 for "good".
        ("mix", "fast"),
    ],
)
def test_objective_decides_between_csat_and_speed(objective, expected):
    got = choose(case(), [FAST_BUT_POOR, SLOW_BUT_GOOD], objective=objective)
    assert got.agent_id == expected


def test_feedback_overrides_the_declared_figures():
    agents = [FAST_BUT_POOR, SLOW_BUT_GOOD]
    assert choose(case(), agents, objective="csat").agent_id == "good"
    # 40 rated cases, 4 satisfied: "good" is not good at this after all.
    got = choose(case(), agents, [rated("good", 40, 4)], objective="csat")
    assert got.agent_id == "fast"
    why = " ".join(got.candidates[1].reasons)
    assert "from 40 rated case(s)" in why and "declared 0.97" in why


@pytest.mark.parametrize(
    ("floor", "expected", "nobody"),
    [(0.0, "weak", False), (0.5, "strong", False), (0.95, None, True)],
)
def test_skill_floor(floor, expected, nobody):
    agents = [
        agent("weak", skills={T: 0.3}, csat={T: 0.99}),
        agent("strong", skills={T: 0.5}, csat={T: 0.5}, caseload=5),
    ]
    got = choose(case(), agents, objective="csat", skill_floor=floor)
    assert got.agent_id == expected
    assert (got.why_none is not None) is nobody
    if nobody:
        assert "skill floor 0.95" in got.why_none


def test_full_and_offline_agents_are_never_candidates():
    agents = [
        agent("full", caseload=10, csat={T: 1.0}),
        agent("off", status=AgentStatus.offline, csat={T: 1.0}),
        agent("ok", csat={T: 0.5}),
    ]
    assert [m.id for m in choose(case(), agents).candidates] == ["ok"]
    assert choose(case(), []).why_none == "the roster is empty"


BAND = [
    agent("a1", csat={T: 0.95}, caseload=8),  # the best, but busy
    agent("a2", csat={T: 0.90}, caseload=7),
    agent("a3", csat={T: 0.80}),
    agent("a4", csat={T: 0.70}),
    agent("a5", csat={T: 0.65}),
    agent("a6", csat={T: 0.60}),
    agent("a7", csat={T: 0.55}),
    agent("a8", csat={T: 0.50}),
]


@pytest.mark.parametrize(
    ("name", "kw", "band"),
    [
        ("ordinary customer: no band", dict(p_negative=0.95), None),
        ("high value, mildly negative: no band", dict(p_negative=0.5, high_value=True), None),
        ("high value, strongly negative", dict(p_negative=0.95, high_value=True), {"a1", "a2"}),
        ("influential, strongly negative", dict(p_negative=0.9, influential=True), {"a1", "a2"}),
    ],
)
def test_top_band_for_strongly_negative_posts_from_valuable_customers(name, kw, band):
    got = choose(case(**kw), BAND, top_band=0.25)
    ids = {m.id for m in got.candidates}
    if band is None:
        assert ids == {a.id for a in BAND}, name
        assert got.agent_id not in {"a1", "a2"}, name  # spare capacity wins otherwise
    else:
        assert ids == band, name
        assert got.notes and "top 25% by estimated CSAT" in got.notes[0], name
        assert any("top band" in r for r in got.candidates[0].reasons), name


@pytest.mark.parametrize(
    ("name", "recent", "order"),
    [
        ("too few assignments yet: no fairness", {"x": 9, "y": 1}, ["x", "y", "z"]),
        ("flooded agent goes last", {"x": 40, "y": 30, "z": 30}, ["y", "z", "x"]),
        ("starved agent goes first", {"x": 50, "y": 50}, ["z", "x", "y"]),
        ("fair shares: by score", {"x": 30, "y": 30, "z": 30}, ["x", "y", "z"]),
    ],
)
def test_fairness(name, recent, order):
    agents = [
        agent("x", csat={T: 0.95}),
        agent("y", csat={T: 0.90}),
        agent("z", csat={T: 0.85}),
    ]
    got = choose(case(), agents, recent=recent, max_share=0.35, min_share=0.05)
    assert [m.id for m in got.candidates] == order, name


def test_flooded_agent_still_takes_what_nobody_else_can():
    agents = [agent("x"), agent("y", skills={"other": 1.0})]
    got = choose(case(), agents, recent={"x": 100, "y": 0}, max_share=0.3)
    assert got.agent_id == "x"
    assert "only if no one else" in " ".join(got.candidates[0].reasons)


def test_routing_policy_applies_objective_and_floor():
    assert routing_policy(ROUTING, RouterConfig()) is ROUTING
    p = routing_policy(ROUTING, RouterConfig(objective="speed", skill_floor=0.4))
    assert p.weights.csat == 0 and p.weights.speed == ROUTING.weights.speed
    assert 0.39 < p.min_skill < 0.4
    assert ROUTING.weights.csat > 0  # the dictionary's policy is not changed


def test_router_config_refuses_nonsense():
    with pytest.raises(ValueError, match="min_share"):
        RouterConfig(min_share=0.5, max_share=0.2)
    with pytest.raises(ValueError, match="top_band"):
        RouterConfig(top_band=0)


def test_settings_refuse_a_minimum_share_above_the_maximum():
    from serving.settings import Settings, SettingsError

    key = "k" * 20
    with pytest.raises(SettingsError, match="ROUTING_MIN_SHARE"):
        Settings(api_keys=[key], routing_min_share=0.5, routing_max_share=0.2)
    got = RouterConfig.from_settings(Settings(api_keys=[key], routing_objective="speed"))
    assert got.objective == "speed" and got.max_share == 0.3
