"""An evaluator labels in a real browser (Debian's Chromium through Playwright) with the
keyboard only: five posts, one changed from the suggestion, one undone and redone. A lead
then sees them on the stats page, and they are in the store and in the export."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from serving.labeling.accounts import hash_password
from serving.labeling.store import LabelingStore
from serving.store import Store
from tests.browser import browser_page, collect_errors, require_chromium
from tests.live import LiveServer, sqlite_url

pytestmark = pytest.mark.browser

PASSWORD = "password-0123"
POSTS = [
    "@united my bag never arrived in Denver and nobody answers the phone",
    "@SouthwestAir thanks for the smooth flight today",
    "@AmericanAir flight delayed three hours, no information at the gate",
    "@USAirways cancelled again, how do I rebook?",
    "@JetBlue the crew was wonderful, great service",
    "@united the seat was broken the whole way",
    "@VirginAmerica where do I find my receipt",
]


@pytest.fixture
def server(onnx_bundle, tmp_path):
    require_chromium()
    url = sqlite_url(tmp_path / "label.db")
    store = Store(url)
    store.upgrade()
    ws = LabelingStore(store)
    hashed = hash_password(PASSWORD)
    ws.add_user("eva", "evaluator", hashed)
    ws.add_user("lee", "lead", hashed)
    store.dispose()
    env = {
        "CARETRIAGE_SESSION_SECRET": "browser-test-secret-0123456789abcdef",
        "CARETRIAGE_AGREEMENT_SHARE": "0",
        "CARETRIAGE_AUDIT_SHARE": "0",
    }
    with LiveServer(onnx_bundle, tmp_path / "srv", database_url=url, env=env) as srv:
        r = httpx.post(
            f"{srv.url}/v1/labeling/items",
            headers=srv.auth_headers,
            json={"items": [{"text": t, "channel": "twitter"} for t in POSTS]},
            timeout=60,
        )
        assert r.status_code == 200 and r.json()["added"] == len(POSTS), r.text
        yield srv, url


def sign_in(page, base: str, path: str, name: str) -> None:
    page.goto(f"{base}{path}")
    page.keyboard.type(name)  # the name field has focus on arrival
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{base}{path}")


def shown(page) -> tuple[str, dict[str, str]]:
    """The post on screen and the label selected per task."""
    page.wait_for_selector("#item:not([hidden])")
    text = page.text_content("#text") or ""
    chosen = {}
    for fs in page.query_selector_all("fieldset.task"):
        task = (fs.query_selector(".task-name").text_content() or "").replace(" ", "_")
        pressed = fs.query_selector('button[aria-pressed="true"]')
        chosen[task] = re.sub(r"^\d ", "", pressed.text_content() or "").replace(" ", "_")
    return text, chosen


def confirm(page, count: int) -> None:
    """Wait until the server confirmed ``count`` labels this session."""
    page.wait_for_function(
        f"document.getElementById('done-count').textContent === '{count}'", timeout=15000
    )


def test_an_evaluator_labels_five_posts_with_the_keyboard(server, tmp_path):
    srv, url = server
    with browser_page(srv.url) as page:
        errors = collect_errors(page)
        sign_in(page, srv.url, "/label", "eva")
        expected: dict[str, dict[str, str]] = {}

        # 1. Accept every suggestion: one key.
        text, chosen = shown(page)
        page.keyboard.press("Enter")
        confirm(page, 1)
        expected[text] = chosen

        # 2. Change the sentiment: Tab to it, pick another label by number, Enter.
        text, chosen = shown(page)
        page.keyboard.press("Tab")  # actionability -> sentiment
        labels = [
            b.text_content() for b in page.query_selector_all("fieldset.task.active button.choice")
        ]
        current = chosen["sentiment"]
        other = next(i for i, lab in enumerate(labels) if re.sub(r"^\d ", "", lab or "") != current)
        page.keyboard.press(str(other + 1))
        changed_text, changed = shown(page)
        assert changed["sentiment"] != current
        page.keyboard.press("Enter")
        confirm(page, 2)
        expected[text] = changed

        # 3. Label, then undo: the same post comes back; label it again (this time changed).
        text, chosen = shown(page)
        page.keyboard.press("Enter")
        confirm(page, 3)
        page.keyboard.press("u")
        confirm(page, 2)
        again, _ = shown(page)
        assert again == text
        page.keyboard.press("ArrowDown")  # -> sentiment
        page.keyboard.press("ArrowDown")  # -> topic
        page.keyboard.press("ArrowRight")  # next topic label
        _, redone = shown(page)
        page.keyboard.press("Enter")
        confirm(page, 3)
        expected[text] = redone

        # 4, 5. Two more accepted.
        for n in (4, 5):
            text, chosen = shown(page)
            page.keyboard.press("Enter")
            confirm(page, n)
            expected[text] = chosen

        # `?` lists the shortcuts; Esc closes them.
        page.keyboard.press("?")
        assert page.is_visible("#help")
        assert "Undo your last answer" in (page.text_content("#help") or "")
        page.keyboard.press("Escape")
        assert not page.is_visible("#help")
        shot = tmp_path / "label-page.png"
        page.screenshot(path=str(shot))
        assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 10_000
        assert errors == []

    # The store holds exactly these five labels, by eva.
    store = Store(url)
    records = LabelingStore(store).records(kinds=("label",))
    store.dispose()
    got = {r["text"]: r["labels"] for r in records}
    assert got == expected
    assert {r["evaluator"] for r in records} == {"eva"}
    changed_rows = [r for r in records if r["changed"]]
    assert {r["text"] for r in changed_rows} >= {changed_text}

    # A lead sees them on the stats page and in the export.
    with browser_page(srv.url) as page:
        errors = collect_errors(page)
        sign_in(page, srv.url, "/label/stats", "lee")
        page.wait_for_selector("#per-evaluator tbody tr")
        row = page.text_content("#per-evaluator tbody tr") or ""
        assert row.startswith("eva") and "5" in row
        export = page.request.get(f"{srv.url}/v1/labeling/export?format=jsonl")
        assert export.ok
        rows = [json.loads(line) for line in export.text().splitlines()]
        assert errors == []
    assert {r["text"]: json.loads(r["labels_json"]) for r in rows} == expected
    assert all(r["evaluator"] == "eva" and r["final"] for r in rows)
    assert any(r["changed"] for r in rows)
