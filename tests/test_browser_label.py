"""An evaluator labels in a real browser (Debian's Chromium through Playwright) with the
keyboard only: five posts, one changed from the suggestion, one undone and redone. A lead
then sees them on the stats page, and they are in the store and in the export."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from features.schema import LabelSchema
from serving.labeling.accounts import hash_password
from serving.labeling.store import LabelingStore
from serving.store import Store
from tests.browser import browser_page, collect_errors, require_chromium
from tests.live import LiveServer, sqlite_url

pytestmark = pytest.mark.browser

PASSWORD = "password-0123"
CUSTOMER = {"id": "C-20417", "tier": "gold", "lifetime_value": 18450, "open_tickets": 2}
POSTS = [
    ("@united my bag never arrived in Denver and nobody answers the phone", "dana_k", True),
    ("@SouthwestAir thanks for the smooth flight today", "mike.travels", True),
    ("@AmericanAir flight delayed three hours, no information at the gate", "p_ortega", True),
    ("@USAirways cancelled again, how do I rebook?", "jwu", True),
    ("@JetBlue the crew was wonderful, great service", "sam_flies", True),
    ("@united the seat was broken the whole way", "rk_1988", True),
    ("@VirginAmerica where do I find my receipt", "lena.b", False),
    ("@delta my refund was promised two weeks ago and still nothing", "tomasz", True),
    ("@united stuck on the tarmac for an hour with no air conditioning", "ana_maria", True),
    ("@SouthwestAir can I change my seat online after check-in?", "bgreen", False),
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
    items = [
        {
            "text": text,
            "channel": "twitter",
            "author": {"handle": handle, "followers": 1200 + 731 * i, "verified": i % 3 == 0},
            **({"customer": {**CUSTOMER, "open_tickets": i % 3}} if customer else {}),
        }
        for i, (text, handle, customer) in enumerate(POSTS)
    ]
    with LiveServer(onnx_bundle, tmp_path / "srv", database_url=url, env=env) as srv:
        r = httpx.post(
            f"{srv.url}/v1/labeling/items",
            headers=srv.auth_headers,
            json={"items": items},
            timeout=60,
            trust_env=False,
        )
        assert r.status_code == 200 and r.json()["added"] == len(POSTS), r.text
        yield srv, url


def sign_in(page, base: str, path: str, name: str) -> None:
    page.goto(f"{base}{path}")
    assert "/login" in page.url  # no session yet: the sign-in form, which comes back here
    # The name field has focus on arrival (autofocus): wait for it rather than type into nothing.
    page.wait_for_function("document.activeElement && document.activeElement.name === 'name'")
    page.keyboard.type(name)
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    try:
        page.wait_for_url(f"{base}{path}")
    except Exception as e:  # say why: the form's message (expired, wrong password, throttled)
        raise AssertionError(f"sign-in as {name} failed: {page.text_content('main')}") from e


def shown(page) -> tuple[str, dict[str, str]]:
    """The post on screen and the label selected (aria-pressed) per task."""
    page.wait_for_selector("#item:not([hidden])")
    text = page.text_content("#text") or ""
    chosen = {}
    for fs in page.query_selector_all("#tasks fieldset.task"):
        pressed = fs.query_selector_all('button.choice[aria-pressed="true"]')
        assert len(pressed) == 1
        chosen[fs.get_attribute("data-task")] = pressed[0].get_attribute("data-label")
    return text, chosen


def suggested(page) -> dict[str, str]:
    return {
        fs.get_attribute("data-task"): fs.query_selector("button.suggested").get_attribute(
            "data-label"
        )
        for fs in page.query_selector_all("#tasks fieldset.task")
    }


def active_task(page) -> str:
    return page.get_attribute("#tasks fieldset.task.active", "data-task") or ""


def confirm(page, count: int) -> None:
    """Wait until the server confirmed ``count`` labels this session."""
    page.wait_for_function(
        f"document.getElementById('done-count').textContent === '{count}'", timeout=15000
    )


def test_an_evaluator_labels_five_posts_with_the_keyboard(server, onnx_bundle, tmp_path):
    srv, url = server
    schema = LabelSchema.load(Path(onnx_bundle) / "label_schema.json")
    with browser_page(srv.url) as page:
        errors = collect_errors(page)
        sign_in(page, srv.url, "/label", "eva")
        expected: dict[str, dict[str, str]] = {}

        # 1. Every suggestion is right: one key.
        text, chosen = shown(page)
        assert chosen == suggested(page)  # the model's labels come pre-selected
        assert "suggested 0." in (page.text_content("#tasks") or "")
        task_names = [
            f.get_attribute("data-task") for f in page.query_selector_all("fieldset.task")
        ]
        assert task_names == list(schema.names) and len(task_names) >= 2
        page.keyboard.press("Enter")
        confirm(page, 1)
        expected[text] = chosen

        # 2. Change the second task: Tab to it, pick another label by its number, Enter.
        text, chosen = shown(page)
        assert text not in expected
        assert active_task(page) == task_names[0]
        page.keyboard.press("Tab")
        second = task_names[1]
        assert active_task(page) == second
        labels = [
            b.get_attribute("data-label")
            for b in page.query_selector_all("fieldset.task.active button.choice")
        ]
        other = next(i for i, lab in enumerate(labels) if lab != chosen[second])
        page.keyboard.press(str(other + 1))
        changed_text, changed = shown(page)
        assert changed == {**chosen, second: labels[other]}
        page.keyboard.press("Enter")
        confirm(page, 2)
        expected[text] = changed

        # 3. Label, then undo: the same post comes back first; label it again, changed.
        text, chosen = shown(page)
        page.keyboard.press("Enter")
        confirm(page, 3)
        page.keyboard.press("u")
        confirm(page, 2)
        page.wait_for_function("t => document.getElementById('text').textContent === t", arg=text)
        last = task_names[-1]
        for _ in task_names[1:]:
            page.keyboard.press("ArrowDown")
        assert active_task(page) == last
        page.keyboard.press("ArrowRight")  # the next label of the last task
        _, redone = shown(page)
        assert redone[last] != chosen[last]
        page.keyboard.press("Enter")
        confirm(page, 3)
        expected[text] = redone

        # 4. Accepted as suggested.
        text, chosen = shown(page)
        page.keyboard.press("Enter")
        confirm(page, 4)
        expected[text] = chosen

        # A post on screen, four labeled: the page renders (the README's screenshot is taken
        # the same way on the shipped model; a test never writes into the repository).
        text, chosen = shown(page)
        page.wait_for_timeout(300)  # let the "saved" status settle
        shot = tmp_path / "label-page.png"
        page.screenshot(path=str(shot))
        assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 10_000

        # `?` lists the shortcuts (modal: keys do nothing behind it); Esc closes it.
        page.keyboard.press("?")
        assert page.is_visible("#help")
        listed = page.text_content("#help") or ""
        for what in ("Enter", "Skip", "Flag", "Undo", "Ctrl", "Tab", "Filter", "Esc"):
            assert what in listed
        page.keyboard.press("Enter")  # swallowed by the open list
        page.keyboard.press("Escape")
        assert not page.is_visible("#help")
        assert page.text_content("#done-count") == "4"

        # 5. Accepted as suggested.
        page.keyboard.press("Enter")
        confirm(page, 5)
        expected[text] = chosen
        assert len(expected) == 5
        assert errors == []

    # The store holds exactly these five labels, by eva.
    store = Store(url)
    records = LabelingStore(store).records(kinds=("label",))
    store.dispose()
    got = {r["text"]: r["labels"] for r in records}
    assert got == expected
    assert {r["evaluator"] for r in records} == {"eva"}
    by_text = {r["text"]: r for r in records}
    assert second in (by_text[changed_text]["changed"] or [])

    # A lead sees them on the stats page and in the export.
    with browser_page(srv.url) as page:
        errors = collect_errors(page)
        sign_in(page, srv.url, "/label/stats", "lee")
        page.wait_for_selector("#per-evaluator tbody tr")
        cells = [c.text_content() for c in page.query_selector_all("#per-evaluator tbody tr td")]
        assert cells[:2] == ["eva", "5"]
        assert page.query_selector("#per-evaluator-chart svg rect") is not None
        counts = page.text_content("#counts") or ""
        assert "eva" in counts and changed[second] in counts
        export = page.request.get(f"{srv.url}/v1/labeling/export?format=jsonl")
        assert export.ok
        rows = [json.loads(line) for line in export.text().splitlines()]
        assert errors == []
    assert {r["text"]: json.loads(r["labels_json"]) for r in rows} == expected
    assert all(r["evaluator"] == "eva" and r["final"] for r in rows)
    changed_row = next(r for r in rows if r["text"] == changed_text)
    assert changed_row[f"label_{second}"] == changed[second] and second in changed_row["changed"]
