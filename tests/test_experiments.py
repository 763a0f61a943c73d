"""Routing experiments: the statistics against scipy and published examples, arm assignment
(deterministic, the configured share, time periods), each arm's routing in the assignment
store, and the admin and report API (422 naming the field, arms on assignments, the
report's per-arm figures and verdict)."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from fastapi.testclient import TestClient
from scipy import stats

from serving import experiments as ex
from serving.app import create_app
from serving.assignments import AssignmentStore
from serving.casework_schemas import FeedbackIn
from serving.dispatch import Case, RouterConfig
from serving.evaluation import ab, replay, team
from serving.evaluation.replay import Caretriage, LeastLoaded, simulate
from serving.evaluation.team import Luck
from serving.experiment_store import ArmOutcomes, ExperimentStore, StoredExperiment, build_report
from serving.priority import load_policy
from serving.schemas import Agent, AgentStatus, Post
from serving.settings import Settings
from serving.store import Store
from tests.conftest import PG_URL
from tests.test_assign import scored
from tests.test_replay import TOPICS, _agent, _post

KEY = "test-key-0123456789abcdef"
ADMIN_KEY = "admin-key-0123456789abcdef-xyz"
AUTH = {"Authorization": f"Bearer {KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
ROUTING = load_policy().routing
NOW = datetime.now(UTC).replace(microsecond=0)
T = "lost_luggage"


def config(**kw) -> ex.ExperimentConfig:
    body = {"name": "trial", "a": {"strategy": "skills-only"}, "b": {}, **kw}
    return ex.ExperimentConfig.model_validate(body)


# -- distributions, against scipy -------------------------------------------------------------


@pytest.mark.parametrize("df", [1, 2.5, 4, 7.3, 30, 312.7, 5e4])
@pytest.mark.parametrize("p", [0.5, 0.6, 0.9, 0.975, 0.995, 0.025])
def test_t_quantile_matches_scipy(df, p):
    assert ex.t_ppf(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("n", [2, 9, 19, 100, 1001, 100_000])
def test_binomial_half_cdf_matches_scipy(n):
    for k in sorted({0, 1, n // 2 - int(n**0.5), n // 2, n - 1}):
        # lgamma of large n loses a few digits: far more than a z quantile needs.
        want = stats.binom.cdf(k, n, 0.5)
        assert ex.binom_cdf_half(k, n) == pytest.approx(want, rel=1e-9, abs=1e-12)


# -- intervals -------------------------------------------------------------------------------


def _sample(seed: int, n: int, mu: float, sd: float) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(mu, sd) for _ in range(n)]


@pytest.mark.parametrize(
    ("a", "b", "level"),
    [
        ([1, 2, 3, 4, 5], [2, 4, 4, 5, 5, 5], 0.95),
        ([5, 5, 4, 3], [1, 2, 1, 1, 2, 3, 1], 0.9),
        (_sample(1, 30, 3.0, 1.0), _sample(2, 45, 3.5, 2.0), 0.95),
        (_sample(3, 500, 40.0, 25.0), _sample(4, 20, 30.0, 5.0), 0.99),
    ],
)
def test_welch_interval_matches_scipy(a, b, level):
    got = ex.welch(a, b, level)
    want = stats.ttest_ind(b, a, equal_var=False).confidence_interval(level)
    assert got is not None
    assert (got.low, got.high) == pytest.approx((want.low, want.high), rel=1e-9)
    assert got.difference == pytest.approx(sum(b) / len(b) - sum(a) / len(a))


@pytest.mark.parametrize(("a", "b"), [([3], [1, 2]), ([4, 4, 4], [4, 4])])
def test_welch_says_nothing_without_two_values_or_any_spread(a, b):
    assert ex.welch(a, b) is None


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (10, 10), (56, 70), (1, 1000)])
@pytest.mark.parametrize("level", [0.9, 0.95])
def test_wilson_interval_matches_scipy(k, n, level):
    want = stats.binomtest(k, n).proportion_ci(level, method="wilson")
    assert ex.wilson(k, n, level) == pytest.approx((want.low, want.high), abs=1e-12)


@pytest.mark.parametrize(
    ("a", "b", "want"),
    [
        # Newcombe (1998), Statistics in Medicine 17:873, Table II, method 10 (B − A).
        ((48, 80), (56, 70), (0.0524, 0.3339)),
        ((3, 10), (9, 10), (0.1705, 0.8090)),
        ((0, 29), (5, 56), (-0.0381, 0.1926)),
        ((0, 20), (0, 10), (-0.1611, 0.2775)),
    ],
)
def test_difference_of_proportions_matches_newcombe(a, b, want):
    got = ex.proportions(*a, *b)
    assert got is not None
    assert (got.low, got.high) == pytest.approx(want, abs=1e-4)


Y1 = [32.1, 39.8, 26.3, 35.0, 43.1, 27.0, 40.9, 37.4, 34.0, 29.2]
Y2 = [36.8, 44.0, 47.1, 42.7, 49.0, 39.6, 46.2, 31.6, 33.1, 48.4]


@pytest.mark.parametrize(
    ("a", "b", "want"),
    [
        # statpsych's ci.median2(.05, y1, y2) examples: median(y1) − median(y2), so B = y1.
        (Y2, Y1, (-8.85, 4.494993, -17.66002, -0.0399751)),
        (
            [36, 44, 47, 42, 49, 39, 46, 31, 33, 48],
            [32, 39, 26, 35, 43, 27, 40, 37, 34, 29],
            (-8.5, 4.316291, -16.95977, -0.04022524),
        ),
    ],
)
def test_difference_of_medians_matches_bonett_price(a, b, want):
    got = ex.medians(a, b)
    assert got is not None
    se = (ex.median_se(a) ** 2 + ex.median_se(b) ** 2) ** 0.5
    assert (got.difference, se, got.low, got.high) == pytest.approx(want, abs=1e-5)


def test_median_standard_error_matches_statpsych():
    y = [30.2, 20.4, 15.1, 10.2, 10.5, 60.8, 20.8, 25.0, 20.7, 30.9, 10.8, 5.1]
    y += [50.9, 40.0, 20.9, 10.8, 0, 20.5, 50.8]
    assert ex.median_se(y) == pytest.approx(4.292277, abs=1e-6)  # ci.median(.05, y)


def test_difference_of_medians_agrees_with_a_bootstrap_on_skewed_data():
    rng = random.Random(7)
    a = [rng.expovariate(1 / 30) for _ in range(1500)]
    b = [rng.expovariate(1 / 24) for _ in range(1200)]
    got = ex.medians(a, b)
    boot = stats.bootstrap(
        (b, a),
        lambda x, y, axis: (
            stats.scoreatpercentile(x, 50, axis=axis) - stats.scoreatpercentile(y, 50, axis=axis)
        ),
        n_resamples=2000,
        method="percentile",
        rng=1,
    ).confidence_interval
    assert got is not None
    width = boot.high - boot.low
    assert got.high - got.low == pytest.approx(width, rel=0.15)
    assert got.low == pytest.approx(boot.low, abs=0.15 * width)
    assert got.high == pytest.approx(boot.high, abs=0.15 * width)


# -- verdicts --------------------------------------------------------------------------------


def _iv(a: float, b: float, low: float, high: float) -> ex.Interval:
    return ex.Interval(a, b, 50, 50, low, high, 0.95, "test")


CSAT, MEDIAN_FRT, _, RESOLUTION, BREACH = ex.KPIS


@pytest.mark.parametrize(
    ("kpi", "got", "want"),
    [
        (CSAT, _iv(4.0, 4.21, 0.05, 0.37), "B is better on CSAT by 0.21 [0.05, 0.37]"),
        (CSAT, _iv(4.21, 4.0, -0.37, -0.05), "B is worse on CSAT by 0.21 [0.05, 0.37]"),
        (
            MEDIAN_FRT,
            _iv(20.0, 16.8, -5.1, -1.3),
            "B is better on median first response by 3.20 min [1.30, 5.10]",
        ),
        (
            BREACH,
            _iv(0.10, 0.15, 0.02, 0.08),
            "B is worse on SLA breach rate by 5.00 pp [2.00, 8.00]",
        ),
        (
            RESOLUTION,
            _iv(0.8, 0.81, -0.02, 0.04),
            "no significant difference on resolution rate (B \u2212 A +1.00 pp [\u22122.00, 4.00])",
        ),
        (CSAT, None, "not enough data on CSAT (A 1, B 0;"),
    ],
)
def test_verdicts_read_in_plain_words(kpi, got, want):
    assert ex.verdict(kpi, got, 1, 0).startswith(want)


def test_the_headline_lists_significant_kpis_or_says_there_is_no_difference():
    sig = _iv(4.0, 4.21, 0.05, 0.37)
    flat = _iv(4.0, 4.01, -0.1, 0.12)
    assert ex.overall({"csat": (sig, "B is better"), "x": (flat, "no")}) == "B is better"
    assert ex.overall({"csat": (flat, "no"), "x": (None, "n/a")}) == "no significant difference"
    assert ex.overall({"csat": (None, "n/a")}) == "not enough data yet"


# -- arms ------------------------------------------------------------------------------------


def test_share_split_is_deterministic_seeded_and_near_its_share():
    cfg = config(share_b=0.3)
    ids = [f"post-{i}" for i in range(20_000)]
    arms = [cfg.arm_of(i, NOW) for i in ids]
    assert arms == [config(share_b=0.3).arm_of(i, NOW + timedelta(days=3)) for i in ids]
    share = arms.count("B") / len(arms)
    assert share == pytest.approx(0.3, abs=0.015)  # binomial sd 0.0032
    # A fixed value: the hash is the same on every machine and Python (no salted hash()).
    assert ex.unit_hash("trial", "post-1") == pytest.approx(0.7822976, abs=1e-7)
    reseeded = [config(share_b=0.3, seed="again").arm_of(i, NOW) for i in ids]
    assert 0.35 < sum(x != y for x, y in zip(arms, reseeded, strict=True)) / len(ids) < 0.49


def test_time_split_alternates_periods_within_start_and_stop():
    start = datetime(2024, 5, 1, 9, tzinfo=UTC)
    cfg = config(split="time", period_minutes=60, start=start, stop=start + timedelta(hours=5))
    at = [start + timedelta(minutes=m) for m in (0, 59, 60, 119, 120, 180, 299)]
    assert [cfg.arm_of("p", t) for t in at] == ["A", "A", "B", "B", "A", "B", "A"]
    assert cfg.arm_of("p", start - timedelta(seconds=1)) is None
    assert cfg.arm_of("p", start + timedelta(hours=5)) is None
    assert config(enabled=False).arm_of("p", NOW) is None
    naive = config(split="time", period_minutes=60, start="2024-05-01T09:00:00")
    assert naive.start == start


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"split": "time"}, "period_minutes"),
        ({"start": "2024-05-02T00:00:00Z", "stop": "2024-05-01T00:00:00Z"}, "stop"),
        ({"b": {"strategy": "skills-only"}}, "b"),
        ({"a": {"strategy": "least-loaded", "objective": "csat"}}, "a.objective"),
    ],
)
def test_configurations_that_cannot_work_name_the_field(kw, field):
    assert field in [f for f, _ in config(**kw).problems()]


def test_baselines_choose_as_helpdesks_do():
    agents = [
        Agent(id="skilled", skills={T: 0.9}, capacity=10, caseload=3),
        Agent(id="idle", skills={T: 0.2}, capacity=10, caseload=0),
        Agent(id="best", skills={T: 1.0}, capacity=2, caseload=2),  # full
        Agent(id="gone", skills={T: 1.0}, capacity=9, status=AgentStatus.offline),
    ]
    assert ex.baseline_choice("skills-only", T, agents).agent_id == "skilled"
    assert ex.baseline_choice("least-loaded", T, agents).agent_id == "idle"
    assert [m.id for m in ex.baseline_choice("least-loaded", T, agents).candidates] == [
        "idle",
        "skilled",
    ]
    assert ex.baseline_choice("skills-only", T, agents[2:]).agent_id is None


# -- the store: each arm routes, and is recorded -----------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = Store(f"sqlite:///{tmp_path / 'exp.db'}")
    else:
        s = Store(PG_URL, schema=request.getfixturevalue("pg_schemas")())
    s.upgrade()
    yield s
    s.dispose()


def _assign(cw: AssignmentStore, pid: str, arm: ex.ArmRouting | None, created=NOW):
    """Assign a post created at ``created`` and due an hour later."""
    post = Post(id=pid, text="my bag is lost", created_at=created)
    result = scored(pid)
    due = created + timedelta(hours=1)
    result = result.model_copy(
        update={"priority": result.priority.model_copy(update={"respond_by": due})}
    )
    case = Case(pid, T, 0.9, 0.3, result.priority)
    return cw.assign(case, post, result, ROUTING, arm=arm)


def test_each_arm_routes_by_its_policy_and_is_recorded(store):
    store.replace_agents(
        [
            Agent(id="skilled", skills={T: 0.9}, capacity=50, caseload=3),
            Agent(id="idle", skills={T: 0.2}, capacity=50, caseload=0),
        ]
    )
    cfg = config(a={"strategy": "least-loaded"}, b={"strategy": "skills-only"})
    base = RouterConfig()
    cw = AssignmentStore(store)
    got = {}
    for pid in ("p1", "p2", "p3", "p4", "p5", "p6"):
        arm = ex.routing_for(cfg, pid, NOW, base)
        assert arm is not None and arm.arm == cfg.arm_of(pid, NOW)
        got[pid] = _assign(cw, pid, arm)
    assert {a.arm for a in got.values()} == {"A", "B"}  # both arms drawn for these ids
    for pid, a in got.items():
        assert a.experiment == "trial" and a.arm == cfg.arm_of(pid, NOW)
        assert a.reasons[0].startswith(f"experiment trial: arm {a.arm}")
        # A: least-loaded (idle stays the least loaded); B: skills-only.
        assert a.agent_id == ("skilled" if a.arm == "B" else "idle")
        again = cw.get(pid)
        assert again is not None and (again.experiment, again.arm) == ("trial", a.arm)
    # Without an experiment nothing is recorded: the server's own routing.
    plain = _assign(cw, "p7", None)
    assert plain.arm is None and plain.experiment is None


def test_the_report_counts_each_arms_outcomes(store):
    store.replace_agents([Agent(id="ana", skills={T: 0.8}, capacity=500)])
    cfg = config(a={"strategy": "least-loaded"}, b={})
    exps = ExperimentStore(store, refresh_seconds=0)
    saved = exps.save(cfg, "test")
    assert exps.current() == saved and exps.named("trial") == saved
    cw = AssignmentStore(store)
    past = NOW - timedelta(hours=3)  # due at NOW - 2 h
    csat = {"A": [], "B": []}
    pending = {"A": 0, "B": 0}
    for i in range(80):
        pid = f"r{i}"
        arm = ex.routing_for(cfg, pid, NOW, RouterConfig())
        assert arm is not None
        a = _assign(cw, pid, arm, created=past)
        if i % 8 == 7:  # open, no first response, past due: awaits judging
            pending[a.arm] += 1
            continue
        score = (5 if a.arm == "B" else 3) - (i % 3 == 0)
        csat[a.arm].append(score)
        minutes = 30 if a.arm == "B" else 200  # A late, B in time
        cw.record_feedback(
            FeedbackIn(post_id=pid, csat=score, resolved=i % 2 == 0, first_response_minutes=minutes)
        )
    arms = exps.outcomes("trial", NOW)
    assert {k: v.awaiting_past_due for k, v in arms.items()} == pending
    assert sorted(arms["A"].csat) == sorted(csat["A"]) and arms["B"].breached == [0.0] * len(
        csat["B"]
    )
    report = build_report(saved, arms, 0.95, NOW)
    by = {k["key"]: k for k in report["kpis"]}
    want = ex.welch(csat["A"], csat["B"])
    assert want is not None
    assert (by["csat"]["low"], by["csat"]["high"]) == pytest.approx((want.low, want.high))
    assert by["csat"]["significant"] and by["sla_breach_rate"]["significant"]
    assert by["sla_breach_rate"]["a"] == 1.0 and by["sla_breach_rate"]["b"] == 0.0
    assert by["first_response_median"]["verdict"].startswith("not enough data")  # no spread
    assert report["verdict"].startswith("B is better on CSAT by ")
    assert "B is better on SLA breach rate by 100.00 pp" in report["verdict"]
    assert report["arms"]["A"]["assigned"] + report["arms"]["B"]["assigned"] == 80


def test_an_empty_arm_gives_a_report_with_nothing_concluded():
    saved = StoredExperiment(1, config(), NOW, "test")
    report = build_report(saved, {"A": ArmOutcomes(), "B": ArmOutcomes()})
    assert report["verdict"] == "not enough data yet"
    assert all(not k["significant"] for k in report["kpis"])


# -- the API -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(onnx_bundle, tmp_path_factory):
    settings = Settings(
        api_keys=[KEY],
        admin_keys=[ADMIN_KEY],
        model_dir=onnx_bundle,
        database_url=f"sqlite:///{tmp_path_factory.mktemp('exp') / 'api.db'}",
        rate_limit_enabled=False,
    )
    with TestClient(create_app(settings)) as c:
        yield c


def put(c: TestClient, experiment: dict, **extra):
    return c.put("/v1/admin/experiment", headers=ADMIN, json={"experiment": experiment, **extra})


TRIAL = {"name": "api-trial", "a": {"strategy": "skills-only"}, "b": {"objective": "csat"}}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"share_b": 1.5}, "experiment.share_b"),
        ({"split": "time"}, "experiment.period_minutes"),
        ({"b": {"strategy": "random"}}, "experiment.b.strategy"),
        ({"b": {"strategy": "skills-only"}}, "experiment.b"),
        ({"name": "has space"}, "experiment.name"),
        ({"start": "2030-01-02T00:00:00Z", "stop": "2030-01-01T00:00:00Z"}, "experiment.stop"),
        ({"b": {"routing": {"weights": {"skill": 1}}}}, "experiment.b.routing.weights.capacity"),
        ({"colour": "red"}, "experiment.colour"),
        ({"a": {"strategy": "skills-only", "label": "nul\u0000"}}, "experiment.a.label"),
    ],
)
def test_a_bad_configuration_is_422_naming_the_field(client, change, field):
    r = put(client, {**TRIAL, **change})
    assert r.status_code == 422, r.text
    assert field in r.json()["fields"], r.json()
    assert field in r.json()["message"]


def test_a_routing_section_must_be_finite(client):
    routing = ROUTING.model_dump(mode="json")
    routing["weights"]["speed"] = float("inf")
    body = json.dumps({"experiment": {**TRIAL, "b": {"routing": routing}}})  # writes Infinity
    r = client.put(
        "/v1/admin/experiment", headers={**ADMIN, "Content-Type": "application/json"}, content=body
    )
    assert r.status_code == 422, r.text
    assert r.json()["fields"] == ["experiment.b.routing.weights.speed"]


def test_configuration_needs_an_admin_and_is_versioned(client):
    assert client.get("/v1/admin/experiment", headers=AUTH).status_code == 403
    assert put(client, TRIAL).status_code == 200  # (an admin key)
    r = client.put("/v1/admin/experiment", headers=AUTH, json={"experiment": TRIAL})
    assert r.status_code == 403
    got = client.get("/v1/admin/experiment", headers=ADMIN).json()
    assert got["experiment"]["name"] == "api-trial" and got["active"]
    stale = put(client, TRIAL, expected_version=got["version"] - 1 or 99)
    assert stale.status_code == 409 and stale.json()["fields"] == ["expected_version"]
    r = put(client, {**TRIAL, "share_b": 0.4}, expected_version=got["version"])
    assert r.status_code == 200 and r.json()["version"] == got["version"] + 1


def test_assignments_carry_their_arm_and_the_report_compares_them(client):
    topics = load_policy().priority.topic_severity.labels
    agents = [
        {"id": n, "skills": dict.fromkeys(topics, s), "capacity": 200} for n, s in [("x", 0.9)]
    ]
    agents.append({"id": "y", "skills": dict.fromkeys(topics, 0.5), "capacity": 200})
    assert client.put("/v1/agents", headers=AUTH, json={"agents": agents}).status_code == 200
    r = put(client, {**TRIAL, "name": "api-report"})
    assert r.status_code == 200, r.text
    cfg = ex.ExperimentConfig.model_validate(r.json()["experiment"])
    arms = {}
    for i in range(24):
        pid = f"api-{i}"
        body = {"post": {"id": pid, "text": "@airline where is my bag??", "channel": "twitter"}}
        r = client.post("/v1/assign", headers=AUTH, json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["experiment"] == "api-report" and out["arm"] == cfg.arm_of(pid, NOW)
        assert out["reasons"][0].startswith(f"experiment api-report: arm {out['arm']}")
        arms[pid] = out["arm"]
        if out["arm"] == "A":  # the skills-only baseline: the most skilled agent
            assert out["agent_id"] == "x"
        fb = {"post_id": pid, "csat": 5 if out["arm"] == "B" else 2 + i % 2}
        assert client.post("/v1/feedback", headers=AUTH, json=fb).status_code == 200
    assert set(arms.values()) == {"A", "B"}
    r = client.get("/v1/reports/experiment", headers=AUTH)
    assert r.status_code == 200, r.text
    rep = r.json()
    assert rep["name"] == "api-report" and rep["confidence"] == 0.95
    counts = {a: list(arms.values()).count(a) for a in "AB"}
    assert {a: rep["arms"][a]["assigned"] for a in "AB"} == counts
    csat = next(k for k in rep["kpis"] if k["key"] == "csat")
    assert csat["n_a"] == counts["A"] and csat["b"] == 5.0 and csat["significant"]
    assert rep["verdict"].startswith("B is better on CSAT by ")
    # An admin key reads it too; other confidence levels; a finished experiment by name.
    wide = client.get("/v1/reports/experiment?confidence=0.99", headers=ADMIN).json()
    wide_csat = next(k for k in wide["kpis"] if k["key"] == "csat")
    assert wide_csat["low"] < csat["low"] and wide_csat["high"] > csat["high"]
    named = client.get("/v1/reports/experiment?name=api-report", headers=AUTH).json()
    assert named["arms"] == rep["arms"]


@pytest.mark.parametrize(
    ("query", "status", "field"),
    [
        ("?name=nope", 404, "name"),
        ("?confidence=2", 422, "confidence"),
        ("?confidence=x", 422, "confidence"),
    ],
)
def test_report_errors_name_the_field(client, query, status, field):
    r = client.get(f"/v1/reports/experiment{query}", headers=AUTH)
    assert r.status_code == status, r.text
    assert r.json()["fields"] == [field]


def test_the_report_needs_a_key(client):
    r = client.get("/v1/reports/experiment?confidence=x")
    assert r.status_code == 401 and "API key" in r.json()["message"]
    r = client.get("/v1/reports/experiment", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401


# -- the replay's A/B ----------------------------------------------------------------------------


def test_replay_split_serves_each_arm_its_share_in_its_own_order():
    # One agent, six posts at once: A's three first come first served, B's by priority; the
    # arms take turns (50/50), A first on a tie.
    arms = ["A", "A", "A", "B", "B", "B"]
    levels = ["P3", "P3", "P3", "P3", "P1", "P2"]
    posts = [_post(0.0, lv) for lv in levels]
    out = simulate(
        posts,
        [_agent("solo")],
        lambda p, s: ab.SplitRouter(
            p, s, arms, LeastLoaded, lambda p2, s2: Caretriage(p2, s2, ROUTING)
        ),
        Luck.draw(6, 1),
        t0_local_hour=12.0,
    )
    order = sorted(range(6), key=lambda i: (out.assigned[i], i))
    assert order == [0, 4, 1, 5, 2, 3]


def test_replay_experiment_reports_each_arms_kpis():
    agents = team.draw_team(TOPICS, 3)
    rng = np.random.default_rng(3)
    arrivals = np.sort(rng.uniform(0, 24 * 60, 300))
    posts = [
        _post(float(t), str(lv), TOPICS[k % 3])
        for k, (t, lv) in enumerate(zip(arrivals, rng.choice(["P1", "P3"], 300), strict=True))
    ]
    ids = [f"t{i}" for i in range(300)]
    routers = replay.router_factories(ROUTING)
    split = {"A": routers["skills-only"], "B": routers["caretriage"]}
    run = ab.run(posts, ids, agents, Luck.draw(300, 3), split, t0_local_hour=9.0)
    assert run == ab.run(posts, ids, agents, Luck.draw(300, 3), split, t0_local_hour=9.0)
    arms = ab.arms_of(ids)
    assert run["posts"] == {"A": arms.count("A"), "B": arms.count("B")}
    assert arms == [config(seed="replay").arm_of(i, NOW) for i in ids]  # as the server splits
    by = {k["key"]: k for k in run["kpis"]}
    assert by["sla_breach_rate"]["n_a"] == arms.count("A")
    assert by["sla_breach_rate_p1"]["n_a"] == sum(
        a == "A" and p.level == "P1" for a, p in zip(arms, posts, strict=True)
    )
    for k in run["kpis"]:
        assert k["low"] <= k["difference"] <= k["high"] and k["verdict"]
    assert run["verdict"]
