"""The replay's simulator (serving/evaluation/team.py, traffic.py, replay.py): a seeded team
and seeded luck, shifts, the queue's mechanics (capacity, waiting for a shift, the order each
router serves), the KPIs, and the traffic built from triage results. Synthetic posts only (a
few hundred at most): no model, no data files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from serving.dispatch import Case
from serving.evaluation import replay, team, traffic
from serving.evaluation.replay import Caretriage, LeastLoaded, RoundRobin, SkillsOnly, simulate
from serving.evaluation.team import GENERAL, Luck, Shift, SimAgent
from serving.evaluation.traffic import ReplayPost
from serving.priority import load_policy
from serving.schemas import Priority

TOPICS = ["lost_luggage", "late_flight", "cancelled_flight"]
T0 = datetime(2015, 2, 17, 8, 0, tzinfo=UTC)
ALL_DAY = Shift("all", 0, 24, 1)


def _priority(level: str = "P3", score: int = 40) -> Priority:
    return Priority(score=score, level=level, respond_by=T0, internal_target=T0, reasons=[])


def _post(
    arrival: float,
    level: str = "P3",
    topic: str = "lost_luggage",
    *,
    due: float | None = None,
    p_negative: float = 0.5,
    true_topic: str | None = None,
) -> ReplayPost:
    return ReplayPost(
        arrival=arrival,
        due=arrival + 60 if due is None else due,
        level=level,
        topic=topic,
        topic_confidence=0.9,
        p_negative=p_negative,
        priority=_priority(level),
        true_topic=true_topic or topic,
        negative=True,
        strongly_negative=False,
    )


def _agent(
    ident: str,
    shift: Shift = ALL_DAY,
    capacity: int = 1,
    skill: float = 0.7,
    declared: dict[str, float] | None = None,
) -> SimAgent:
    return SimAgent(
        id=ident,
        shift=shift,
        capacity=capacity,
        skill={GENERAL: skill, **dict.fromkeys(TOPICS, skill)},
        declared_skills=declared if declared is not None else dict.fromkeys(TOPICS, skill),
    )


def _routing():
    return load_policy().routing


# --------------------------------------------------------------------------- team


def test_team_is_deterministic_given_a_seed() -> None:
    a, b, c = team.draw_team(TOPICS, 3), team.draw_team(TOPICS, 3), team.draw_team(TOPICS, 4)
    assert a == b
    assert a != c
    assert len(a) == 12 and sum(s.agents for s in team.DEFAULT_SHIFTS) == 12
    assert [x.id for x in a] == [f"a{n:02d}" for n in range(1, 13)]
    assert all(x.capacity in team.TeamConfig().capacity for x in a)


def test_declared_skills_are_noisy_versions_of_the_hidden_ones() -> None:
    agents = team.draw_team(TOPICS, 0) + team.draw_team(TOPICS, 1)
    hidden = np.array([a.skill[t] for a in agents for t in TOPICS])
    declared = np.array([a.declared_skills[t] for a in agents for t in TOPICS])
    assert ((hidden >= 0.05) & (hidden <= 0.99)).all()
    assert not np.allclose(hidden, declared)  # noisy ...
    assert np.corrcoef(hidden, declared)[0, 1] > 0.5  # ... but informative
    measured = sum(len(a.declared_csat) for a in agents) / (len(agents) * len(TOPICS))
    assert 0.2 < measured < 0.8  # about half the (agent, topic) pairs have a CSAT
    assert GENERAL not in agents[0].declared_skills  # the roster knows model topics only


def test_luck_is_seeded() -> None:
    a, b = Luck.draw(50, 7), Luck.draw(50, 7)
    assert np.array_equal(a.handling, b.handling) and np.array_equal(a.rating, b.rating)
    assert not np.array_equal(a.handling, Luck.draw(50, 8).handling)


@pytest.mark.parametrize(
    ("shift", "hour", "on"),
    [
        (Shift("day", 8, 16, 1), 8.0, True),
        (Shift("day", 8, 16, 1), 15.99, True),
        (Shift("day", 8, 16, 1), 16.0, False),
        (Shift("day", 8, 16, 1), 7.99, False),
        (Shift("night", 22, 6, 1), 23.0, True),
        (Shift("night", 22, 6, 1), 5.5, True),
        (Shift("night", 22, 6, 1), 6.0, False),
        (Shift("night", 22, 6, 1), 12.0, False),
        (Shift("evening", 16, 24, 1), 23.9, True),
        (Shift("evening", 16, 24, 1), 0.0, False),
    ],
)
def test_shift_hours(shift: Shift, hour: float, on: bool) -> None:
    assert shift.on(hour) is on


def test_shift_changes_in_minutes_from_the_start() -> None:
    # Minute 0 is 07:30 local: the 8-16 shift starts at minute 30, ends at 510, restarts at 1470.
    got = team.shift_changes(7.5, 1500, [Shift("day", 8, 16, 1)])
    assert got == [30.0, 510.0, 1470.0]


@pytest.mark.parametrize(
    ("skill", "negative", "strong", "wait", "z", "rating"),
    [
        (0.9, False, False, 2, 0.0, 5),  # 1 + 3.6 + 0.5 = 5.1
        (0.5, True, False, 0, 0.0, 3),  # 3.0
        (0.5, True, True, 0, 0.0, 3),  # 2.6 rounds to 3
        (0.5, True, True, 240, 0.0, 1),  # 2.6 - 2.0 = 0.6, clipped to 1
        (0.9, True, False, 60, 0.0, 4),  # 4.6 - 0.5 = 4.1
        (0.9, True, False, 60, 1.0, 5),  # + 0.6 noise
    ],
)
def test_csat_rating(skill, negative, strong, wait, z, rating) -> None:
    assert team.csat_rating(skill, negative, strong, wait, z) == rating


def test_better_skill_handles_faster() -> None:
    assert team.handling_minutes(0.9, "lost_luggage", 0.0) < team.handling_minutes(
        0.4, "lost_luggage", 0.0
    )
    assert team.reply_minutes(0.9, 0.0) < team.reply_minutes(0.4, 0.0)


# --------------------------------------------------------------------------- queue


def test_a_post_waits_for_the_next_shift() -> None:
    day = Shift("day", 8, 16, 1)
    posts = [_post(0.0), _post(600.0)]  # 06:00 and 16:00 local
    out = simulate(posts, [_agent("a", day)], RoundRobin, Luck.draw(2, 0), t0_local_hour=6.0)
    assert out.assigned[0] == pytest.approx(120.0)  # at 08:00
    assert out.first_response[0] > 120.0
    assert out.assigned[1] == pytest.approx(1560.0)  # 16:00 is off shift: next day 08:00
    assert out.shift_minutes is not None and out.shift_minutes[0] == pytest.approx(480 + 0.0)


def test_capacity_is_never_exceeded_and_nobody_works_off_shift() -> None:
    shifts = (Shift("early", 4, 12, 1), Shift("late", 12, 20, 1), Shift("night", 20, 4, 1))
    agents = [_agent(f"a{k}", s, capacity=2) for k, s in enumerate(shifts)]
    rng = np.random.default_rng(0)
    arrivals = np.sort(rng.uniform(0, 3 * 24 * 60, 300))
    posts = [_post(float(t), topic=TOPICS[k % 3]) for k, t in enumerate(arrivals)]
    for factory in replay.router_factories(_routing()).values():
        out = simulate(posts, agents, factory, Luck.draw(300, 1), t0_local_hour=0.0)
        assert (out.agent >= 0).all()
        for a, agent in enumerate(agents):
            mine = out.agent == a
            assert all(agent.shift.on(team.local_hour(t, 0.0) + 1e-9) for t in out.assigned[mine])
            events = sorted(
                [(t, 1) for t in out.assigned[mine]] + [(t, -1) for t in out.released[mine]],
                key=lambda e: (e[0], e[1]),  # a release before an assignment at the same time
            )
            load = np.cumsum([d for _, d in events])
            assert load.max() <= agent.capacity


def test_round_robin_takes_turns_and_least_loaded_takes_the_emptiest() -> None:
    agents = [_agent(k, capacity=5) for k in ("a", "b", "c")]
    posts = [_post(float(t)) for t in range(6)]  # faster than anyone finishes
    out = simulate(posts, agents, RoundRobin, Luck.draw(6, 0), t0_local_hour=12.0)
    assert out.agent.tolist() == [0, 1, 2, 0, 1, 2]
    out = simulate(posts, agents, LeastLoaded, Luck.draw(6, 0), t0_local_hour=12.0)
    assert out.agent.tolist() == [0, 1, 2, 0, 1, 2]  # equal loads: the one idle longest
    busy = [_agent("a", capacity=5), _agent("b", capacity=5)]
    posts = [_post(0.0), _post(0.0), _post(0.5)]

    class Pinned(LeastLoaded):  # the first two posts both go to "a"
        def choose(self, i: int, free: list[int]) -> int | None:
            return 0 if i < 2 else super().choose(i, free)

    out = simulate(posts, busy, Pinned, Luck.draw(3, 0), t0_local_hour=12.0)
    assert out.agent.tolist() == [0, 0, 1]


def test_skills_only_picks_the_highest_declared_skill() -> None:
    agents = [
        _agent("a", capacity=5, declared={"lost_luggage": 0.3, "late_flight": 0.9}),
        _agent("b", capacity=5, declared={"lost_luggage": 0.8, "late_flight": 0.2}),
    ]
    posts = [_post(0.0, topic="lost_luggage"), _post(1.0, topic="late_flight")]
    out = simulate(posts, agents, SkillsOnly, Luck.draw(2, 0), t0_local_hour=12.0)
    assert out.agent.tolist() == [1, 0]


def test_baselines_serve_first_come_first_served_and_caretriage_serves_p1_first() -> None:
    # One agent, one slot: the first post occupies it; a P4 and then a P1 queue behind it.
    posts = [_post(0.0, "P4"), _post(1.0, "P4"), _post(2.0, "P1")]
    agents = [_agent("a")]
    luck = Luck.draw(3, 0)
    fifo = simulate(posts, agents, LeastLoaded, luck, t0_local_hour=12.0)
    assert fifo.assigned[1] < fifo.assigned[2]
    policy = _routing()
    ours = simulate(posts, agents, lambda p, s: Caretriage(p, s, policy), luck, t0_local_hour=12.0)
    assert ours.assigned[2] < ours.assigned[1]
    assert ours.assigned[2] == pytest.approx(ours.released[0])  # next as the slot frees
    ablation = simulate(
        posts, agents, lambda p, s: Caretriage(p, s, policy, fifo=True), luck, t0_local_hour=12.0
    )
    assert ablation.assigned[1] < ablation.assigned[2]


def test_caretriage_ranks_with_the_roster_and_falls_back_when_nobody_fits() -> None:
    policy = _routing()
    agents = [
        _agent("a", capacity=3, declared={"lost_luggage": 0.2}),
        _agent("b", capacity=3, declared={"lost_luggage": 0.9}),
    ]
    out = simulate(
        [_post(0.0)],
        agents,
        lambda p, s: Caretriage(p, s, policy),
        Luck.draw(1, 0),
        t0_local_hour=12.0,
    )
    assert out.agent.tolist() == [1]
    # Nobody declares the topic: Roster.rank returns no one, a lead assigns the least loaded.
    nobody = [_agent("a", declared={}), _agent("b", declared={})]
    out = simulate(
        [_post(0.0, topic="late_flight")],
        nobody,
        lambda p, s: Caretriage(p, s, policy),
        Luck.draw(1, 0),
        t0_local_hour=12.0,
    )
    assert out.agent.tolist() == [0] and out.fallbacks == 1


def test_caretriage_learns_who_satisfies_customers_from_closed_cases() -> None:
    # Declared alike; hidden, "a" (first by id, so ties go to it) is poor and "b" excellent.
    agents = [_agent("a", capacity=3, skill=0.3), _agent("b", capacity=3, skill=0.95)]
    agents = [
        SimAgent(
            id=x.id,
            shift=x.shift,
            capacity=x.capacity,
            skill=x.skill,
            declared_skills=dict.fromkeys(TOPICS, 0.7),
        )
        for x in agents
    ]
    posts = [_post(30.0 * k) for k in range(200)]  # both agents free for every post
    policy, luck = _routing(), Luck.draw(200, 3)
    static = simulate(posts, agents, lambda p, s: Caretriage(p, s, policy), luck, t0_local_hour=0.0)
    # Nothing learned: "a" wins the tie unless still busy with the last case.
    assert (static.agent[100:] == 1).mean() < 0.3
    learned = simulate(
        posts,
        agents,
        lambda p, s: Caretriage(p, s, policy, replay.Learning.server_defaults()),
        luck,
        t0_local_hour=0.0,
    )
    # Outcomes moved the work to "b", up to fairness: an agent under the 30% max share of the
    # last 200 assignments ("a") goes first, so "b" keeps about 70%.
    assert (learned.agent[100:] == 1).mean() > 0.6
    assert learned.csat[100:].mean() > static.csat[100:].mean() + 1


def test_replay_is_deterministic_and_every_router_answers_every_post() -> None:
    agents = team.draw_team(TOPICS, 5)
    rng = np.random.default_rng(5)
    arrivals = np.sort(rng.uniform(0, 2 * 24 * 60, 400))
    levels = rng.choice(["P1", "P2", "P3", "P4"], 400)
    posts = [
        _post(float(t), str(lv), TOPICS[k % 3], p_negative=float(rng.random()))
        for k, (t, lv) in enumerate(zip(arrivals, levels, strict=True))
    ]
    luck = Luck.draw(400, 5)
    routers = replay.router_factories(_routing())
    first = replay.compare(posts, agents, routers, luck, t0_local_hour=3.0)
    again = replay.compare(posts, agents, routers, luck, t0_local_hour=3.0)
    assert first == again
    assert set(first) == set(replay.ROUTERS)
    for m in first.values():
        assert m["answered"] == 400
        assert 0 <= m["sla_breach_rate"] <= 1 and 1 <= m["csat_mean"] <= 5
        assert sum(m["workload"]["cases_per_agent"]) == 400


# --------------------------------------------------------------------------- metrics


def test_metrics_by_hand() -> None:
    posts = [
        _post(0.0, "P1", due=15.0),
        _post(0.0, "P1", due=15.0),
        _post(10.0, "P4", due=70.0),
        _post(20.0, "P4", due=80.0),
    ]
    out = replay.Outcome(
        agent=np.array([0, 1, 0, -1]),
        assigned=np.array([0.0, 10.0, 30.0, np.nan]),
        first_response=np.array([5.0, 20.0, 30.0, np.nan]),  # the second P1 breaches
        handling=np.zeros(4),
        released=np.zeros(4),
        csat=np.array([5, 3, 4, 0]),
        shift_minutes=np.array([120.0, 60.0]),
    )
    m = replay.metrics(posts, out)
    assert m["answered"] == 3
    assert m["sla_breach_rate"] == 0.5  # the late P1, and the post never answered
    assert m["sla_breach_rate_p1"] == 0.5
    assert m["sla_breach_by_level"]["P4"] == {"posts": 2, "breach_rate": 0.5}
    assert m["first_response_p50_min"] == 20.0
    assert m["csat_mean"] == 4.0 and m["csat_satisfied_share"] == pytest.approx(2 / 3)
    assert m["workload"]["cases_per_agent"] == [2, 1]
    # 1 case an hour each: an even spread.
    assert m["workload"]["spread_cv"] == 0.0


# --------------------------------------------------------------------------- traffic


def test_customer_context_is_seeded_and_counts_recent_posts() -> None:
    t = [T0, T0 + timedelta(hours=1), T0 + timedelta(hours=30), T0]
    authors = ["kim", "kim", "kim", "lee"]
    a = traffic.customer_context(authors, t, [0, 0, 2, 0], seed=1)
    assert a == traffic.customer_context(authors, t, [0, 0, 2, 0], seed=1)
    assert [c.open_tickets for c in a] == [0, 1, 0, 0]  # 30 h later the window has passed
    assert a[0].lifetime_value == a[1].lifetime_value  # one customer, one value
    assert a[2].followers == a[0].followers + 2 * traffic.RETWEET_AUDIENCE
    other = traffic.customer_context(authors, t, [0, 0, 2, 0], seed=2)
    assert other[0].lifetime_value != a[0].lifetime_value


@pytest.mark.parametrize(
    ("sentiment", "reason", "topic"),
    [
        ("negative", "Lost Luggage", "lost_luggage"),
        ("negative", "longlines", GENERAL),  # not in TOPICS here
        ("negative", "Can't Tell", GENERAL),
        ("positive", "", GENERAL),
        ("negative", "Late Flight", "late_flight"),
    ],
)
def test_airline_true_topic(sentiment: str, reason: str, topic: str) -> None:
    assert traffic.airline_true_topic(sentiment, reason, TOPICS) == topic
    assert traffic.airline_true_topic("negative", "longlines", ["long_lines"]) == "long_lines"


def _case(ident: str, level: str, respond_by: datetime) -> Case:
    return Case(
        post_id=ident,
        topic="lost_luggage",
        topic_confidence=0.8,
        p_negative=0.7,
        priority=Priority(
            score=80, level=level, respond_by=respond_by, internal_target=respond_by, reasons=[]
        ),
        high_value=True,
    )


def test_replay_posts_in_arrival_order_with_minutes_from_the_first() -> None:
    created = [T0 + timedelta(minutes=30), T0]
    cases = [
        _case("late", "P1", created[0] + timedelta(minutes=15)),
        _case("early", "P3", created[1] + timedelta(minutes=60)),
    ]
    posts, t0 = traffic.replay_posts(
        created, cases, ["lost_luggage", GENERAL], [True, False], [True, False]
    )
    assert t0 == T0
    assert [(p.arrival, p.due, p.level) for p in posts] == [(0.0, 60.0, "P3"), (30.0, 45.0, "P1")]
    assert posts[1].p_negative == pytest.approx(0.7) and posts[1].strongly_negative
    assert posts[1].high_value and not posts[1].influential
    assert posts[0].true_topic == GENERAL


# --------------------------------------------------------------------------- data glue


def test_airline_timestamps_survive_shifted_columns() -> None:
    from benchmarks import care_data

    # tweet_created of this tweet: 2015-02-17 01:54:53 -0800; its id encodes the same second.
    assert care_data.snowflake_time(567623209026334720).replace(microsecond=0) == datetime(
        2015, 2, 17, 9, 54, 53, tzinfo=UTC
    )
    head = ["tweet_id", "text", "tweet_coord", "tweet_created", "tweet_location"]
    ok = ["1", "hi", "", "2015-02-17 01:54:53 -0800", "LA"]
    # The text was cut at its ';' and pushed the timestamp one column right.
    shifted = ["1", "a &amp", " b", "", "2015-02-17 09:25:05 -0800, Ohio"]
    lost = ["567623209026334720", "x &lt", "&lt", "&lt", "&lt"]
    col_created, col_text = head.index("tweet_created"), head.index("text")
    assert care_data._when(ok, col_created, col_text, "1") == (
        datetime(2015, 2, 17, 9, 54, 53, tzinfo=UTC),
        "tweet_created",
    )
    assert care_data._when(shifted, col_created, col_text, "1") == (
        datetime(2015, 2, 17, 17, 25, 5, tzinfo=UTC),
        "shifted_column",
    )
    when, source = care_data._when(lost, col_created, col_text, lost[0])
    assert source == "tweet_id" and when.date().isoformat() == "2015-02-17"
