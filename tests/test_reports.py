"""Reports: the pure assembly (``serving.reports.assemble``) table-driven, then
``GET /v1/reports`` over cases assigned and closed through the API (SQLite and PostgreSQL):
the figures agree with an independent computation, the range selects cases and is validated
(422 naming the field), and who may read it (API key, lead session; not an evaluator)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from serving.app import create_app
from serving.labeling.accounts import hash_password
from serving.priority import load_policy
from serving.reports import BINS, Cell, assemble, histogram, percentile
from serving.settings import Settings
from tests.conftest import PG_URL

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
START, END = T0 - timedelta(days=7), T0 + timedelta(days=1)


def at(tree: Any, path: str) -> Any:
    """``at(report, "sla.by_level.0.rate")``."""
    for part in path.split("."):
        tree = tree[int(part)] if isinstance(tree, list) else tree[part]
    return tree


# -- the arithmetic -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, p, expected",
    [
        ([], 50, None),
        ([7.0], 50, 7.0),
        ([7.0], 90, 7.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
        ([1.0, 2.0, 3.0, 4.0], 90, 3.7),
        ([10.0, 20.0], 90, 19.0),
        ([0.0, 5.0, 5.0, 100.0], 50, 5.0),
        ([1.0, 2.0, 3.0, 4.0, 5.0], 0, 1.0),
        ([1.0, 2.0, 3.0, 4.0, 5.0], 100, 5.0),
    ],
)
def test_percentile_interpolates_like_numpy(values, p, expected):
    got = percentile(values, p)
    assert got == pytest.approx(expected)
    if values:
        assert got == pytest.approx(float(np.percentile(values, p)))


@pytest.mark.parametrize(
    "minutes, label",
    [(0.0, "<15m"), (14.99, "<15m"), (15.0, "15-30m"), (59.9, "30-60m"), (60.0, "1-2h"),
     (479.0, "4-8h"), (1439.9, "8-24h"), (1440.0, "24h+"), (90_000.0, "24h+")],
)  # fmt: skip
def test_histogram_bins_are_half_open(minutes, label):
    bins = histogram([minutes])
    assert [b.label for b in bins] == [lab for lab, _ in BINS]
    assert {b.label: b.count for b in bins if b.count} == {label: 1}
    hit = next(b for b in bins if b.count)
    assert hit.min_minutes <= minutes and (hit.max_minutes is None or minutes < hit.max_minutes)


MIXED_CELLS = [
    # topic, agent, channel, level, cases, open, resolved_known, resolved, rated, csat_sum,
    # satisfied, nps_responses, promoters, detractors, then SLA: met, late, overdue, pending,
    # unknown
    Cell("bags", "ana", "twitter", "P1", 2, 0, 2, 1, 2, 9, 2, 2, 1, 1, 1, 1, 0, 0, 0),
    Cell("bags", "bo", "email", "P2", 1, 1, 0, 0, 1, 2, 0, 1, 0, 1, 0, 0, 1, 0, 0),
    Cell("refund", "ana", None, None, 1, 0, 1, 1, 0, 0, 0, 0, 0, 0),
    Cell("refund", "bo", "twitter", "P2", 3, 1, 3, 3, 3, 14, 3, 2, 2, 0, 1, 0, 0, 1, 1),
]
# Answered cases: 10 and 90 min at P1, 240 at P2, and 20 for the post not assigned here.
MIXED_ANSWERED = [("P1", 10.0), ("P1", 90.0), ("P2", 240.0), (None, 20.0)]


@pytest.mark.parametrize(
    "name, cells, answered, expected",
    [
        (
            "nothing in the range",
            [],
            [],
            {
                "cases": 0,
                "open": 0,
                "first_response.responded": 0,
                "first_response.p50": None,
                "first_response.p90": None,
                "first_response.by_level.0.level": "P1",
                "first_response.by_level.3.p50": None,
                "sla.cases": 0,
                "sla.rate": None,
                "sla.by_level.0.rate": None,
                "satisfaction.overall.key": "all",
                "satisfaction.overall.csat": None,
                "satisfaction.overall.nps": None,
                "satisfaction.by_topic": [],
                "satisfaction.by_channel": [],
            },
        ),
        (
            "one case, answered in time",
            [Cell("bags", "ana", "twitter", "P3", 1, 0, 1, 1, 1, 5, 1, 1, 1, 0, met=1)],
            [("P3", 5.0)],
            {
                "cases": 1,
                "first_response.p50": 5.0,
                "first_response.p90": 5.0,
                "first_response.mean": 5.0,
                "first_response.histogram.0.count": 1,
                "first_response.by_level.2.p50": 5.0,
                "first_response.by_level.0.responded": 0,
                "sla.met": 1,
                "sla.breached": 0,
                "sla.rate": 0.0,
                "sla.by_level.2.rate": 0.0,
                "sla.by_level.0.rate": None,
                "satisfaction.overall.csat": 5.0,
                "satisfaction.overall.satisfied": 1.0,
                "satisfaction.overall.nps": 100.0,
                "satisfaction.overall.resolved_rate": 1.0,
            },
        ),
        (
            "a mixed week",
            MIXED_CELLS,
            MIXED_ANSWERED,
            {
                "cases": 7,
                "open": 2,
                # answered: 10, 90, 240 (assigned) and 20 (not assigned here)
                "first_response.responded": 4,
                "first_response.p50": 55.0,
                "first_response.p90": pytest.approx(195.0),
                "first_response.mean": 90.0,
                "first_response.by_level.0.p50": 50.0,
                "first_response.by_level.1.p90": 240.0,
                "first_response.histogram.0.count": 1,
                "first_response.histogram.1.count": 1,
                "first_response.histogram.3.count": 1,
                "first_response.histogram.5.count": 1,
                "sla.cases": 6,
                "sla.met": 2,
                "sla.breached": 2,
                "sla.overdue": 1,
                "sla.pending": 1,
                "sla.unknown": 1,
                "sla.rate": 0.5,
                "sla.by_level.0.met": 1,
                "sla.by_level.0.breached": 1,
                "sla.by_level.0.rate": 0.5,
                "sla.by_level.1.breached": 1,
                "sla.by_level.1.overdue": 1,
                "sla.by_level.1.rate": 0.5,
                "sla.by_level.2.cases": 0,
                "satisfaction.overall.rated": 6,
                "satisfaction.overall.csat": pytest.approx(25 / 6),
                "satisfaction.overall.satisfied": pytest.approx(5 / 6),
                "satisfaction.overall.nps": 20.0,  # (3 promoters - 2 detractors) / 5
                "satisfaction.overall.resolved_rate": pytest.approx(5 / 6),
                # most cases first, ties by name; a missing channel is "unknown"
                "satisfaction.by_topic.0.key": "refund",
                "satisfaction.by_topic.0.cases": 4,
                "satisfaction.by_topic.0.csat": pytest.approx(14 / 3),
                "satisfaction.by_topic.1.key": "bags",
                "satisfaction.by_topic.1.csat": pytest.approx(11 / 3),
                "satisfaction.by_topic.1.nps": pytest.approx(-100 / 3),
                "satisfaction.by_agent.0.key": "bo",
                "satisfaction.by_agent.0.cases": 4,
                "satisfaction.by_agent.0.csat": 4.0,
                "satisfaction.by_agent.1.key": "ana",
                "satisfaction.by_agent.1.csat": 4.5,
                "satisfaction.by_agent.1.nps": 0.0,
                "satisfaction.by_channel.0.key": "twitter",
                "satisfaction.by_channel.0.cases": 5,
                "satisfaction.by_channel.1.key": "email",
                "satisfaction.by_channel.2.key": "unknown",
                "satisfaction.by_channel.2.csat": None,
                "satisfaction.by_channel.2.resolved_rate": 1.0,
            },
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_assemble(name, cells, answered, expected):
    report = assemble(cells, answered, START, END, T0 + timedelta(hours=1))
    data = report.model_dump(mode="json", by_alias=True)
    assert data["from"] == "2026-02-23T09:00:00Z" and data["to"] == "2026-03-03T09:00:00Z"
    assert len(data["first_response"]["histogram"]) == len(BINS)
    assert [lv["level"] for lv in data["sla"]["by_level"]] == ["P1", "P2", "P3", "P4"]
    for path, value in expected.items():
        assert at(data, path) == value, path
    # The parts add up: levels to the whole, bins to the answered cases.
    for key in ("cases", "met", "breached", "overdue", "pending", "unknown"):
        assert sum(lv[key] for lv in data["sla"]["by_level"]) == data["sla"][key], key
    fr = data["first_response"]
    assert sum(b["count"] for b in fr["histogram"]) == fr["responded"]
    for dim in ("by_topic", "by_agent", "by_channel"):
        groups = data["satisfaction"][dim]
        assert sum(g["cases"] for g in groups) == data["cases"], dim
        assert sum(g["rated"] for g in groups) == data["satisfaction"]["overall"]["rated"]


def test_assemble_is_pure():
    args = (MIXED_CELLS, MIXED_ANSWERED, START, END, T0)
    assert assemble(*args) == assemble(*args)


# -- the API ------------------------------------------------------------------------------------

KEY = "test-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
PASSWORD = "password-0123"
NOW = datetime.now(UTC)


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def api(request, onnx_bundle, tmp_path_factory):
    """A running app with a roster, five posts assigned through ``/v1/assign`` (four with an
    outcome) and one outcome of a post not assigned here; yields (client, app, what was sent)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('reports') / 'api.db'}"
    else:
        schema = request.getfixturevalue("pg_schemas")()
        url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
        url = url.render_as_string(hide_password=False)
    settings = Settings(
        api_keys=[KEY],
        model_dir=onnx_bundle,
        database_url=url,
        rate_limit_enabled=False,
        session_secret="reports-test-secret-" + "x" * 32,
    )
    app = create_app(settings)
    with TestClient(app) as c:
        hashed = hash_password(PASSWORD)
        for name, role in [("eva", "evaluator"), ("lee", "lead"), ("ada", "admin")]:
            app.state.workspace.labels.add_user(name, role, hashed)
        topics = load_policy().priority.topic_severity.labels
        roster = [
            {"id": a, "skills": dict.fromkeys(topics, 0.7), "capacity": 10} for a in ("ana", "bo")
        ]
        assert c.put("/v1/agents", headers=AUTH, json={"agents": roster}).status_code == 200
        created = NOW - timedelta(days=3)
        posts = [
            ("r1", "twitter", "@airline my bag never arrived in Denver!!"),
            ("r2", "twitter", "@airline three hours late and no word from anyone"),
            ("r3", "email", "My refund was promised two weeks ago and still nothing."),
            ("r4", "facebook", "The seat was broken the whole way."),
            ("r5", "twitter", "@airline cancelled again, how do I rebook?"),
            ("r6", "chat", "Is there wifi on the morning flight to Boston?"),
            ("r7", "twitter", "@airline stuck at the gate for an hour, what is going on"),
            ("r8", "email", "Nobody called me back about my lost suitcase."),
        ]
        assigned = {}
        for pid, channel, text in posts:
            post = {"id": pid, "text": text, "channel": channel}
            if pid != "r7":  # r7 arrives now: not due yet
                post["created_at"] = created.isoformat()
            r = c.post("/v1/assign", headers=AUTH, json={"post": post})
            assert r.status_code == 200, r.text
            a = r.json()
            allowed = (datetime.fromisoformat(a["respond_by"]) - created).total_seconds() / 60
            assigned[pid] = {**a, "channel": channel, "allowed": allowed}
        # r1 and r3 answered in time, r6 on the deadline to the microsecond, r2 late and r8 two
        # seconds late; r4 closed with no response time; r5 and r7 open and unanswered.
        outcomes = {
            "r1": {"first_response_minutes": 0.25 * assigned["r1"]["allowed"], "csat": 5,
                   "nps": 10, "resolved": True},
            "r2": {"first_response_minutes": assigned["r2"]["allowed"] + 45, "csat": 2,
                   "nps": 3, "resolved": False},
            "r3": {"first_response_minutes": 0.5 * assigned["r3"]["allowed"], "csat": 4,
                   "resolved": True},
            "r4": {"csat": 3, "nps": 8, "closed": True},
            "r6": {"first_response_at": assigned["r6"]["respond_by"]},
            "r8": {"first_response_minutes": assigned["r8"]["allowed"] + 2 / 60},
        }  # fmt: skip
        for pid, fb in outcomes.items():
            r = c.post("/v1/feedback", headers=AUTH, json={"post_id": pid, **fb})
            assert r.status_code == 200, r.text
            outcomes[pid] = {**fb, "first_response_minutes": r.json()["first_response_minutes"]}
        external = {
            "post_id": "x1",
            "agent_id": "bo",
            "topic": "external_topic",
            "first_response_minutes": 7.5,
            "csat": 5,
            "nps": 9,
        }
        r = c.post("/v1/feedback", headers=AUTH, json=external)
        assert r.status_code == 200, r.text
        yield c, app, {"assigned": assigned, "outcomes": outcomes, "external": external}


def test_the_report_agrees_with_what_was_recorded(api):
    c, _, sent = api
    assigned, outcomes, external = sent["assigned"], sent["outcomes"], sent["external"]
    r = c.get("/v1/reports", headers=AUTH)
    assert r.status_code == 200, r.text
    rep = r.json()
    assert rep["cases"] == 9
    assert rep["open"] == 2  # r5 and r7: the others were closed by their feedback
    to = datetime.fromisoformat(rep["to"])
    assert abs((to - datetime.now(UTC)).total_seconds()) < 60  # default: now
    assert to - datetime.fromisoformat(rep["from"]) == timedelta(days=7)

    minutes = [o["first_response_minutes"] for o in outcomes.values()]
    minutes = [m for m in minutes if m is not None] + [external["first_response_minutes"]]
    assert outcomes["r6"]["first_response_minutes"] == pytest.approx(assigned["r6"]["allowed"])
    fr = rep["first_response"]
    assert fr["responded"] == len(minutes) == 6
    assert fr["p50"] == pytest.approx(np.percentile(minutes, 50))
    assert fr["p90"] == pytest.approx(np.percentile(minutes, 90))
    assert fr["mean"] == pytest.approx(np.mean(minutes))
    assert sum(b["count"] for b in fr["histogram"]) == 6
    by_level = {lv["level"]: lv for lv in fr["by_level"]}
    for level, lv in by_level.items():
        mine = [
            m
            for p, o in outcomes.items()
            if assigned[p]["level"] == level and (m := o["first_response_minutes"]) is not None
        ]
        assert lv["responded"] == len(mine), level
        if mine:
            assert lv["p90"] == pytest.approx(np.percentile(mine, 90)), level

    # SLA: r1, r3 and r6 met; r2 and r8 late; r4 unknown; r7 pending; r5 overdue once its
    # deadline passed (business hours may still hold it), pending before; x1 promised nothing.
    r5_due = datetime.fromisoformat(assigned["r5"]["respond_by"]) <= datetime.now(UTC)
    sla = rep["sla"]
    assert (sla["cases"], sla["met"], sla["unknown"]) == (8, 3, 1)
    assert sla["breached"] == 2 + r5_due and sla["overdue"] == int(r5_due)
    assert sla["pending"] == 2 - r5_due
    assert sla["rate"] == pytest.approx((2 + r5_due) / (5 + r5_due))
    levels = {lv["level"]: lv for lv in sla["by_level"]}
    for level in levels:
        mine = [p for p, a in assigned.items() if a["level"] == level]
        assert levels[level]["cases"] == len(mine), level
        late = [p for p in ("r2", "r8") if p in mine] + (["r5"] if r5_due and "r5" in mine else [])
        assert levels[level]["breached"] == len(late), level

    # Satisfaction by agent, topic and channel, as recorded.
    sat = rep["satisfaction"]
    csats = [o.get("csat") for o in outcomes.values()] + [external["csat"]]
    csats = [x for x in csats if x is not None]
    assert sat["overall"]["rated"] == len(csats) == 5
    assert sat["overall"]["csat"] == pytest.approx(np.mean(csats))
    npss = [o["nps"] for o in outcomes.values() if "nps" in o] + [external["nps"]]
    promoters, detractors = sum(n >= 9 for n in npss), sum(n <= 6 for n in npss)
    assert sat["overall"]["nps"] == pytest.approx(100 * (promoters - detractors) / len(npss))

    def expect(key_of) -> dict[str, tuple[int, float | None]]:
        groups: dict[str, list[int | None]] = {}
        for pid, a in assigned.items():
            groups.setdefault(key_of(a), []).append(outcomes.get(pid, {}).get("csat"))
        ext = {"agent_id": "bo", "topic": "external_topic", "channel": "unknown"}
        groups.setdefault(key_of(ext), []).append(external["csat"])
        out = {}
        for k, v in groups.items():
            rated = [x for x in v if x is not None]
            out[k] = (len(v), float(np.mean(rated)) if rated else None)
        return out

    for dim, key_of in (
        ("by_agent", lambda a: a["agent_id"]),
        ("by_topic", lambda a: a["topic"]),
        ("by_channel", lambda a: a["channel"]),
    ):
        got = {g["key"]: (g["cases"], g["csat"]) for g in sat[dim]}
        want = expect(key_of)
        assert got.keys() == want.keys(), dim
        for k, (cases, mean) in want.items():
            assert got[k][0] == cases, (dim, k)
            assert got[k][1] == (None if mean is None else pytest.approx(mean)), (dim, k)


def test_the_range_selects_cases(api):
    c, _, sent = api
    now = datetime.now(UTC)

    def cases(**q: str) -> int:
        r = c.get("/v1/reports", headers=AUTH, params=q)
        assert r.status_code == 200, r.text
        return r.json()["cases"]

    earlier = (now - timedelta(days=30)).isoformat()
    assert cases(**{"from": earlier}) == 9
    assert cases(**{"from": earlier, "to": (now - timedelta(days=1)).isoformat()}) == 0
    later = {"from": (now + timedelta(hours=1)).isoformat()}
    assert cases(**later, to=(now + timedelta(hours=2)).isoformat()) == 0
    # [from, to) by when each case was assigned; x1's outcome came after the last (r8).
    last = sent["assigned"]["r8"]["assigned_at"]
    assert cases(**{"from": last}) == 2  # r8 and x1
    assert cases(**{"from": earlier, "to": last}) == 7  # r1-r7
    # Naive times are UTC.
    naive = (now - timedelta(days=2)).replace(tzinfo=None).isoformat()
    assert cases(**{"from": naive}) == 9


@pytest.mark.parametrize(
    "query, field",
    [
        ({"from": "last tuesday"}, "from"),
        ({"to": "2026-13-01"}, "to"),
        ({"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "to"),
        ({"from": "2026-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "to"),
        ({"from": "1969-12-31T00:00:00Z"}, "from"),
        ({"to": "2999-01-01T00:00:00Z"}, "to"),
        ({"from": "2020-01-01T00:00:00Z", "to": "2022-01-01T00:00:00Z"}, "from"),
        ({"from": "NOW+12h"}, "from"),  # after the default end (now)
    ],
)
def test_a_bad_range_is_422_naming_the_field(api, query, field):
    c, _, _ = api
    if query.get("from") == "NOW+12h":
        query = {"from": (datetime.now(UTC) + timedelta(hours=12)).isoformat()}
    r = c.get("/v1/reports", headers=AUTH, params=query)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "validation_failed" and body["fields"] == [field]
    assert body["message"].startswith(f"{field}:")


def sign_in(app, name: str) -> TestClient:
    """A browser of its own, signed in as ``name``."""
    b = TestClient(app, follow_redirects=False)
    page = b.get("/login?next=/reports")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    r = b.post(
        "/login", data={"name": name, "password": PASSWORD, "csrf": csrf, "next": "/reports"}
    )
    assert r.status_code == 303 and r.headers["location"] == "/reports", r.text
    return b


def test_who_may_read_the_report(api):
    _, app, _ = api
    anonymous = TestClient(app, follow_redirects=False)
    assert anonymous.get("/v1/reports").status_code == 401
    # Refused before anything is said about the query.
    assert anonymous.get("/v1/reports", params={"from": "nonsense"}).status_code == 401
    r = anonymous.get("/v1/reports", headers={"Authorization": "Bearer wrong-key-0123456789"})
    assert r.status_code == 401
    eva = sign_in(app, "eva")
    r = eva.get("/v1/reports")
    assert r.status_code == 403 and "lead" in r.json()["message"]
    for name in ("lee", "ada"):
        r = sign_in(app, name).get("/v1/reports")
        assert r.status_code == 200 and r.json()["cases"] == 9, name


def test_the_reports_page_is_for_leads_and_ships_its_own_assets(api):
    _, app, _ = api
    anonymous = TestClient(app, follow_redirects=False)
    r = anonymous.get("/reports")
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/reports"
    r = sign_in(app, "eva").get("/reports")
    assert r.status_code == 403 and "lead" in r.text
    lee = sign_in(app, "lee")
    html = lee.get("/reports").text
    for element in ("range", "range-from", "range-to", "kpis", "levels", "report-error"):
        assert f'id="{element}"' in html, element
    for chart in ("response", "breaches", "topic", "agent", "channel"):
        assert re.search(rf'id="chart-{chart}"><svg ', html), chart
    assert not re.search(r"https?://", html)
    assert 'href="/reports" aria-current="page"' in html  # in the header's navigation
    assets = set(re.findall(r'(?:src|href)="(/static/[^"]+)"', html))
    assert assets == {"/static/label.css", "/static/reports.js"}
    for asset in assets:
        r = lee.get(asset)
        assert r.status_code == 200 and not re.search(r"https?://|//cdn|import\s", r.text)
    # The evaluators' header has no link to it; the leads' has.
    assert 'href="/reports"' not in sign_in(app, "eva").get("/label").text
    assert 'href="/reports"' in lee.get("/label").text


def test_the_report_is_documented(api):
    c, _, _ = api
    spec = c.get("/openapi.json").json()
    op = spec["paths"]["/v1/reports"]["get"]
    assert {p["name"] for p in op["parameters"]} == {"from", "to"}
    for code in ("401", "403", "422"):
        ref = op["responses"][code]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/ErrorBody")
    assert "/reports" not in spec["paths"]  # the page is not part of the API
