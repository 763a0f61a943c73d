"""Accounts and roles on the labeling workspace, in process: sign-in with CSRF and slow-down,
session cookies, who may do what, and the labeling flow over the JSON API."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.labeling.accounts import hash_password
from serving.settings import Settings

KEY = "test-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
PASSWORD = "password-0123"
STATIC = Path(__file__).resolve().parent.parent / "serving" / "static"


@pytest.fixture
def app(onnx_bundle, tmp_path):
    settings = Settings(
        api_keys=[KEY],
        model_dir=onnx_bundle,
        database_url=f"sqlite:///{tmp_path / 'pages.db'}",
        session_secret="pages-test-secret-0123456789abcdef",
        agreement_share=1.0,
        audit_share=0.0,
    )
    application = create_app(settings)
    with TestClient(application) as c:
        ws = application.state.workspace.labels
        hashed = hash_password(PASSWORD)
        for name, role in [("eva", "evaluator"), ("bo", "evaluator"), ("lee", "lead")]:
            ws.add_user(name, role, hashed)
        ws.add_user("root", "admin", hashed)
        c.post("/v1/labeling/items", headers=AUTH, json={"items": [{"text": "bag lost"}]})
        yield application


def client(app) -> TestClient:
    return TestClient(app, follow_redirects=False)


def login(c: TestClient, name: str, password: str = PASSWORD, **form):
    page = c.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    return c.post(
        "/login", data={"name": name, "password": password, "csrf": csrf, "next": "/label", **form}
    )


def signed_in(app, name: str) -> TestClient:
    c = client(app)
    assert login(c, name).status_code == 303
    c.headers["X-CSRF-Token"] = c.get("/v1/labeling/me").json()["csrf_token"]
    return c


def test_sign_in_sets_a_signed_httponly_samesite_cookie(app):
    c = client(app)
    r = login(c, "eva")
    assert r.status_code == 303 and r.headers["location"] == "/label"
    cookie = r.headers["set-cookie"]
    assert "caretriage_session=" in cookie and "HttpOnly" in cookie
    assert "samesite=lax" in cookie.lower()
    assert c.get("/label").status_code == 200
    forged = client(app)
    forged.cookies.set("caretriage_session", "1.forged.signature")
    assert forged.get("/label").status_code == 303


def test_sign_in_needs_the_form_token(app):
    c = client(app)
    c.get("/login")
    r = c.post("/login", data={"name": "eva", "password": PASSWORD, "csrf": "nope"})
    assert r.status_code == 400 and "caretriage_session" not in r.headers.get("set-cookie", "")


def test_failed_sign_ins_are_slowed_down(app):
    c = client(app)
    for _ in range(3):
        assert login(c, "eva", "wrong-password").status_code == 401
    r = login(c, "eva")  # even the right password waits now
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    for _ in range(3):
        assert login(c, "nobody", "wrong-password").status_code == 401
    assert login(c, "nobody", "wrong-password").status_code == 429


def test_pages_redirect_to_sign_in_and_check_roles(app):
    c = client(app)
    r = c.get("/label/stats")
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/label/stats"
    eva = signed_in(app, "eva")
    assert eva.get("/label").status_code == 200
    assert eva.get("/label/stats").status_code == 403
    assert eva.get("/v1/labeling/stats").status_code == 403
    assert eva.get("/v1/users").status_code == 403
    lee = signed_in(app, "lee")
    assert lee.get("/label/stats").status_code == 200
    assert lee.get("/v1/users").status_code == 403
    root = signed_in(app, "root")
    assert root.get("/label/users").status_code == 200
    assert [u["name"] for u in root.get("/v1/users").json()] == ["bo", "eva", "lee", "root"]


def test_a_helpdesk_key_cannot_label(app):
    c = client(app)
    assert c.get("/v1/labeling/next", headers=AUTH).status_code == 401
    r = c.post(
        "/v1/labeling/items/1/answer",
        headers=AUTH,
        json={"kind": "skip", "idempotency_key": "key-00000001"},
    )
    assert r.status_code == 401


def test_state_changes_need_the_csrf_header(app):
    eva = signed_in(app, "eva")
    (item,) = eva.get("/v1/labeling/next").json()["items"]
    body = {"kind": "skip", "idempotency_key": "key-00000002"}
    r = eva.post(f"/v1/labeling/items/{item['id']}/answer", json=body, headers={"X-CSRF-Token": ""})
    assert r.status_code == 403 and "CSRF" in r.json()["message"]
    assert eva.post(f"/v1/labeling/items/{item['id']}/answer", json=body).status_code == 200


def test_label_validation_names_the_task(app):
    eva = signed_in(app, "eva")
    (item,) = eva.get("/v1/labeling/next").json()["items"]
    tasks = eva.get("/v1/labeling/me").json()["tasks"]
    labels = {t: labs[0] for t, labs in tasks.items()}
    bad = {**labels, "sentiment": "furious"}
    r = eva.post(
        f"/v1/labeling/items/{item['id']}/answer",
        json={"labels": bad, "idempotency_key": uuid.uuid4().hex},
    )
    assert r.status_code == 422 and r.json()["fields"] == ["labels.sentiment"]
    partial = {"topic": labels["topic"]}
    r = eva.post(
        f"/v1/labeling/items/{item['id']}/answer",
        json={"labels": partial, "idempotency_key": uuid.uuid4().hex},
    )
    assert r.status_code == 422 and "labels.sentiment" in r.json()["fields"]


def test_disagreement_goes_to_review_and_a_lead_resolves_it(app):
    eva, bo, lee = signed_in(app, "eva"), signed_in(app, "bo"), signed_in(app, "lee")
    tasks = eva.get("/v1/labeling/me").json()["tasks"]
    for who, pick in ((eva, 0), (bo, 1)):
        (item,) = who.get("/v1/labeling/next").json()["items"]
        labels = {t: labs[pick] for t, labs in tasks.items()}
        r = who.post(
            f"/v1/labeling/items/{item['id']}/answer",
            json={"labels": labels, "idempotency_key": uuid.uuid4().hex},
        )
        assert r.status_code == 200
    assert r.json()["state"] == "review"
    (waiting,) = lee.get("/v1/labeling/review").json()
    assert {a["evaluator"] for a in waiting["answers"]} == {"eva", "bo"}
    final = {t: labs[0] for t, labs in tasks.items()}
    r = lee.post(
        f"/v1/labeling/items/{waiting['id']}/resolve",
        json={"labels": final, "idempotency_key": uuid.uuid4().hex},
    )
    assert r.status_code == 200 and r.json()["state"] == "resolved"
    stats = lee.get("/v1/labeling/stats").json()
    assert stats["pool"]["resolved"] == 1
    assert stats["tasks"]["topic"]["pairwise_kappa"][0]["items"] == 1
    assert (
        eva.post(
            f"/v1/labeling/items/{waiting['id']}/resolve",
            json={"labels": final, "idempotency_key": uuid.uuid4().hex},
        ).status_code
        == 403
    )


def test_pages_load_nothing_from_other_hosts(app):
    root = signed_in(app, "root")
    for path in ("/label", "/label/stats", "/label/review", "/label/users", "/login"):
        html = root.get(path).text
        assert not re.search(r"(src|href)=\"(https?:)?//", html), path
    for asset in STATIC.iterdir():
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", asset.read_text()), asset
    assert root.get("/static/label.js").status_code == 200


def test_the_page_names_every_task_of_the_served_schema(app):
    eva = signed_in(app, "eva")
    html = eva.get("/label").text
    schema = app.state.bundle.schema_
    for task in schema.tasks:
        assert f'"{task.name}"' in html and all(f'"{lab}"' in html for lab in task.labels)
