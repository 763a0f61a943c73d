"""A lead reads the reports page in a real browser (Debian's Chromium through Playwright): the
tiles show the numbers ``GET /v1/reports`` returns, each SVG chart has one bar per bin, level
or rated group, the range picker changes the range (and a bad one is explained), with no
console error and no request leaving the server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest

from serving.labeling.accounts import hash_password
from serving.labeling.store import LabelingStore
from serving.priority import load_policy
from serving.store import Store
from tests.browser import browser_page, collect_errors, require_chromium
from tests.live import LiveServer, sqlite_url
from tests.test_browser_label import PASSWORD, sign_in

pytestmark = pytest.mark.browser

POSTS = [
    ("b1", "twitter", "@airline my bag never arrived in Denver and nobody answers!!"),
    ("b2", "twitter", "@airline three hours late and no word from anyone at the gate"),
    ("b3", "email", "My refund was promised two weeks ago and still nothing."),
    ("b4", "facebook", "The seat was broken the whole way, and the crew shrugged."),
    ("b5", "chat", "Can I change my seat online after check-in?"),
]


@pytest.fixture
def server(onnx_bundle, tmp_path):
    """A live server with a lead, a roster, five posts assigned through the API and four
    outcomes (one answered late, one without a CSAT answer), and one outcome of a post not
    assigned here; yields (server, the report the API returns)."""
    require_chromium()
    url = sqlite_url(tmp_path / "reports.db")
    store = Store(url)
    store.upgrade()
    LabelingStore(store).add_user("lee", "lead", hash_password(PASSWORD))
    store.dispose()
    env = {"CARETRIAGE_SESSION_SECRET": "browser-test-secret-0123456789abcdef"}
    with LiveServer(onnx_bundle, tmp_path / "srv", database_url=url, env=env) as srv:
        with srv.client(timeout=60) as api:
            topics = load_policy().priority.topic_severity.labels
            roster = [
                {"id": a, "skills": dict.fromkeys(topics, 0.7), "capacity": 10}
                for a in ("ana", "bo", "cy")
            ]
            assert api.put("/v1/agents", json={"agents": roster}).status_code == 200
            created = datetime.now(UTC) - timedelta(days=2)
            allowed = {}
            for pid, channel, text in POSTS:
                post = {
                    "id": pid,
                    "text": text,
                    "channel": channel,
                    "created_at": created.isoformat(),
                }
                r = api.post("/v1/assign", json={"post": post})
                assert r.status_code == 200, r.text
                due = datetime.fromisoformat(r.json()["respond_by"])
                allowed[pid] = (due - created).total_seconds() / 60
            minutes = {
                "b1": 0.31 * allowed["b1"],
                "b2": allowed["b2"] + 37.3,  # late
                "b3": 0.62 * allowed["b3"],
                "b4": 0.11 * allowed["b4"],
            }
            outcomes = [
                {"post_id": "b1", "csat": 5, "nps": 10},
                {"post_id": "b2", "csat": 2, "nps": 3},
                {"post_id": "b3", "csat": 4, "nps": 9},
                {"post_id": "b4", "resolved": True},
            ]
            outcomes = [{**o, "first_response_minutes": minutes[o["post_id"]]} for o in outcomes]
            outcomes.append(
                {"post_id": "x9", "agent_id": "cy", "topic": "other_topic", "csat": 3,
                 "first_response_minutes": 21.7}
            )  # fmt: skip
            for fb in outcomes:
                r = api.post("/v1/feedback", json=fb)
                assert r.status_code == 200, r.text
            r = api.get("/v1/reports")
            assert r.status_code == 200, r.text
        yield srv, r.json()


def js_fixed(x: float, digits: int) -> str:
    """JavaScript's ``x.toFixed(digits)``: the exact binary value, ties away from zero."""
    q = Decimal(1).scaleb(-digits)
    return str(Decimal(x).quantize(q, rounding=ROUND_HALF_UP))


def expected_tiles(rep: dict) -> dict[str, tuple[str, float | None]]:
    """The text and value each tile should show, formatted as reports.js does."""
    fr, sla, sat = rep["first_response"], rep["sla"], rep["satisfaction"]["overall"]

    def minutes(x):
        return "–" if x is None else f"{js_fixed(x, 1)} min"

    def pct(x):
        return "–" if x is None else f"{js_fixed(x * 100, 1)}%"

    nps = sat["nps"]
    return {
        "cases": (str(rep["cases"]), rep["cases"]),
        "open": (str(rep["open"]), rep["open"]),
        "p50": (minutes(fr["p50"]), fr["p50"]),
        "p90": (minutes(fr["p90"]), fr["p90"]),
        "breach_rate": (pct(sla["rate"]), sla["rate"]),
        "overdue": (str(sla["overdue"]), sla["overdue"]),
        "csat": ("–" if sat["csat"] is None else js_fixed(sat["csat"], 2), sat["csat"]),
        "satisfied": (pct(sat["satisfied"]), sat["satisfied"]),
        "nps": ("–" if nps is None else ("+" if nps > 0 else "") + js_fixed(nps, 0), nps),
    }


def tiles(page) -> dict[str, tuple[str, str]]:
    return {
        card.get_attribute("data-kpi"): (
            card.query_selector("b").text_content(),
            card.query_selector("b").get_attribute("data-value"),
        )
        for card in page.query_selector_all("#kpis [data-kpi]")
    }


def bars(page, chart: str) -> list[dict[str, str]]:
    return [
        {"key": r.get_attribute("data-key"), "count": r.get_attribute("data-count")}
        for r in page.query_selector_all(f"#chart-{chart} svg rect")
    ]


def check_page_against(page, rep: dict) -> None:
    want = expected_tiles(rep)
    got = tiles(page)
    assert got.keys() == want.keys()
    for key, (text, value) in want.items():
        assert got[key][0] == text, key
        if value is None:
            assert got[key][1] == "", key
        else:
            assert float(got[key][1]) == pytest.approx(value), key
    # Histogram: one bar per bin, counts as the API's; breaches: one bar per level.
    hist = rep["first_response"]["histogram"]
    assert bars(page, "response") == [{"key": b["label"], "count": str(b["count"])} for b in hist]
    levels = rep["sla"]["by_level"]
    assert bars(page, "breaches") == [
        {"key": lv["level"], "count": str(lv["breached"])} for lv in levels
    ]
    # CSAT charts: one bar per group with a CSAT answer, in the API's order.
    for dim in ("topic", "agent", "channel"):
        groups = rep["satisfaction"][f"by_{dim}"]
        keys = [r["key"] for r in bars(page, dim)]
        assert keys == [g["key"] for g in groups if g["csat"] is not None], dim
        rows = page.query_selector_all(f"#table-{dim} tbody tr")
        assert len(rows) == max(1, len(groups)), dim


def test_a_lead_reads_the_report(server, tmp_path):
    srv, rep = server
    assert rep["cases"] == 6 and rep["first_response"]["responded"] == 5
    assert rep["sla"]["breached"] >= 1 and rep["satisfaction"]["overall"]["rated"] == 4
    requests: list[str] = []
    with browser_page(srv.url) as page:
        errors = collect_errors(page)
        page.on("request", lambda r: requests.append(r.url))
        sign_in(page, srv.url, "/reports", "lee")
        page.wait_for_selector("#kpis [data-kpi]")
        check_page_against(page, rep)
        assert page.input_value("#range-to") == datetime.now(UTC).date().isoformat()
        shot = tmp_path / "reports-page.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 10_000

        # A quick range: the last 30 days, kept in the address; the same cases.
        page.click("#range button[data-days='30']")
        page.wait_for_url(lambda u: "from=" in u)
        page.wait_for_function(
            "() => document.getElementById('range-shown').textContent.startsWith('6 cases')"
        )
        assert page.input_value("#range-from") == (
            (datetime.now(UTC) - timedelta(days=30)).date().isoformat()
        )

        # Dates in the past: nothing in range, no CSAT bars, the histogram keeps its bins.
        page.fill("#range-from", "2020-01-01")
        page.fill("#range-to", "2020-01-31")
        page.click("#range button[type=submit]")
        page.wait_for_function(
            "() => document.querySelector('[data-kpi=cases] b').textContent === '0'"
        )
        assert "from=2020-01-01" in page.url and "to=2020-02-01" in page.url
        with srv.client() as api:
            past = api.get("/v1/reports", params={"from": "2020-01-01", "to": "2020-02-01"})
        check_page_against(page, past.json())
        assert all(b["count"] == "0" for b in bars(page, "response"))
        assert bars(page, "topic") == []

        assert errors == []

        # A range that ends before it starts: the API's message, the figures left as they were
        # (Chromium logs the 422 itself as a failed load: that is the one error allowed).
        page.fill("#range-from", "2020-03-01")
        page.fill("#range-to", "2020-02-01")
        page.click("#range button[type=submit]")
        page.wait_for_selector("#report-error:not([hidden])")
        assert (page.text_content("#report-error") or "").startswith("to: must be after from")
        assert page.text_content("[data-kpi=cases] b") == "0"
        assert errors and all("422" in e for e in errors), errors
        errors.clear()

        # Reloading keeps the range from the address.
        page.goto(f"{srv.url}/reports?from=2020-01-01T00:00:00Z&to=2020-02-01T00:00:00Z")
        page.wait_for_selector("#kpis [data-kpi]")
        assert page.input_value("#range-from") == "2020-01-01"
        assert page.input_value("#range-to") == "2020-01-31"
        assert errors == []
    # Nothing but the server itself was asked for anything.
    elsewhere = [u for u in requests if not u.startswith((srv.url + "/", "data:"))]
    assert requests and elsewhere == []
    assert f"{srv.url}/static/reports.js" in requests
