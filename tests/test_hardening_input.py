"""Input an independent probe found mishandled (issue 21), over HTTP on both stores.

Lone surrogates (JSON's unpaired "\\ud800" escapes) in an agent were a 500, and on SQLite the
row was committed first, so the roster answered 500 until the agent was removed; as dictionary
keys they were rewritten to U+FFFD, merging keys and losing a value. The same held for labeling
uploads, answers and notes. Duplicate post ids were scored twice; a too-deep or too-long JSON
body was called "not UTF-8". Every string a request carries now passes one check
(``serving.schemas.Text`` / ``Stored``), and each case here is a 422 naming the field, before
anything is written.
"""

from __future__ import annotations

import json
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from serving.app import create_app
from serving.errors import ValidationFailed, error_response
from serving.labeling.accounts import hash_password
from serving.settings import Settings
from tests.conftest import PG_URL
from tests.test_api import AUTH, KEY, assert_error
from tests.test_label_pages import PASSWORD, signed_in

JSON = {"Content-Type": "application/json"}


def send(c: TestClient, method: str, path: str, text: str, headers: dict | None = None):
    """JSON text as is: a client library would refuse to encode a lone surrogate."""
    return c.request(method, path, headers={**AUTH, **JSON, **(headers or {})}, content=text)


def database(kind: str, request, tmp_path_factory) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('hardening') / 'h.db'}"
    schema = request.getfixturevalue("pg_schemas")()  # skips (fails under CI) without a server
    url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def app(request, onnx_bundle, tmp_path_factory):
    """The app on each store, with an evaluator, a lead and an admin."""
    settings = Settings(
        api_keys=[KEY],
        model_dir=onnx_bundle,
        database_url=database(request.param, request, tmp_path_factory),
        session_secret="hardening-test-secret-" + "x" * 32,
        agreement_share=0.0,
        audit_share=0.0,
    )
    app = create_app(settings)
    with TestClient(app) as main:
        app.state.lifespan_client = main
        hashed = hash_password(PASSWORD)
        for name, role in [("eva", "evaluator"), ("lee", "lead"), ("ada", "admin")]:
            app.state.workspace.labels.add_user(name, role, hashed)
        yield app


@pytest.fixture
def api(app) -> TestClient:
    """The client that ran the lifespan (requests reaching the batcher need its loop)."""
    return app.state.lifespan_client


@pytest.fixture
def roster(api):
    """One agent, ``keep``, before each test; the roster must hold exactly it afterwards."""
    assert api.put("/v1/agents", headers=AUTH, json={"agents": [{"id": "keep"}]}).status_code == 200
    yield
    assert [a["id"] for a in api.get("/v1/agents", headers=AUTH).json()["agents"]] == ["keep"]
    assert api.get("/v1/agents/keep", headers=AUTH).status_code == 200


# -- agents -------------------------------------------------------------------------------------


BAD_TEXT = [
    ('"languages": ["\\ud800"]', "languages.0"),
    ('"name": "\\ud800"', "name"),
    ('"name": "ok \\udfff then"', "name"),
    ('"work_group": "\\udc00\\ud800"', "work_group"),  # reversed: not a pair
    ('"id": "a\\ud800"', "id"),
]


@pytest.mark.parametrize(("member", "field"), BAD_TEXT)
def test_lone_surrogate_in_a_roster_is_422_and_writes_nothing(api, roster, member, field):
    r = send(api, "PUT", "/v1/agents", '{"agents": [{"id": "a", ' + member + "}]}")
    body = assert_error(r, 422, "validation_failed", f"agents.0.{field}")
    assert "not valid Unicode" in body["message"]
    assert_error(api.get("/v1/agents/a", headers=AUTH), 404, "not_found")


@pytest.mark.parametrize(("member", "field"), BAD_TEXT)
def test_lone_surrogate_in_one_agent_is_422_and_writes_nothing(api, roster, member, field):
    r = send(api, "PUT", "/v1/agents/a", '{"id": "a", ' + member + "}")
    assert_error(r, 422, "validation_failed", field)
    assert_error(api.get("/v1/agents/a", headers=AUTH), 404, "not_found")


@pytest.mark.parametrize("key", ["skills", "csat", "first_response_minutes"])
def test_surrogate_dictionary_keys_are_422_not_merged(api, roster, key):
    # Both keys used to be stored as one key of three U+FFFD, keeping only 0.9.
    figures = '{"\\ud800": 0.1, "\\udc00": 0.9}'
    r = send(api, "PUT", "/v1/agents", '{"agents": [{"id": "a", "' + key + '": ' + figures + "}]}")
    body = assert_error(r, 422, "validation_failed")
    assert body["fields"] and all(f.startswith(f"agents.0.{key}.") for f in body["fields"])
    assert "not valid Unicode" in body["message"]
    r = send(api, "PUT", "/v1/agents/a", '{"id": "a", "' + key + '": ' + figures + "}")
    assert_error(r, 422, "validation_failed")
    assert_error(api.get("/v1/agents/a", headers=AUTH), 404, "not_found")


def test_paired_surrogates_are_text_and_kept(api, roster):
    """An escaped pair is one character beyond the BMP: valid, stored and read back as sent."""
    text = (
        '{"id": "a", "name": "Ana \\ud83d\\ude00", "languages": ["\\ud83d\\udc4d"],'
        ' "skills": {"\\ud83d\\ude00": 0.1, "\\ud83d\\ude01": 0.9}}'
    )
    assert send(api, "PUT", "/v1/agents/a", text).status_code == 201
    got = api.get("/v1/agents/a", headers=AUTH).json()
    assert got["name"] == "Ana \U0001f600" and got["languages"] == ["\U0001f44d"]
    assert got["skills"] == {"\U0001f600": 0.1, "\U0001f601": 0.9}
    assert api.delete("/v1/agents/a", headers=AUTH).status_code == 204


# -- scoring ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("post", "field"),
    [
        ('"id": "p\\ud800", "text": "hi"', "posts.0.id"),
        ('"id": "p", "text": "hi \\ud800"', "posts.0.text"),
        ('"id": "p", "text": "hi", "author": {"handle": "\\udc00"}', "posts.0.author.handle"),
        ('"id": "p", "text": "hi", "customer": {"id": "\\ud800"}', "posts.0.customer.id"),
        ('"id": "p", "text": "hi", "customer": {"tier": "\\ud800"}', "posts.0.customer.tier"),
    ],
)
def test_lone_surrogate_in_a_post_is_422(api, post, field):
    """Posts were refused already (pydantic's own check of constrained strings): the same
    check as every other string now, with the same words."""
    text = '{"posts": [{' + post + "}]}"
    body = assert_error(send(api, "POST", "/v1/score", text), 422, "validation_failed", field)
    assert "not valid Unicode" in body["message"]


@pytest.mark.parametrize(
    ("post", "field"),
    [
        ('"id": "p\\u0000", "text": "hi"', "posts.0.id"),
        ('"id": "p", "text": "a\\u0000b"', "posts.0.text"),
    ],
)
def test_nul_in_a_post_is_422(api, post, field):
    """A scored post may be kept (sampled into the labeling pool), and PostgreSQL keeps no NUL:
    refused up front rather than lost in the background."""
    text = '{"posts": [{' + post + "}]}"
    body = assert_error(send(api, "POST", "/v1/score", text), 422, "validation_failed", field)
    assert "NUL" in body["message"]


def test_duplicate_post_ids_are_422_naming_each_repeat(api):
    ids = ["a", "b", "a", "c", "b", "a"]
    posts = [{"id": i, "text": f"post {n}"} for n, i in enumerate(ids)]
    r = api.post("/v1/score", headers=AUTH, json={"posts": posts})
    body = assert_error(r, 422, "validation_failed")
    assert body["fields"] == ["posts.2.id", "posts.4.id", "posts.5.id"]
    assert "posts.2.id: duplicate post id 'a' (as posts.0.id)" in body["message"]
    assert "posts.4.id: duplicate post id 'b' (as posts.1.id)" in body["message"]
    for n, post in enumerate(posts):
        post["id"] += str(n)
    r = api.post("/v1/score", headers=AUTH, json={"posts": posts})
    assert r.status_code == 200, r.text
    assert [x["id"] for x in r.json()["results"]] == [p["id"] for p in posts]


# -- bodies json.loads refuses ------------------------------------------------------------------

DEEP = "[" * 10_000 + "]" * 10_000
LONG_INT = '{"posts": ' + "9" * 5000 + "}"


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/score"), ("PUT", "/v1/agents"), ("POST", "/v1/labeling/items")],
)
@pytest.mark.parametrize(
    ("content", "says"),
    [
        (DEEP.encode(), "nested too deeply"),
        (LONG_INT.encode(), "an integer has more than 4300 digits"),
        (b'{"posts": "\xff"}', "not UTF-8 text (byte 11); send UTF-8"),
    ],
)
def test_unreadable_json_says_why(api, method, path, content, says):
    r = api.request(method, path, headers={**AUTH, **JSON}, content=content)
    body = assert_error(r, 422, "validation_failed", "body")
    assert body["message"] == f"body: {says}"
    # Without a key, nothing is said about the body.
    r = api.request(method, path, headers=JSON, content=content)
    assert_error(r, 401, "unauthorized")


# -- the labeling workspace ---------------------------------------------------------------------


def fresh(text: str) -> str:
    """Texts unique to the call: the pool keeps one item per normalized text."""
    return f"{text} {uuid.uuid4().hex[:8]}"


def test_json_upload_reports_invalid_unicode_by_item_and_keeps_good_ones(app, api):
    items = [
        {"text": fresh("a good post")},
        '{"text": "bad \\ud800"}',
        '{"text": "' + fresh("ok") + '", "id": "\\ud800"}',
        '{"text": "' + fresh("ok") + '", "author": {"handle": "\\udc00"}}',
        '{"text": "' + fresh("nul") + '\\u0000"}',
    ]
    text = '{"items": [' + ", ".join(i if isinstance(i, str) else json.dumps(i) for i in items)
    r = send(api, "POST", "/v1/labeling/items", text + "]}")
    assert r.status_code == 200, r.text
    assert r.json()["added"] == 1
    errors = r.json()["errors"]
    assert [e["line"] for e in errors] == [2, 3, 4, 5]
    for e, field in zip(errors, ["text", "id", "author.handle", "text"], strict=True):
        assert e["message"].startswith(f"items.{e['line'] - 1}.{field}: "), e
    assert_pool_readable(app)


@pytest.mark.parametrize(
    ("kind", "data", "needle"),
    [
        ("jsonl", '{"text": "x \\ud800"}', "'text' is not valid Unicode"),
        ("jsonl", '{"text": "y", "id": "\\udc00"}', "'id' is not valid Unicode"),
        ("jsonl", '{"text": "z", "channel": "\\udc00"}', "'channel' is not valid Unicode"),
        ("jsonl", '{"text": "k", "author": {"\\ud800": "k"}}', "'author' is not valid Unicode"),
        ("jsonl", '{"text": "n", "author": {"a": [1, "\\ud800"]}}', "'author' is not valid"),
        ("jsonl", '{"text": "big", "n": ' + "1" * 5000 + "}", "more than 4300 digits"),
        ("jsonl", '{"text": "deep", "a": ' + DEEP + "}", "nested too deeply"),
        ("csv", 'text,author\nhi,"{""handle"": ""\\ud800""}"', "'author' is not valid Unicode"),
        ("csv", 'text,author\nhi,"{""a"": ' + DEEP + '}"', "nested too deeply"),
    ],
)
def test_file_upload_reports_invalid_unicode_by_line(app, api, kind, data, needle):
    good = {"jsonl": json.dumps({"text": fresh("fine")}), "csv": fresh("fine")}[kind]
    body = data + "\n" + good + "\n" if kind == "jsonl" else data + "\n" + good + ",\n"
    ctype = {"jsonl": "application/x-ndjson", "csv": "text/csv"}[kind]
    r = api.post(
        "/v1/labeling/items", headers={**AUTH, "Content-Type": ctype}, content=body.encode()
    )
    assert r.status_code == 200, r.text
    assert r.json()["added"] == 1, r.json()
    [error] = r.json()["errors"]
    assert error["line"] == (1 if kind == "jsonl" else 2) and needle in error["message"], error
    assert_pool_readable(app)


def assert_pool_readable(app) -> None:
    """The pool still reads back over HTTP (an evaluator's queue, the lead's stats), and all
    of it is text: a stored lone surrogate made every response carrying it a 500."""
    items = app.state.workspace.labels.all_items()
    json.dumps(items, default=str, ensure_ascii=False).encode("utf-8")
    eva, _ = signed_in(app, "eva", TestClient(app, follow_redirects=False))
    lee, _ = signed_in(app, "lee", TestClient(app, follow_redirects=False))
    got = eva.get("/v1/labeling/next?n=10")
    assert got.status_code == 200, got.text
    stats = lee.get("/v1/labeling/stats")
    assert stats.status_code == 200, stats.text


@pytest.mark.parametrize(
    ("member", "field"),
    [
        ('"kind": "flag", "note": "\\ud800 unclear"', "note"),
        ('"kind": "skip", "labels": {"\\ud800": "x"}', "labels"),
        ('"kind": "skip", "labels": {"topic": "\\ud800"}', "labels.topic"),
    ],
)
def test_answers_with_invalid_unicode_are_422_and_write_nothing(app, api, member, field):
    r = api.post("/v1/labeling/items", headers=AUTH, json={"items": [{"text": fresh("flag")}]})
    assert r.json()["added"] == 1
    eva, csrf = signed_in(app, "eva", TestClient(app, follow_redirects=False))
    item = eva.get("/v1/labeling/next?n=1").json()["items"][0]
    body = '{"idempotency_key": "' + uuid.uuid4().hex + '", ' + member + "}"
    r = eva.post(f"/v1/labeling/items/{item['id']}/answer", headers={**csrf, **JSON}, content=body)
    err = assert_error(r, 422, "validation_failed")
    assert any(f.startswith(field) for f in err["fields"]), err
    lee, _ = signed_in(app, "lee", TestClient(app, follow_redirects=False))
    assert lee.get("/v1/labeling/review").status_code == 200
    kinds = ("label", "skip", "flag", "resolve")
    assert app.state.workspace.labels.records(kinds=kinds, item_ids=[item["id"]]) == []
    # The item is still the evaluator's to answer.
    ok = eva.post(
        f"/v1/labeling/items/{item['id']}/answer",
        headers=csrf,
        json={"kind": "skip", "idempotency_key": uuid.uuid4().hex},
    )
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize(
    ("member", "field"),
    [
        ('"name": "eve\\ud800", "password": "long enough pw"', "name"),
        ('"name": "eve", "password": "long enough \\ud800"', "password"),
    ],
)
def test_new_users_with_invalid_unicode_are_422(app, member, field):
    ada, csrf = signed_in(app, "ada", TestClient(app, follow_redirects=False))
    r = ada.post("/v1/users", headers={**csrf, **JSON}, content="{" + member + "}")
    assert_error(r, 422, "validation_failed", field)
    assert "eve" not in [u["name"] for u in ada.get("/v1/users").json()]


# -- the error body itself ----------------------------------------------------------------------


def test_an_error_echoing_a_lone_surrogate_still_renders():
    """A message or field naming what the client sent is escaped, not a second failure."""
    r = error_response(ValidationFailed("x: no agent '\ud800'", ["x.\ud800"]))
    body = json.loads(r.body)
    assert r.status_code == 422
    assert body["message"] == "x: no agent '\\ud800'" and body["fields"] == ["x.\\ud800"]
