"""The labeling workspace's pages and the JSON flow behind them, in process (TestClient):
sign-in (CSRF, cookie flags, throttling), who may see what, the pages' assets (local only),
and label -> undo -> label again -> stats -> review/resolve -> export."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.labeling.accounts import hash_password
from serving.settings import Settings

KEY = "test-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
PASSWORD = "password-123"
STATIC = Path(__file__).resolve().parent.parent / "serving" / "static"
POSTS = [
    "@united my bag never arrived in Denver",
    "@SouthwestAir thanks for the smooth flight",
    "@AmericanAir delayed three hours, no information",
    "@USAirways cancelled again, how do I rebook?",
]


def make_app(bundle: Path, tmp_path: Path, **kw):
    settings = Settings(
        api_keys=[KEY],
        model_dir=bundle,
        database_url=f"sqlite:///{tmp_path / 'pages.db'}",
        session_secret="pages-test-secret-" + "x" * 32,
        **{"agreement_share": 0.0, "audit_share": 0.0, **kw},
    )
    return create_app(settings)


@pytest.fixture
def app(onnx_bundle, tmp_path):
    app = make_app(onnx_bundle, tmp_path)
    with TestClient(app) as main:  # runs the lifespan: model loaded, store upgraded
        add_users(app, main)
        yield app


def add_users(app, main: TestClient) -> None:
    # Requests that reach the model batcher must go through the client that ran the lifespan
    # (its event loop); the others get clients of their own, for their own cookies.
    app.state.lifespan_client = main
    labels = app.state.workspace.labels
    hashed = hash_password(PASSWORD)
    for name, role in [("eva", "evaluator"), ("ed", "evaluator"), ("lee", "lead")]:
        labels.add_user(name, role, hashed)


def client(app) -> TestClient:
    """A browser of its own (own cookie jar) on the running app."""
    return TestClient(app, follow_redirects=False)


def form_csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, html
    return m.group(1)


def sign_in(c: TestClient, name: str, password: str = PASSWORD, nxt: str = "/label"):
    page = c.get(f"/login?next={nxt}")
    assert page.status_code == 200
    return c.post(
        "/login",
        data={"name": name, "password": password, "csrf": form_csrf(page.text), "next": nxt},
        follow_redirects=False,
    )


def signed_in(app, name: str, c: TestClient | None = None) -> tuple[TestClient, dict[str, str]]:
    """A client (new unless given) signed in as ``name`` and the CSRF header its pages carry."""
    c = c or client(app)
    assert sign_in(c, name).status_code == 303
    me = c.get("/v1/labeling/me")
    assert me.status_code == 200 and me.json()["name"] == name
    return c, {"X-CSRF-Token": me.json()["csrf_token"]}


def upload(app, texts) -> None:
    r = app.state.lifespan_client.post(
        "/v1/labeling/items", headers=AUTH, json={"items": [{"text": t} for t in texts]}
    )
    assert r.status_code == 200 and r.json()["added"] == len(texts), r.text


def answer(c, csrf, item, labels, key, **extra):
    body = {"kind": "label", "labels": labels, "idempotency_key": key, **extra}
    return c.post(f"/v1/labeling/items/{item['id']}/answer", headers=csrf, json=body)


def suggested(item) -> dict[str, str]:
    return {t: s["label"] for t, s in item["suggestion"].items()}


# -- sign-in ---------------------------------------------------------------------------------


def test_sign_in_sets_an_httponly_samesite_session_cookie(app):
    c = client(app)
    assert c.get("/label").headers["location"] == "/login?next=/label"
    r = sign_in(c, "eva")
    assert r.status_code == 303 and r.headers["location"] == "/label"
    cookie = next(
        v for v in r.headers.get_list("set-cookie") if v.startswith("caretriage_session=")
    )
    assert "httponly" in cookie.lower() and "samesite=lax" in cookie.lower()
    page = c.get("/label")
    assert page.status_code == 200 and "eva" in page.text
    # The page hands the script a CSRF token that the API accepts.
    csrf = re.search(r'data-csrf="([^"]+)"', page.text).group(1)
    assert csrf == c.get("/v1/labeling/me").json()["csrf_token"]
    # Sign out (with the token) ends the session.
    out = c.post("/logout", data={"csrf": csrf})
    assert out.status_code == 303
    assert c.get("/label").status_code == 303


def test_sign_in_never_redirects_off_site(app):
    r = sign_in(client(app), "eva", nxt="//evil.example/x")
    assert r.status_code == 303 and r.headers["location"] == "/label"


def test_wrong_password_is_401_then_throttled_with_retry_after(app):
    c = client(app)
    for _ in range(3):
        r = sign_in(c, "eva", "wrong-password-0")
        assert r.status_code == 401 and "Wrong name or password" in r.text
        assert "caretriage_session" not in r.headers.get("set-cookie", "")
    r = sign_in(c, "eva")  # even the right password waits now
    assert r.status_code == 429
    assert int(r.headers["Retry-After"]) >= 1
    assert "caretriage_session" not in r.headers.get("set-cookie", "")


def test_sign_in_without_the_form_token_is_refused(app):
    c = client(app)
    c.get("/login")  # the login cookie is there; the form field is not
    r = c.post("/login", data={"name": "eva", "password": PASSWORD})
    assert r.status_code == 400 and "caretriage_session" not in r.headers.get("set-cookie", "")
    r = c.post("/login", data={"name": "eva", "password": PASSWORD, "csrf": "forged"})
    assert r.status_code == 400


# -- who may do what -------------------------------------------------------------------------


def test_pages_need_a_session_and_the_role(app):
    anon = client(app)
    for path in ("/label", "/label/stats", "/label/review", "/label/users"):
        r = anon.get(path)
        assert r.status_code == 303 and r.headers["location"] == f"/login?next={path}"
    eva, _ = signed_in(app, "eva")
    assert eva.get("/label").status_code == 200
    for path in ("/label/stats", "/label/review", "/label/users"):
        r = eva.get(path)
        assert r.status_code == 403 and "Not for your role" in r.text
    assert eva.get("/v1/users").status_code == 403
    assert eva.get("/v1/labeling/stats").status_code == 403
    lee, _ = signed_in(app, "lee")
    assert lee.get("/label/stats").status_code == 200
    assert lee.get("/label/review").status_code == 200
    assert lee.get("/label/users").status_code == 403


def test_a_helpdesk_key_is_not_an_evaluator(app):
    upload(app, POSTS[:1])
    c = client(app)
    assert c.get("/v1/labeling/next", headers=AUTH).status_code == 401
    body = {"kind": "skip", "idempotency_key": "key-00000001"}
    assert c.post("/v1/labeling/items/1/answer", headers=AUTH, json=body).status_code == 401


def test_an_answer_without_the_csrf_header_is_refused(app):
    upload(app, POSTS[:1])
    eva, csrf = signed_in(app, "eva")
    item = eva.get("/v1/labeling/next?n=1").json()["items"][0]
    r = answer(eva, {}, item, suggested(item), "no-csrf-0001")
    assert r.status_code == 403
    r = answer(eva, {"X-CSRF-Token": "0" * 64}, item, suggested(item), "bad-csrf-0001")
    assert r.status_code == 403
    assert answer(eva, csrf, item, suggested(item), "good-csrf-001").status_code == 200


# -- the pages themselves --------------------------------------------------------------------


def test_the_label_page_lists_the_served_tasks_and_only_local_assets(app):
    eva, _ = signed_in(app, "eva")
    html = eva.get("/label").text
    schema = app.state.bundle.schema_
    pairs = json.loads(
        re.search(r'<script type="application/json" id="schema">(.*?)</script>', html).group(1)
    )
    assert pairs == [[t.name, list(t.labels)] for t in schema.tasks]  # the schema's order
    for element in ("done-count", "remaining", "status", "help", "empty", "flag-note"):
        assert f'id="{element}"' in html
    lee, _ = signed_in(app, "lee")
    pages = [html] + [lee.get(p).text for p in ("/label/stats", "/label/review")]
    assets = set()
    for page in pages:
        assert not re.search(r"https?://", page)
        assets |= set(re.findall(r'(?:src|href)="(/static/[^"]+)"', page))
        for ref in re.findall(r'<(?:script|link)[^>]*(?:src|href)="([^"]+)"', page):
            assert ref.startswith("/static/") or ref.startswith("data:"), ref
    assert assets == {"/static/label.css", "/static/label.js", "/static/admin.js"}
    for asset in assets:
        r = eva.get(asset)
        assert r.status_code == 200 and r.text
        assert not re.search(r"https?://|//cdn|import\s", r.text), asset
    for f in STATIC.iterdir():  # nothing shipped that loads from elsewhere either
        assert not re.search(r"https?://", f.read_text()), f


def test_the_users_page_is_for_admins(onnx_bundle, tmp_path):
    app = make_app(onnx_bundle, tmp_path)
    with TestClient(app) as main:
        add_users(app, main)
        app.state.workspace.labels.add_user("ada", "admin", hash_password(PASSWORD))
        ada, csrf = signed_in(app, "ada")
        page = ada.get("/label/users")
        assert page.status_code == 200 and 'id="add-user"' in page.text
        assert "/static/admin.js" in page.text
        r = ada.post(
            "/v1/users",
            headers=csrf,
            json={"name": "newbie", "role": "evaluator", "password": "p" * 12},
        )
        assert r.status_code in (200, 201), r.text
        r = ada.patch("/v1/users/newbie", headers=csrf, json={"role": "lead"})
        assert r.status_code == 200 and r.json()["role"] == "lead"
        r = ada.patch("/v1/users/newbie", headers=csrf, json={"disabled": True})
        assert r.status_code == 200 and r.json()["disabled"] is True
        names = {u["name"]: u for u in ada.get("/v1/users").json()}
        assert names["newbie"] == {"name": "newbie", "role": "lead", "disabled": True}
        assert sign_in(client(app), "newbie", "p" * 12).status_code == 401  # disabled


# -- the JSON flow the pages drive -------------------------------------------------------------


def test_label_undo_and_label_again(app):
    upload(app, POSTS)
    eva, csrf = signed_in(app, "eva")
    got = eva.get("/v1/labeling/next?n=2").json()
    first, preloaded = got["items"]
    assert got["remaining"] >= 2
    assert set(first["suggestion"]) == set(app.state.bundle.schema_.names)
    r = answer(eva, csrf, first, suggested(first), "first-answer-1", duration_ms=1200)
    assert r.status_code == 200 and r.json()["replay"] is False
    # A retry of the same request (same key) counts once.
    again = answer(eva, csrf, first, suggested(first), "first-answer-1")
    assert again.status_code == 200 and again.json()["replay"] is True
    assert again.json()["id"] == r.json()["id"]
    # The preloaded item is next.
    assert eva.get("/v1/labeling/next?n=2").json()["items"][0]["id"] == preloaded["id"]
    undone = eva.post("/v1/labeling/undo", headers=csrf)
    assert undone.status_code == 200 and undone.json()["item_id"] == first["id"]
    items = eva.get("/v1/labeling/next?n=2").json()["items"]
    assert [i["id"] for i in items] == [first["id"], preloaded["id"]]
    # Labeled again, changed: the new labels are the live ones.
    task = app.state.bundle.schema_.tasks[0]
    other = next(lab for lab in task.labels if lab != first["suggestion"][task.name]["label"])
    labels = {**suggested(first), task.name: other}
    assert answer(eva, csrf, first, labels, "first-answer-2").status_code == 200
    records = app.state.workspace.labels.records(kinds=("label",))
    assert [(r["item_id"], r["labels"]) for r in records] == [(first["id"], labels)]
    assert records[0]["changed"] == [task.name]
    # Undo takes back the second label too; then nothing is left to undo: 404.
    assert eva.post("/v1/labeling/undo", headers=csrf).status_code == 200
    assert eva.post("/v1/labeling/undo", headers=csrf).status_code == 404


def test_disagreement_is_reviewed_resolved_and_exported(onnx_bundle, tmp_path):
    app = make_app(onnx_bundle, tmp_path, agreement_share=1.0)
    with TestClient(app) as main:
        add_users(app, main)
        upload(app, POSTS[:1])
        eva, eva_csrf = signed_in(app, "eva")
        ed, ed_csrf = signed_in(app, "ed")
        lee, lee_csrf = signed_in(app, "lee")
        task = app.state.bundle.schema_.tasks[0]
        item = eva.get("/v1/labeling/next").json()["items"][0]
        assert item["needed"] == 2
        same = ed.get("/v1/labeling/next").json()["items"]
        assert [i["id"] for i in same] == [item["id"]]  # the second opinion
        mine = suggested(item)
        theirs = {**mine, task.name: next(x for x in task.labels if x != mine[task.name])}
        assert answer(eva, eva_csrf, item, mine, "eva-answer-01").json()["state"] == "open"
        assert answer(ed, ed_csrf, item, theirs, "ed-answer-001").json()["state"] == "review"

        stats = lee.get("/v1/labeling/stats").json()
        assert stats["pool"]["review"] == 1 and stats["records"] == 2
        assert set(stats["label_counts"]) == {"eva", "ed"}
        assert stats["label_counts"]["ed"][task.name] == {theirs[task.name]: 1}
        assert stats["tasks"][task.name]["items_multi"] == 1
        pair = stats["tasks"][task.name]["pairwise_kappa"]
        assert [(p["a"], p["b"], p["items"]) for p in pair] == [("ed", "eva", 1)]
        assert stats["tasks"][task.name]["suggestion"]["changed"] == 1

        queue = lee.get("/v1/labeling/review").json()
        assert [i["id"] for i in queue] == [item["id"]]
        answers = {a["evaluator"]: a["labels"] for a in queue[0]["answers"]}
        assert answers == {"eva": mine, "ed": theirs}
        assert eva.get("/v1/labeling/review").status_code == 403
        r = lee.post(
            f"/v1/labeling/items/{item['id']}/resolve",
            headers=lee_csrf,
            json={"labels": theirs, "idempotency_key": "resolve-0001"},
        )
        assert r.status_code == 200 and r.json()["state"] == "resolved"
        assert lee.get("/v1/labeling/review").json() == []

        export = lee.get("/v1/labeling/export?format=jsonl")
        assert export.status_code == 200
        assert "attachment" in export.headers["content-disposition"]
        rows = [json.loads(line) for line in export.text.splitlines()]
        by = {r["evaluator"]: r for r in rows}
        assert set(by) == {"eva", "ed", "lee"}
        assert json.loads(by["eva"]["labels_json"]) == mine
        assert json.loads(by["ed"]["labels_json"]) == theirs
        assert by["lee"]["final"] and json.loads(by["lee"]["labels_json"]) == theirs
        assert not by["eva"]["final"]
        assert eva.get("/v1/labeling/export").status_code == 403
        studio = lee.get("/v1/labeling/export?format=label-studio")
        assert studio.status_code == 200 and isinstance(studio.json(), list)


def test_a_lead_uploads_a_file_from_the_stats_page(app):
    # The upload scores the posts: through the lifespan's client (see add_users).
    lee, csrf = signed_in(app, "lee", app.state.lifespan_client)
    jsonl = b'{"text": "lost my bag"}\nnot json\n{"text": "lost my bag"}\n{"text": "thanks!"}\n'
    files = {"file": ("posts.jsonl", jsonl, "application/x-ndjson")}
    assert lee.post("/v1/labeling/items", files=files).status_code == 403  # no CSRF header
    r = lee.post("/v1/labeling/items", headers=csrf, files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["added"], body["duplicates"]) == (2, 1)
    assert [e["line"] for e in body["errors"]] == [2]
    eva, csrf = signed_in(app, "eva")
    assert eva.post("/v1/labeling/items", headers=csrf, files=files).status_code == 403


def test_a_disabled_account_is_signed_out_at_once(app):
    app.state.workspace.labels.add_user("root", "admin", hash_password(PASSWORD))
    eva, _ = signed_in(app, "eva")
    root, csrf = signed_in(app, "root")
    assert eva.get("/v1/labeling/next").status_code == 200  # now cached for a second
    r = root.patch("/v1/users/eva", headers=csrf, json={"disabled": True})
    assert r.status_code == 200 and r.json()["disabled"] is True
    assert eva.get("/v1/labeling/next").status_code == 401
    r = root.patch(
        "/v1/users/eva", headers=csrf, json={"disabled": False, "password": "another-password-1"}
    )
    assert r.status_code == 200
    assert eva.get("/v1/labeling/next").status_code == 401  # that session died with the password


# -- the deployment's schema: labeling a topic before a model has it ----------------------------


def test_evaluators_label_a_topic_the_served_model_lacks(onnx_bundle, tmp_path):
    """With CARETRIAGE_LABEL_SCHEMA naming the deployment's schema, the page and the API offer
    its new label and task (after the served ones, which keep their places); answers naming
    them are kept and exported. Without it, the same answer is refused by field."""
    import yaml

    from features.schema import LabelSchema

    served = LabelSchema.load(onnx_bundle / "label_schema.json")
    grown = served.model_dump()
    next(t for t in grown["tasks"] if t["name"] == "topic")["labels"].append("baggage_fees")
    grown["tasks"].append({"name": "urgency", "labels": ["low", "high"]})
    path = tmp_path / "label_schema.yaml"
    path.write_text(yaml.safe_dump(grown))

    def label_with_new_topic(app) -> tuple[int, dict]:
        upload(app, ["@united $35 to check a bag, really?"])
        eva, csrf = signed_in(app, "eva")
        item = eva.get("/v1/labeling/next").json()["items"][0]
        labels = {**suggested(item), "topic": "baggage_fees"}
        if "urgency" in eva.get("/v1/labeling/me").json()["tasks"]:
            labels["urgency"] = "high"
        r = answer(eva, csrf, item, labels, "key-0001")
        return r.status_code, r.json()

    plain = make_app(onnx_bundle, tmp_path / "plain")
    (tmp_path / "plain").mkdir()
    with TestClient(plain) as main:
        add_users(plain, main)
        status, body = label_with_new_topic(plain)
    assert status == 422 and "labels.topic" in body["fields"], body

    (tmp_path / "grown").mkdir()
    app = make_app(onnx_bundle, tmp_path / "grown", label_schema=path)
    with TestClient(app) as main:
        add_users(app, main)
        eva, _ = signed_in(app, "eva")
        tasks = eva.get("/v1/labeling/me").json()["tasks"]
        assert tasks["topic"] == [*served.task("topic").labels, "baggage_fees"]
        assert tasks["urgency"] == ["low", "high"]
        assert list(tasks)[: len(served.names)] == served.names
        html = eva.get("/label").text
        pairs = json.loads(
            re.search(r'<script type="application/json" id="schema">(.*?)</script>', html).group(1)
        )
        assert dict(pairs) == tasks
        status, body = label_with_new_topic(app)
        assert status == 200, body
        lee, _ = signed_in(app, "lee")
        rows = [json.loads(line) for line in lee.get("/v1/labeling/export").text.splitlines()]
    assert [(r["label_topic"], r["label_urgency"]) for r in rows] == [("baggage_fees", "high")]


def test_an_unreadable_deployment_schema_stops_start_up_by_name(onnx_bundle, tmp_path):
    bad = tmp_path / "schema.yaml"
    bad.write_text("tasks: [{name: topic, labels: [a]}]\n")
    app = make_app(onnx_bundle, tmp_path, label_schema=bad)
    refused = pytest.raises(ValueError, match=r"CARETRIAGE_LABEL_SCHEMA=.*schema\.yaml")
    with refused, TestClient(app):
        pass


def test_a_label_added_to_the_deployment_schema_is_offered_without_a_restart(
    onnx_bundle, tmp_path, monkeypatch, caplog
):
    import yaml

    from features.schema import LabelSchema
    from serving.labeling import workspace as ws_module

    monkeypatch.setattr(ws_module, "SCHEMA_TTL", 0.0)
    served = LabelSchema.load(onnx_bundle / "label_schema.json")
    path = tmp_path / "label_schema.yaml"
    path.write_text(yaml.safe_dump(served.model_dump()))
    app = make_app(onnx_bundle, tmp_path, label_schema=path)
    with TestClient(app) as main:
        add_users(app, main)
        eva, _ = signed_in(app, "eva")
        assert eva.get("/v1/labeling/me").json()["tasks"]["topic"] == served.task("topic").labels
        grown = served.model_dump()
        next(t for t in grown["tasks"] if t["name"] == "topic")["labels"].append("wifi")
        path.write_text(yaml.safe_dump(grown))
        os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # a distinct mtime
        topics = eva.get("/v1/labeling/me").json()["tasks"]["topic"]
        assert topics == [*served.task("topic").labels, "wifi"]
        path.write_text("tasks: [oops")  # a broken edit: logged, the last good one stays
        os.utime(path, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
        with caplog.at_level("ERROR", logger="caretriage.labeling"):
            assert eva.get("/v1/labeling/me").json()["tasks"]["topic"] == topics
        assert any("keeping the schema read before" in r.getMessage() for r in caplog.records)
