"""Routing policy: availability, the multiplicative ranking, escalation, priors, filters."""

from __future__ import annotations

import functools
import itertools
from datetime import UTC, datetime
from typing import Any

import pytest

from serving.priority import load_policy
from serving.routing import RoutingPolicy, rank_agents
from serving.schemas import Agent, AgentMatch, AgentStatus, Priority

TOPIC = "late_flight"
T0 = datetime(2024, 3, 5, 14, 0, tzinfo=UTC)


@functools.cache
def _default() -> RoutingPolicy:
    return load_policy().routing


def _policy(**changes: Any) -> RoutingPolicy:
    return _default().model_validate({**_default().model_dump(), **changes})


def _prio(level: str = "P3", score: int = 35) -> Priority:
    return Priority(score=score, level=level, respond_by=T0, internal_target=T0, reasons=[])


def agent(id: str, skill: float | None = 0.8, **kw: Any) -> Agent:
    skills = kw.pop("skills", {} if skill is None else {TOPIC: skill})
    return Agent(id=id, skills=skills, **kw)


def rank(
    agents: list[Agent],
    *,
    p_negative: float = 0.1,
    priority: Priority | None = None,
    confidence: float = 1.0,
    policy: RoutingPolicy | None = None,
    **kw: Any,
) -> list[AgentMatch]:
    return rank_agents(
        topic=TOPIC,
        topic_confidence=confidence,
        p_negative=p_negative,
        priority=priority or _prio(),
        agents=agents,
        policy=policy or _default(),
        **kw,
    )


def ids(matches: list[AgentMatch]) -> list[str]:
    return [m.id for m in matches]


def expected_score(a: Agent, policy: RoutingPolicy, csat_weight: float | None = None) -> float:
    """The documented formula, written independently of the implementation."""
    w = policy.weights
    skill = a.skills.get(TOPIC, 0.0)
    spare = (a.capacity - a.caseload) / a.capacity
    csat = a.csat.get(TOPIC, policy.csat_prior)
    minutes = a.first_response_minutes.get(TOPIC, policy.speed_prior_minutes)
    speed = policy.speed_reference_minutes / (policy.speed_reference_minutes + minutes)
    cw = w.csat if csat_weight is None else csat_weight
    return skill**w.skill * spare**w.capacity * csat**cw * speed**w.speed


# --------------------------------------------------------------------------- availability


@pytest.mark.parametrize(
    ("status", "caseload", "capacity", "returned"),
    [
        (AgentStatus.online, 0, 10, True),
        (AgentStatus.online, 9, 10, True),
        (AgentStatus.online, 10, 10, False),  # full
        (AgentStatus.online, 14, 10, False),  # over capacity
        (AgentStatus.offline, 0, 10, False),
        (AgentStatus.offline, 0, 1000, False),
        (AgentStatus.away, 0, 10, True),  # penalized, not excluded, by default
        (AgentStatus.away, 1, 1, False),
    ],
)
@pytest.mark.parametrize("escalated", [False, True])
def test_unavailable_agents_are_never_returned(
    status: AgentStatus, caseload: int, capacity: int, returned: bool, escalated: bool
) -> None:
    # The candidate is the best on every measure; the backup is barely qualified.
    star = agent(
        "star", 1.0, status=status, caseload=caseload, capacity=capacity, csat={TOPIC: 1.0}
    )
    backup = agent("backup", 0.1, csat={TOPIC: 0.2})
    kw = {"p_negative": 0.95, "priority": _prio("P1", 90)} if escalated else {}
    assert ("star" in ids(rank([star, backup], **kw))) is returned
    assert (ids(rank([star], **kw)) == ["star"]) is returned


def test_away_agent_is_penalized_by_the_away_factor() -> None:
    online, away = agent("b-online"), agent("a-away", status=AgentStatus.away)
    got = rank([away, online])
    assert ids(got) == ["b-online", "a-away"]
    assert got[1].score == pytest.approx(got[0].score * _default().away_factor, abs=1e-4)
    assert any(r.startswith("away") for r in got[1].reasons)


def test_away_factor_zero_excludes_away_agents() -> None:
    pol = _policy(away_factor=0.0)
    assert rank([agent("a", status=AgentStatus.away)], policy=pol) == []


# --------------------------------------------------------------------------- ordering


def _a(
    id: str, skill: float, caseload: int = 0, csat: float | None = None, frt: float | None = None
):
    return agent(
        id,
        skill,
        caseload=caseload,
        csat={} if csat is None else {TOPIC: csat},
        first_response_minutes={} if frt is None else {TOPIC: frt},
    )


@pytest.mark.parametrize(
    ("case", "roster", "order"),
    [
        ("more skill wins", [_a("a", 0.5), _a("b", 0.9)], ["b", "a"]),
        ("spare capacity counts", [_a("a", 0.9, caseload=9), _a("b", 0.5)], ["b", "a"]),
        ("CSAT counts", [_a("a", 0.8, csat=0.5), _a("b", 0.7, csat=0.95)], ["b", "a"]),
        ("faster is better", [_a("a", 0.8, frt=120), _a("b", 0.8, frt=5)], ["b", "a"]),
        # A sum would prefer a (1.0 + 0.2 > 0.5 + 0.5); the product prefers b (0.2 < 0.25).
        (
            "multiplicative, not additive",
            [_a("a", 1.0, caseload=8), _a("b", 0.5, caseload=5)],
            ["b", "a"],
        ),
        (
            "mixed roster",
            [
                _a("p", 0.9, caseload=2, csat=0.9, frt=10),
                _a("q", 1.0, caseload=7, csat=0.95, frt=8),
                _a("r", 0.6, caseload=0, csat=0.7, frt=40),
                _a("s", 0.9, caseload=1, csat=0.6, frt=90),
            ],
            ["p", "r", "q"],  # q: full-ish (3/10 spare) 0.25 beats s: slow, low CSAT 0.24
        ),
    ],
)
def test_ranking_is_skill_times_capacity_times_performance(
    case: str, roster: list[Agent], order: list[str]
) -> None:
    got = rank(roster)
    assert ids(got) == order, case
    by_id = {a.id: a for a in roster}
    for m in got:
        assert m.score == pytest.approx(expected_score(by_id[m.id], _default()), abs=1e-4)
    assert [m.score for m in got] == sorted((m.score for m in got), reverse=True)


def test_reasons_name_each_factor() -> None:
    a = agent("a", 0.9, caseload=4, csat={TOPIC: 0.94}, first_response_minutes={TOPIC: 12})
    (m,) = rank([a])
    assert m.reasons == [
        "skill late_flight 0.90",
        "spare capacity 6/10",
        "CSAT late_flight 0.94",
        "first response late_flight 12 min",
    ]


# --------------------------------------------------------------------------- new agents


def test_new_agent_without_measurement_is_returned_with_priors() -> None:
    pol = _default()
    new = agent("new", 0.8)
    (m,) = rank([new])
    assert m.id == "new" and m.score > 0
    assert m.score == pytest.approx(expected_score(new, pol), abs=1e-4)
    assert f"CSAT {TOPIC} unmeasured, prior {pol.csat_prior:.2f}" in m.reasons
    assert any("first response" in r and "unmeasured" in r for r in m.reasons)


def test_new_agent_outranks_a_poorly_rated_veteran() -> None:
    veteran = agent("veteran", 0.8, csat={TOPIC: 0.3}, first_response_minutes={TOPIC: 90})
    assert ids(rank([veteran, agent("new", 0.8)])) == ["new", "veteran"]


# --------------------------------------------------------------------------- escalation


STAR = agent("star", 1.0, csat={TOPIC: 0.80})  # most skilled, mediocre CSAT
PRO = agent("pro", 0.7, csat={TOPIC: 0.95})  # less skilled, top-rated


@pytest.mark.parametrize(
    ("p_negative", "level", "score", "escalates"),
    [
        (0.95, "P1", 85, True),
        (0.90, "P2", 55, True),
        (0.80, "P2", 50, True),  # both thresholds inclusive
        (0.79, "P1", 90, False),  # not negative enough
        (0.95, "P3", 40, False),  # not urgent enough
        (0.50, "P1", 95, False),
        (0.95, "P4", 5, False),
    ],
)
def test_escalation_prefers_top_csat_over_skill(
    p_negative: float, level: str, score: int, escalates: bool
) -> None:
    assert ids(rank([STAR, PRO]))[0] == "star"  # normally, skill wins
    got = rank([STAR, PRO], p_negative=p_negative, priority=_prio(level, score))
    if escalates:
        assert ids(got) == ["pro"]  # star is below min_csat and someone qualifies: dropped
        assert f"CSAT {TOPIC} 0.95 (escalation: top-rated)" in got[0].reasons
    else:
        assert ids(got) == ["star", "pro"]


def test_escalation_ranks_qualified_agents_by_csat_first() -> None:
    good, best = agent("good", 1.0, csat={TOPIC: 0.90}), agent("best", 0.7, csat={TOPIC: 0.97})
    assert ids(rank([good, best])) == ["good", "best"]
    got = rank([good, best], p_negative=0.9, priority=_prio("P1", 80))
    assert ids(got) == ["best", "good"]
    pol = _default()
    assert got[0].score == pytest.approx(
        expected_score(best, pol, pol.escalation.csat_weight), abs=1e-4
    )


def test_escalation_drops_unmeasured_agents_when_someone_qualifies() -> None:
    got = rank([agent("new", 1.0), PRO], p_negative=0.9, priority=_prio("P1", 80))
    assert ids(got) == ["pro"]


def test_escalation_keeps_everyone_when_nobody_qualifies() -> None:
    low = agent("low", 1.0, csat={TOPIC: 0.5})
    got = rank([STAR, low, agent("new", 0.9)], p_negative=0.9, priority=_prio("P1", 80))
    # Nobody dropped; CSAT^6 still orders: new's prior 0.8 ties star's 0.80, skill decides.
    assert ids(got) == ["star", "new", "low"]
    assert all(any("escalation: none top-rated" in r for r in m.reasons) for m in got)


@pytest.mark.parametrize(("score", "escalates"), [(60, True), (59, False)])
def test_escalation_by_score_threshold(score: int, escalates: bool) -> None:
    esc = {**_default().escalation.model_dump(), "levels": [], "min_score": 60}
    pol = _policy(escalation=esc)
    got = rank([STAR, PRO], p_negative=0.9, priority=_prio("P2", score), policy=pol)
    assert ids(got) == (["pro"] if escalates else ["star", "pro"])


# --------------------------------------------------------------------------- uncertain topic

SPECIALIST = agent("specialist", skills={TOPIC: 0.9})
GENERALIST = agent(
    "generalist",
    skills={TOPIC: 0.7, "cancelled_flight": 0.7, "lost_luggage": 0.7, "bad_flight": 0.7},
)


@pytest.mark.parametrize(
    ("confidence", "first"),
    [
        (1.0, "specialist"),
        (0.6, "specialist"),  # at the threshold: topic skill only
        (0.5, "specialist"),  # slight blend: 0.79 vs 0.70
        (0.3, "generalist"),  # 0.56 vs 0.70
        (0.0, "generalist"),  # general skill only: 0.225 vs 0.70
    ],
)
def test_uncertain_topic_prefers_the_generalist(confidence: float, first: str) -> None:
    got = rank([SPECIALIST, GENERALIST], confidence=confidence)
    assert ids(got)[0] == first
    if confidence < _default().generalist_below:
        assert any("blended with general" in r for r in got[0].reasons)


def test_blend_is_continuous_at_the_threshold() -> None:
    below = _default().generalist_below
    at = rank([SPECIALIST], confidence=below)[0].score
    just_below = rank([SPECIALIST], confidence=below - 1e-9)[0].score
    assert at == pytest.approx(just_below, abs=1e-6)


def test_zero_skill_is_not_routed_unless_the_topic_is_uncertain() -> None:
    other = agent("other", skills={"lost_luggage": 0.9})
    assert rank([other]) == []
    assert ids(rank([other], confidence=0.1)) == ["other"]


# --------------------------------------------------------------------------- top_k, ties, empty


ROSTER = [agent(f"a{i}", 0.3 + 0.1 * i) for i in range(6)]


@pytest.mark.parametrize(
    ("top_k", "policy_top_k", "n"),
    [(None, 3, 3), (1, 3, 1), (5, 3, 5), (None, 10, 6), (None, 1, 1)],
)
def test_top_k(top_k: int | None, policy_top_k: int, n: int) -> None:
    got = rank(ROSTER, top_k=top_k, policy=_policy(top_k=policy_top_k))
    assert len(got) == n
    assert ids(got) == [f"a{i}" for i in range(5, 5 - n, -1)]  # best skill first


@pytest.mark.parametrize("order", list(itertools.permutations(["c", "a", "b"])))
def test_ties_are_broken_by_id(order: tuple[str, ...]) -> None:
    got = rank([agent(i, 0.5, caseload=2) for i in order])
    assert ids(got) == ["a", "b", "c"]
    assert len({m.score for m in got}) == 1


@pytest.mark.parametrize(
    ("roster", "kw"),
    [
        ([], {}),
        ([agent("off", status=AgentStatus.offline), agent("full", caseload=10)], {}),
        ([agent("none", None)], {}),
        ([agent("en", languages=["en"])], {"language": "fr"}),
        ([agent("ops", work_group="ops")], {"work_group": "vip"}),
    ],
)
def test_nobody_qualifies(roster: list[Agent], kw: dict[str, Any]) -> None:
    assert rank(roster, **kw) == []


@pytest.mark.parametrize(
    ("language", "expected"),
    [
        (None, ["en", "fr", "multi"]),
        ("fr", ["fr", "multi"]),
        ("FR-ca", ["fr", "multi"]),
        ("en-GB", ["en", "multi"]),
    ],
)
def test_language_filter(language: str | None, expected: list[str]) -> None:
    roster = [
        agent("en", languages=["en"]),
        agent("fr", languages=["fr-CA"]),
        agent("multi", languages=["en", "fr"]),
    ]
    assert sorted(ids(rank(roster, language=language))) == expected


def test_work_group_filter() -> None:
    roster = [agent("a", work_group="vip"), agent("b"), agent("c", work_group="vip")]
    assert ids(rank(roster, work_group="vip")) == ["a", "c"]


# --------------------------------------------------------------------------- inputs, purity


@pytest.mark.parametrize(
    "kw",
    [{"confidence": 1.5}, {"confidence": float("nan")}, {"p_negative": -0.1}, {"top_k": 0}],
)
def test_invalid_inputs_raise(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        rank(ROSTER, **kw)


def test_deterministic_and_independent_of_roster_order() -> None:
    roster = [
        _a("p", 0.9, caseload=2, csat=0.9, frt=10),
        _a("q", 0.9, caseload=2, csat=0.9, frt=10),
        _a("r", 0.6, caseload=0, csat=0.7, frt=40),
    ]
    first = rank(roster)
    assert rank(list(reversed(roster))) == first == rank(roster)


def test_a_compiled_roster_reused_across_posts_ranks_each_as_rank_agents_does():
    """Scoring a request compiles the roster once and ranks every post against it; the
    per-topic and per-filter arrays it keeps must not carry one post's answer into the next."""
    from serving.routing import Roster

    agents = [
        agent("a", skills={TOPIC: 0.9, "bad_flight": 0.2}, csat={TOPIC: 0.95}, work_group="vip"),
        agent("b", skills={TOPIC: 0.5, "lost_luggage": 0.9}, languages=["fr"]),
        agent("c", skills={"lost_luggage": 0.7}, status=AgentStatus.away, caseload=3),
        agent("d", skills={TOPIC: 0.6}, first_response_minutes={TOPIC: 5.0}, capacity=2),
        agent("e", skills={TOPIC: 1.0}, status=AgentStatus.offline),
    ]
    posts = [
        {"topic": TOPIC, "topic_confidence": 0.95, "p_negative": 0.1, "priority": _prio()},
        {"topic": "lost_luggage", "topic_confidence": 0.3, "p_negative": 0.2, "priority": _prio()},
        {"topic": TOPIC, "topic_confidence": 0.9, "p_negative": 0.95, "priority": _prio("P1", 90)},
        {"topic": "unseen_topic", "topic_confidence": 0.2, "p_negative": 0.5, "priority": _prio()},
        {
            "topic": TOPIC,
            "topic_confidence": 0.9,
            "p_negative": 0.1,
            "priority": _prio(),
            "language": "fr",
        },
        {
            "topic": TOPIC,
            "topic_confidence": 0.9,
            "p_negative": 0.1,
            "priority": _prio(),
            "work_group": "vip",
        },
        {
            "topic": TOPIC,
            "topic_confidence": 0.95,
            "p_negative": 0.1,
            "priority": _prio(),
            "top_k": 1,
        },
    ]
    roster = Roster(agents, _default())
    answers = [roster.rank(**post) for post in posts]
    assert answers == [rank_agents(agents=agents, policy=_default(), **post) for post in posts]
    assert len({tuple(ids(a)) for a in answers}) > 3, "the posts are routed differently"


def test_over_full_agents_with_a_fractional_capacity_weight_raise_no_warning():
    import warnings

    pol = _policy(weights={**_default().weights.model_dump(), "capacity": 0.5})
    team = [agent("over", caseload=12, capacity=10), agent("ok", caseload=1)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ids(rank(team, policy=pol)) == ["ok"]


def test_the_compiled_roster_is_kept_for_one_snapshot_and_policy_only():
    from starlette.datastructures import State

    from serving.routers.score import compiled_roster

    state, snapshot = State(), (agent("a"), agent("b"))
    first = compiled_roster(state, snapshot, _default())
    assert compiled_roster(state, snapshot, _default()) is first
    assert compiled_roster(state, (agent("a"),), _default()) is not first, "a new snapshot"
    other = _policy(away_factor=0.0)
    assert compiled_roster(state, state.compiled_roster.source, other).policy is other
