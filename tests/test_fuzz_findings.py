"""What schemathesis (every check, ``benchmarks/fuzz.py``) found against the running server on
SQLite and PostgreSQL, one regression test per defect, on both stores:

- a path id past PostgreSQL's INTEGER was a 500 there ("integer out of range");
- an upload body that is not multipart, though it says so, was an undocumented 400, and a
  request with no body at all a 200 that "added 0";
- the OpenAPI document named a component it lacked (``UploadRequest``) and left the export's
  media types out;
- JSON values of the wrong type were coerced instead of refused: ``false`` was stored as a
  CSAT of 0.0, ``0`` read as ``"disabled": false``, ``0`` and ``"0.5"`` as timestamps in 1970.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.labeling.accounts import hash_password
from serving.settings import Settings
from tests.test_api import AUTH, KEY, assert_error
from tests.test_hardening_input import database
from tests.test_label_pages import PASSWORD, signed_in

ADMIN_KEY = "fuzz-findings-admin-key-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
TOO_BIG = 8_429_212_958_646  # the id schemathesis sent: past 2**31 - 1


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def app(request, onnx_bundle, tmp_path_factory):
    settings = Settings(
        api_keys=[KEY],
        admin_keys=[ADMIN_KEY],
        model_dir=onnx_bundle,
        database_url=database(request.param, request, tmp_path_factory),
        session_secret="fuzz-findings-secret-" + "x" * 32,
    )
    app = create_app(settings)
    with TestClient(app) as main:
        app.state.lifespan_client = main
        app.state.workspace.labels.add_user("ada", "admin", hash_password(PASSWORD))
        yield app


@pytest.fixture
def api(app) -> TestClient:
    return app.state.lifespan_client


@pytest.fixture(scope="module")
def admin(app) -> tuple[TestClient, dict[str, str]]:
    return signed_in(app, "ada", TestClient(app, follow_redirects=False))


# -- ids past the store's integers --------------------------------------------------------------


def test_a_dictionary_version_past_the_integer_range_is_a_422(api):
    r = api.get(f"/v1/admin/dictionary/versions/{TOO_BIG}", headers=ADMIN)
    assert_error(r, 422, "validation_failed", "version")
    assert api.get("/v1/admin/dictionary/versions/1", headers=ADMIN).status_code == 200
    assert api.get("/v1/admin/dictionary/versions/99", headers=ADMIN).status_code == 404


@pytest.mark.parametrize("action", ["answer", "resolve"])
def test_an_item_id_past_the_integer_range_is_a_422(admin, action):
    c, csrf = admin
    body: dict[str, Any] = {"labels": {}, "idempotency_key": "fuzz-0001"}
    r = c.post(f"/v1/labeling/items/{TOO_BIG}/{action}", headers=csrf, json=body)
    assert_error(r, 422, "validation_failed", "item_id")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PUT", "/v1/admin/dictionary", {"dictionary": {}, "expected_version": TOO_BIG}),
        ("PUT", "/v1/admin/experiment", {"experiment": {}, "expected_version": TOO_BIG}),
    ],
)
def test_an_expected_version_past_the_integer_range_is_a_422(api, method, path, body):
    r = api.request(method, path, headers=ADMIN, json=body)
    assert r.status_code == 422
    assert "expected_version" in r.json()["fields"]


# -- uploads --------------------------------------------------------------------------------------


def test_an_unparsable_multipart_upload_is_a_422_naming_the_body(api):
    boundary = "d7506626f6db83968305a21ff281ab18"
    r = api.post(
        "/v1/labeling/items",
        headers={**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}"},
        content=f"--{boundary}\r\n1255--{boundary}--\r\n".encode(),
    )
    body = assert_error(r, 422, "validation_failed", "body")
    assert "multipart" in body["message"]


def test_an_upload_without_a_body_is_a_422(api):
    r = api.post("/v1/labeling/items", headers=AUTH)
    assert_error(r, 422, "validation_failed", "body")
    # An empty file is still a file (its type says what it is): it has no rows, as before.
    for empty in (
        {"headers": {**AUTH, "Content-Type": "text/csv"}, "content": b""},
        {"headers": AUTH, "files": {"file": ("empty.csv", b"")}},
    ):
        r = api.post("/v1/labeling/items", **empty)
        assert r.status_code == 200, r.text
        assert r.json()["errors"][0]["message"] == "the file has no rows"


# -- the OpenAPI document -------------------------------------------------------------------------


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_every_reference_in_the_openapi_document_resolves(api):
    doc = api.get("/openapi.json").json()
    components = doc["components"]["schemas"]
    refs = set(_refs(doc))
    assert "#/components/schemas/UploadRequest" in refs
    missing = {r for r in refs if r.removeprefix("#/components/schemas/") not in components}
    assert missing == set()
    upload = components["UploadRequest"]["properties"]["items"]["items"]
    assert upload == {"$ref": "#/components/schemas/UploadPost"}


def test_every_operation_documents_the_middleware_answers(api):
    """429 wherever a key is checked, 408 and 413 wherever a body is read: the middleware can
    give them on every such route, and schemathesis's status-code check reads the document."""
    doc = api.get("/openapi.json").json()
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            codes = set(op["responses"])
            if op.get("security") or path.startswith("/v1/admin/"):
                assert "429" in codes, (method, path)
            if "requestBody" in op:
                assert {"408", "413"} <= codes, (method, path)


def test_the_export_answers_in_the_media_types_it_documents(api, admin):
    doc = api.get("/openapi.json").json()
    documented = doc["paths"]["/v1/labeling/export"]["get"]["responses"]["200"]["content"]
    c, csrf = admin
    for fmt in ("jsonl", "label-studio"):
        r = c.get("/v1/labeling/export", headers=csrf, params={"format": fmt})
        assert r.status_code == 200
        assert r.headers["content-type"].split(";")[0] in documented


# -- values of the wrong JSON type ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("agent", "field"),
    [
        ({"id": "a", "csat": {"lost_luggage": False}}, "csat.lost_luggage"),
        ({"id": "a", "first_response_minutes": {"lost_luggage": True}}, "first_response_minutes"),
        ({"id": "a", "skills": {"lost_luggage": "0.9"}}, "skills.lost_luggage"),
        ({"id": "a", "capacity": "8"}, "capacity"),
        ({"id": "a", "capacity": 8.0}, "capacity"),
        ({"id": "a", "status": 1}, "status"),
    ],
)
def test_an_agent_value_of_the_wrong_type_is_refused_not_coerced(api, agent, field):
    r = api.put("/v1/agents/a", headers=AUTH, json=agent)
    body = assert_error(r, 422, "validation_failed")
    assert any(f.startswith(field) for f in body["fields"]), body
    assert api.get("/v1/agents/a", headers=AUTH).status_code == 404  # nothing was written


def test_numbers_of_the_right_type_are_still_accepted(api):
    agent = {"id": "b", "skills": {"lost_luggage": 1}, "csat": {"lost_luggage": 0.5}}
    r = api.put("/v1/agents/b", headers=AUTH, json={**agent, "capacity": 8, "status": "away"})
    assert r.status_code in (200, 201), r.text
    assert r.json()["skills"] == {"lost_luggage": 1.0} and r.json()["status"] == "away"
    assert api.delete("/v1/agents/b", headers=AUTH).status_code == 204


@pytest.mark.parametrize(
    "body",
    [
        {"as_of": 0, "posts": [{"id": "a", "text": "my bag"}]},
        {"as_of": "1700000000", "posts": [{"id": "a", "text": "my bag"}]},
        {"posts": [{"id": "a", "text": "my bag", "created_at": 1700000000}]},
        {"posts": [{"id": "a", "text": "my bag", "author": {"followers": "25000"}}]},
        {"posts": [{"id": "a", "text": "my bag", "author": {"verified": 1}}]},
        {"posts": [{"id": "a", "text": "my bag", "customer": {"lifetime_value": True}}]},
    ],
)
def test_a_score_request_with_a_value_of_the_wrong_type_is_refused(api, body):
    assert_error(api.post("/v1/score", headers=AUTH, json=body), 422, "validation_failed")


def test_iso_timestamps_and_channel_names_are_still_read(api):
    post = {
        "id": "a",
        "text": "my bag",
        "channel": "facebook",
        "created_at": "2026-01-02T03:04:05+01:00",
        "customer": {"recent_contacts": [{"channel": "phone", "at": "2026-01-02T01:00:00"}]},
    }
    r = api.post("/v1/score", headers=AUTH, json={"as_of": "2026-01-02", "posts": [post]})
    assert r.status_code == 200, r.text


def test_contacts_and_feedback_refuse_numbers_as_timestamps(api):
    r = api.post(
        "/v1/contacts",
        headers=AUTH,
        json={"contacts": [{"customer_id": "c", "channel": "chat", "at": 0}]},
    )
    assert_error(r, 422, "validation_failed", "contacts.0.at")
    r = api.post("/v1/feedback", headers=AUTH, json={"post_id": "p", "first_response_at": 0})
    assert_error(r, 422, "validation_failed", "first_response_at")


def test_report_bounds_must_be_dates_not_seconds(api):
    assert_error(
        api.get("/v1/reports", headers=AUTH, params={"to": "0.5"}), 422, "validation_failed", "to"
    )
    r = api.get("/v1/reports", headers=AUTH, params={"from": "2026-01-01", "to": "2026-01-08"})
    assert r.status_code == 200, r.text


def test_a_user_patch_takes_booleans_only(admin, app):
    app.state.workspace.labels.add_user("eva-fuzz", "evaluator", hash_password(PASSWORD))
    c, csrf = admin
    r = c.patch("/v1/users/eva-fuzz", headers=csrf, json={"disabled": 0})
    assert_error(r, 422, "validation_failed", "disabled")
    r = c.patch("/v1/users/eva-fuzz", headers=csrf, json={"disabled": True})
    assert r.status_code == 200 and r.json()["disabled"] is True
