"""The HTTP API end to end on the tiny ONNX bundle: auth, the error contract, scoring, agents."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from features.bundle import read_bundle
from serving.app import create_app
from serving.inference import Scorer
from serving.schemas import MAX_POSTS, MAX_TEXT, ScoreResponse
from serving.settings import Settings

KEY = "test-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
TEXTS = [
    "@united my bag never arrived, 3 days now http://t.co/abc",
    "thanks for the upgrade!",
    "flight UA123 delayed again " * 40,
    "ok",
    "Can someone help me rebook? I was on the cancelled 6am flight",
]


def make_settings(bundle: Path, tmp: Path, **kw) -> Settings:
    return Settings(
        api_keys=[KEY], model_dir=bundle, database_url=f"sqlite:///{tmp / 'api.db'}", **kw
    )


@pytest.fixture(scope="module")
def client(onnx_bundle, tmp_path_factory):
    app = create_app(make_settings(onnx_bundle, tmp_path_factory.mktemp("api")))
    with TestClient(app) as c:
        yield c


@pytest.fixture
def roster(client):
    """An empty roster before and after each test that touches agents."""
    client.put("/v1/agents", headers=AUTH, json={"agents": []})
    yield
    client.put("/v1/agents", headers=AUTH, json={"agents": []})


def posts(*texts: str, **extra) -> dict:
    return {"posts": [{"id": f"p{i}", "text": t, **extra} for i, t in enumerate(texts)]}


def assert_error(r, status: int, error: str, field: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "message", "fields"}
    assert body["error"] == error
    if field is not None:
        assert field in body["fields"], body
        assert field in body["message"], body
    assert "Traceback" not in body["message"]
    return body


# ------------------------------------------------------------------------------------ probes


def test_healthz_and_readyz(client, onnx_bundle):
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200
    # Public: ready or not, nothing more; what serves and how busy it is need the key.
    assert r.json() == {"status": "ready"}
    meta = read_bundle(onnx_bundle).meta
    info = client.get("/v1/model", headers=AUTH).json()
    assert info["name"] == meta.name and info["version"] == meta.version
    assert info["queued_posts"] == 0


def test_readyz_503_until_started_and_after_shutdown(onnx_bundle, tmp_path):
    app = create_app(make_settings(onnx_bundle, tmp_path))
    c = TestClient(app)
    assert c.get("/healthz").status_code == 200  # no lifespan yet: alive, not ready
    assert_error(c.get("/readyz"), 503, "model_not_ready")
    assert_error(c.post("/v1/score", headers=AUTH, json=posts("hi")), 503, "model_not_ready")
    with c:
        assert c.get("/readyz").status_code == 200
    assert_error(c.get("/readyz"), 503, "model_not_ready")


def test_no_import_side_effects_and_no_torch():
    code = (
        "import os, sys\n"
        "[os.environ.pop(k) for k in list(os.environ) if k.startswith('CARETRIAGE_')]\n"
        "import serving.app, serving.cli, serving.routers.score\n"
        "bad = [m for m in ('torch', 'transformers', 'training') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------------------------- auth


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": KEY},
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": "Bearer wrong-key-0123456789abcdef"},
        {"Authorization": f"Bearer {KEY}x"},
        {"Authorization": "Bearer "},
    ],
)
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/v1/score", posts("hi")),
        ("get", "/v1/model", None),
        ("get", "/v1/agents", None),
        ("put", "/v1/agents", {"agents": []}),
        ("delete", "/v1/agents/a", None),
    ],
)
def test_401_without_a_valid_key(client, headers, method, path, body):
    kw = {"json": body} if body is not None else {}
    r = client.request(method, path, headers=headers, **kw)
    assert_error(r, 401, "unauthorized")
    assert r.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "content",
    [b'{"posts": [', b'{"posts": []}', b'{"posts": [{"id": "a"}]}', b"[]"],
)
def test_auth_is_checked_before_the_body(client, content):
    """An anonymous client learns nothing about validation, not even that its JSON is bad."""
    r = client.post("/v1/score", headers={"Content-Type": "application/json"}, content=content)
    assert_error(r, 401, "unauthorized")
    r = client.post(
        "/v1/score",
        headers={"Authorization": "Bearer nope-nope-nope-nope", "Content-Type": "application/json"},
        content=content,
    )
    assert_error(r, 401, "unauthorized")


def test_any_configured_key_works(onnx_bundle, tmp_path):
    other = "another-key-abcdefghijklmnop"
    s = Settings(
        api_keys=[KEY, other], model_dir=onnx_bundle, database_url=f"sqlite:///{tmp_path / 'k.db'}"
    )
    with TestClient(create_app(s)) as c:
        for k in (KEY, other):
            assert c.get("/v1/model", headers={"Authorization": f"Bearer {k}"}).status_code == 200


# ----------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"posts": [{"id": "a"}]}, "posts.0.text"),
        (
            {"posts": [{"id": "a", "text": "x"}, {"id": "b", "text": "y" * (MAX_TEXT + 1)}]},
            "posts.1.text",
        ),
        ({"posts": [{"id": "a", "text": "   "}]}, "posts.0.text"),
        ({"posts": []}, "posts"),
        ({"posts": [{"id": str(i), "text": "hi"} for i in range(MAX_POSTS + 1)]}, "posts"),
        ({"posts": [{"id": "a", "text": "hi", "channel": "fax"}]}, "posts.0.channel"),
        (
            {"posts": [{"id": "a", "text": "hi", "author": {"followers": -1}}]},
            "posts.0.author.followers",
        ),
        ({"posts": [{"id": "a", "text": "hi", "created_at": "yesterday"}]}, "posts.0.created_at"),
        ({"posts": [{"id": "a", "text": "hi", "mood": "sad"}]}, "posts.0.mood"),
        ({"posts": "hello"}, "posts"),
        ({}, "posts"),
        ([], "body"),
    ],
)
def test_bad_input_is_422_naming_the_field(client, body, field):
    assert_error(client.post("/v1/score", headers=AUTH, json=body), 422, "validation_failed", field)


def test_message_names_the_field_path_and_reason(client):
    body = {
        "posts": [{"id": str(i), "text": "ok"} for i in range(3)]
        + [{"id": "3", "text": "y" * (MAX_TEXT + 1)}]
    }
    err = assert_error(client.post("/v1/score", headers=AUTH, json=body), 422, "validation_failed")
    assert err["message"] == f"posts.3.text: String should have at most {MAX_TEXT} characters"
    assert err["fields"] == ["posts.3.text"]


def test_many_errors_are_summarized(client):
    body = {"posts": [{"id": str(i), "text": ""} for i in range(50)]}
    err = assert_error(client.post("/v1/score", headers=AUTH, json=body), 422, "validation_failed")
    assert len(err["fields"]) == 50 and "and 45 more" in err["message"]


def test_invalid_json_is_422_naming_the_body(client):
    r = client.post(
        "/v1/score", headers={**AUTH, "Content-Type": "application/json"}, content=b'{"posts": ['
    )
    err = assert_error(r, 422, "validation_failed", "body")
    assert "invalid JSON" in err["message"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_wrong_content_type_is_422_naming_the_body(client, content_type):
    headers = {**AUTH, **({"Content-Type": content_type} if content_type else {})}
    r = client.post("/v1/score", headers=headers, content=b'{"posts": [{"id": "a", "text": "x"}]}')
    err = assert_error(r, 422, "validation_failed", "body")
    assert "application/json" in err["message"]


def test_missing_body_is_422(client):
    assert_error(client.post("/v1/score", headers=AUTH), 422, "validation_failed", "body")


def test_huge_body_is_413(onnx_bundle, tmp_path):
    s = make_settings(onnx_bundle, tmp_path, max_body_bytes=10_000)
    with TestClient(create_app(s)) as c:
        big = posts(*["x" * 4000] * 3)
        assert_error(c.post("/v1/score", headers=AUTH, json=big), 413, "payload_too_large", "body")

        def chunks():  # no Content-Length: counted as it streams
            yield b'{"posts": ['
            for _ in range(20):
                yield b'{"id": "a", "text": "' + b"x" * 1000 + b'"},'
            yield b"]}"

        r = c.post(
            "/v1/score", headers={**AUTH, "Content-Type": "application/json"}, content=chunks()
        )
        assert_error(r, 413, "payload_too_large", "body")
        assert c.post("/v1/score", headers=AUTH, json=posts("fits")).status_code == 200


def test_default_body_limit_admits_the_largest_valid_request(client):
    body = posts(*["é" * MAX_TEXT] * MAX_POSTS)  # 256 posts of 5000 two-byte characters
    assert client.post("/v1/score", headers=AUTH, json=body).status_code == 200


def test_unknown_route_and_method(client):
    assert_error(client.get("/v1/nothing", headers=AUTH), 404, "not_found")
    r = client.delete("/healthz")
    assert_error(r, 405, "method_not_allowed")
    assert r.headers["Allow"] == "GET"


@pytest.mark.parametrize(
    ("path", "allow"),
    [("/v1/agents", "GET, PUT"), ("/v1/agents/a", "DELETE, GET, PUT")],
)
def test_405_allows_every_method_of_the_path(client, path, allow):
    # The path is served by one route per method; Starlette alone named only the first.
    r = client.request("OPTIONS", path, headers=AUTH)
    assert_error(r, 405, "method_not_allowed")
    assert r.headers["Allow"] == allow


def test_a_body_that_is_not_text_is_422_naming_the_body(client):
    r = client.post(
        "/v1/score", headers={**AUTH, "Content-Type": "application/json"}, content=b"\x021\xff"
    )
    assert_error(r, 422, "validation_failed", "body")


def _raw(client, method: str, path: str, text: str):
    """Send JSON text as is: NaN, Infinity and huge integers are what the json module writes
    and reads, but a JSON client library may refuse to produce them."""
    return client.request(
        method, path, headers={**AUTH, "Content-Type": "application/json"}, content=text
    )


@pytest.mark.parametrize(
    ("post", "field"),
    [
        ('"customer": {"lifetime_value": Infinity}', "posts.0.customer.lifetime_value"),
        ('"customer": {"lifetime_value": NaN}', "posts.0.customer.lifetime_value"),
        ('"author": {"followers": 1' + "0" * 400 + "}", "posts.0.author.followers"),
        ('"customer": {"open_tickets": 99999999999}', "posts.0.customer.open_tickets"),
        # Past the calendar's ends once in UTC, or far enough ahead to overflow respond_by:
        # each was a 500.
        ('"created_at": "0001-01-01T00:10:00+05:00"', "posts.0.created_at"),
        ('"created_at": "9999-12-31T23:30:00Z"', "posts.0.created_at"),
        ('"created_at": "9999-12-31T23:30:00-05:00"', "posts.0.created_at"),
        ('"created_at": "1969-12-31T23:59:59Z"', "posts.0.created_at"),
        (
            '"customer": {"recent_contacts": [{"channel": "phone", "at": "9999-12-31T23:59Z"}]}',
            "posts.0.customer.recent_contacts.0.at",
        ),
    ],
)
def test_out_of_range_numbers_and_times_are_422_not_500(client, post, field):
    r = _raw(client, "POST", "/v1/score", '{"posts": [{"id": "a", "text": "hi", ' + post + "}]}")
    assert_error(r, 422, "validation_failed", field)


def test_times_a_day_either_side_of_now_are_accepted(client):
    from datetime import UTC, datetime, timedelta

    soon = (datetime.now(UTC) + timedelta(hours=23)).isoformat()
    old = "1970-01-01T00:00:00Z"
    for at in (soon, old):
        r = client.post("/v1/score", headers=AUTH, json=posts("hi", created_at=at))
        assert r.status_code == 200, r.text


def test_overloaded_is_503_with_retry_after(client):
    batcher = client.app.state.batcher
    batcher._pending += batcher.max_queue  # as if the queue were full
    try:
        r = client.post("/v1/score", headers=AUTH, json=posts("hi"))
    finally:
        batcher._pending -= batcher.max_queue
    assert_error(r, 503, "overloaded")
    assert r.headers["Retry-After"]


def test_a_bug_is_a_bare_500(onnx_bundle, tmp_path):
    class Broken:
        def list_agents(self):
            raise RuntimeError("secret internals")

    with TestClient(
        create_app(make_settings(onnx_bundle, tmp_path)), raise_server_exceptions=False
    ) as c:
        c.app.state.store = Broken()
        r = c.post("/v1/score", headers={**AUTH, "X-Request-ID": "req-42"}, json=posts("hi"))
    body = assert_error(r, 500, "internal")
    assert "secret" not in r.text and "req-42" in body["message"]


def test_request_id_is_echoed(client):
    r = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert r.headers["X-Request-ID"] == "abc-123"
    assert len(client.get("/healthz").headers["X-Request-ID"]) == 32


# ------------------------------------------------------------------------------------ model


def test_model_info_reflects_the_bundle(client, onnx_bundle):
    bundle = read_bundle(onnx_bundle)
    info = client.get("/v1/model", headers=AUTH).json()
    assert info["name"] == bundle.meta.name and info["version"] == bundle.meta.version
    assert info["max_length"] == bundle.meta.max_length
    assert info["tasks"] == {t.name: t.labels for t in bundle.schema_.tasks}
    assert info["abstain_below"] == {"topic": 0.5, "sentiment": 0.5, "actionability": 0.5}
    assert info["metrics"] == bundle.meta.metrics
    assert info["lexical"] == bundle.meta.lexical
    assert "self_check" in info and info["self_check"] is None  # this bundle records none


def test_openapi_documents_the_error_body(client):
    spec = client.get("/openapi.json").json()
    score = spec["paths"]["/v1/score"]["post"]
    for code in ("401", "413", "422", "503"):
        ref = score["responses"][code]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/ErrorBody")
    assert client.get("/docs").status_code == 200


# ------------------------------------------------------------------------------------ score


def test_score_returns_one_wellformed_result_per_post_in_order(client, onnx_bundle):
    bundle = read_bundle(onnx_bundle)
    r = client.post("/v1/score", headers=AUTH, json=posts(*TEXTS))
    assert r.status_code == 200, r.text
    resp = ScoreResponse.model_validate(r.json())
    assert resp.model_version == bundle.meta.version
    assert [x.id for x in resp.results] == [f"p{i}" for i in range(len(TEXTS))]
    expected = Scorer(bundle).predict(TEXTS)
    act = bundle.schema_.task("actionability")
    for i, res in enumerate(resp.results):
        for task in bundle.schema_.tasks:
            pred = getattr(res, task.name)
            assert list(pred.scores) == task.labels
            assert sum(pred.scores.values()) == pytest.approx(1.0, abs=1e-3)
            np.testing.assert_allclose(
                list(pred.scores.values()), expected[task.name][i], atol=1e-4
            )
            assert pred.label == task.labels[int(np.argmax(expected[task.name][i]))]
            assert pred.confidence == pytest.approx(max(pred.scores.values()), abs=1e-4)
        p_act = sum(expected["actionability"][i][act.index(lab)] for lab in act.positive_labels)
        assert res.actionable.probability == pytest.approx(p_act, abs=1e-4)
        assert res.actionable.label == (p_act >= 0.5)
        assert 0 <= res.priority.score <= 100 and res.priority.level in {"P1", "P2", "P3", "P4"}
        assert res.route.agents == []  # empty roster


def test_same_post_scores_the_same_alone_and_in_a_batch(client):
    alone = client.post("/v1/score", headers=AUTH, json=posts(TEXTS[1])).json()["results"][0]
    batch = client.post("/v1/score", headers=AUTH, json=posts(*TEXTS)).json()["results"][1]
    for task in ("topic", "sentiment", "actionability"):
        for label, p in alone[task]["scores"].items():
            assert batch[task]["scores"][label] == pytest.approx(p, abs=1e-4)


def test_uncertain_follows_the_threshold(client, onnx_bundle, tmp_path):
    base = client.post("/v1/score", headers=AUTH, json=posts(*TEXTS)).json()["results"]
    conf = sorted(r["topic"]["confidence"] for r in base)
    # A threshold between two observed confidences, so some posts fall each side of it.
    gaps = [(b - a, (a + b) / 2) for a, b in itertools.pairwise(conf)]
    width, threshold = max(gaps)
    assert width > 1e-3
    s = make_settings(
        onnx_bundle,
        tmp_path,
        abstain_below={"topic": threshold, "sentiment": 0.0, "actionability": 1.0},
    )
    with TestClient(create_app(s)) as c:
        results = c.post("/v1/score", headers=AUTH, json=posts(*TEXTS)).json()["results"]
        assert c.get("/v1/model", headers=AUTH).json()["abstain_below"]["topic"] == threshold
    flags = [r["topic"]["uncertain"] for r in results]
    assert flags == [r["topic"]["confidence"] < threshold for r in results]
    assert True in flags and False in flags
    assert not any(r["sentiment"]["uncertain"] for r in results)
    assert all(
        r["actionability"]["uncertain"] == (r["actionability"]["confidence"] < 1.0) for r in results
    )


def test_customer_context_raises_priority(client):
    plain = posts("my flight was cancelled and nobody answers")
    vip = posts(
        "my flight was cancelled and nobody answers",
        author={"followers": 500_000, "verified": True},
        customer={"lifetime_value": 50_000, "open_tickets": 3},
    )
    a = client.post("/v1/score", headers=AUTH, json=plain).json()["results"][0]["priority"]
    b = client.post("/v1/score", headers=AUTH, json=vip).json()["results"][0]["priority"]
    assert b["score"] > a["score"]
    assert {"reach", "verified", "customer_value", "open_tickets"} <= {
        x["factor"] for x in b["reasons"]
    }


# ----------------------------------------------------------------------------------- agents


def agent(i: str, topics: list[str], **kw) -> dict:
    return {"id": i, "skills": dict.fromkeys(topics, 0.9), **kw}


def test_agents_put_get_roundtrip(client, roster, onnx_bundle):
    topics = read_bundle(onnx_bundle).schema_.task("topic").labels
    body = {
        "agents": [
            agent(
                "b",
                topics[:2],
                languages=["en", "es"],
                capacity=5,
                caseload=1,
                csat={topics[0]: 0.95},
                first_response_minutes={topics[0]: 7.5},
            ),
            agent("a", topics[2:4], status="away"),
        ]
    }
    r = client.put("/v1/agents", headers=AUTH, json=body)
    assert r.status_code == 200, r.text
    got = client.get("/v1/agents", headers=AUTH).json()["agents"]
    assert [a["id"] for a in got] == ["a", "b"]
    assert got[1]["csat"] == {topics[0]: 0.95} and got[1]["languages"] == ["en", "es"]
    assert got[0]["status"] == "away"
    assert r.json()["agents"] == got
    # Replace means replace: agents not listed are gone.
    client.put("/v1/agents", headers=AUTH, json={"agents": [agent("c", topics)]})
    assert [a["id"] for a in client.get("/v1/agents", headers=AUTH).json()["agents"]] == ["c"]


def test_single_agent_upsert_get_delete(client, roster):
    assert (
        client.put("/v1/agents/x", headers=AUTH, json=agent("x", ["late_flight"])).status_code
        == 201
    )
    r = client.put("/v1/agents/x", headers=AUTH, json=agent("x", ["late_flight"], caseload=2))
    assert r.status_code == 200
    assert client.get("/v1/agents/x", headers=AUTH).json()["caseload"] == 2
    assert_error(
        client.put("/v1/agents/y", headers=AUTH, json=agent("x", [])),
        422,
        "validation_failed",
        "id",
    )
    assert client.delete("/v1/agents/x", headers=AUTH).status_code == 204
    assert_error(client.get("/v1/agents/x", headers=AUTH), 404, "not_found")
    assert_error(client.delete("/v1/agents/x", headers=AUTH), 404, "not_found")


def test_duplicate_agent_ids_are_422_and_change_nothing(client, roster):
    client.put("/v1/agents", headers=AUTH, json={"agents": [agent("keep", ["late_flight"])]})
    dupes = {"agents": [agent("a", []), agent("b", []), agent("a", [])]}
    err = assert_error(
        client.put("/v1/agents", headers=AUTH, json=dupes), 422, "validation_failed", "agents"
    )
    assert "'a'" in err["message"]
    assert [a["id"] for a in client.get("/v1/agents", headers=AUTH).json()["agents"]] == ["keep"]


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"skills": {"late_flight": 1.5}}, "agents.0.skills.late_flight"),
        ({"csat": {"late_flight": -0.1}}, "agents.0.csat.late_flight"),
        ({"capacity": 0}, "agents.0.capacity"),
        ({"caseload": 2**31}, "agents.0.caseload"),  # past PostgreSQL's INTEGER: was a 500
        ({"status": "asleep"}, "agents.0.status"),
        (
            {"first_response_minutes": {"late_flight": -1}},
            "agents.0.first_response_minutes.late_flight",
        ),
        ({"id": "a\x00b"}, "agents.0.id"),  # PostgreSQL refuses NUL in text
        ({"skills": {"late\x00flight": 0.5}}, "agents.0.skills.late\x00flight.[key]"),
        ({"languages": ["x" * 36]}, "agents.0.languages.0"),
    ],
)
def test_bad_agents_are_422_naming_the_field(client, roster, bad, field):
    body = {"agents": [{**agent("a", ["late_flight"]), **bad}]}
    assert_error(client.put("/v1/agents", headers=AUTH, json=body), 422, "validation_failed", field)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_agent_figures_are_422_and_not_stored(client, roster, value):
    # Stored, NaN came back as null (lost) and made the agent's routing score NaN.
    for key in ("first_response_minutes", "csat", "skills"):
        text = '{"agents": [{"id": "a", "' + key + '": {"late_flight": ' + value + "}}]}"
        r = _raw(client, "PUT", "/v1/agents", text)
        assert_error(r, 422, "validation_failed", f"agents.0.{key}.late_flight")
    assert client.get("/v1/agents", headers=AUTH).json() == {"agents": []}


def test_agent_path_with_nul_is_422(client, roster):
    assert_error(client.get("/v1/agents/a%00b", headers=AUTH), 422, "validation_failed")


def test_openapi_documents_ranges_and_created(client):
    spec = client.get("/openapi.json").json()
    agent_schema = spec["components"]["schemas"]["Agent"]["properties"]
    skill = agent_schema["skills"]["additionalProperties"]
    assert (skill["minimum"], skill["maximum"]) == (0.0, 1.0)
    assert "201" in spec["paths"]["/v1/agents/{agent_id}"]["put"]["responses"]
    assert spec["components"]["schemas"]["Post"]["properties"]["text"]["pattern"] == r"\S"


def test_offline_and_full_agents_are_never_routed(client, roster, onnx_bundle):
    topics = read_bundle(onnx_bundle).schema_.task("topic").labels
    team = {
        "agents": [
            agent("offline-star", topics, status="offline", csat=dict.fromkeys(topics, 1.0)),
            agent("full-star", topics, capacity=3, caseload=3),
            {"id": "online", "skills": dict.fromkeys(topics, 0.3)},
        ]
    }
    assert client.put("/v1/agents", headers=AUTH, json=team).status_code == 200
    results = client.post("/v1/score", headers=AUTH, json=posts(*TEXTS)).json()["results"]
    for res in results:
        ids = [m["id"] for m in res["route"]["agents"]]
        assert ids == ["online"]
        assert res["route"]["agents"][0]["reasons"]


def test_roster_edits_reach_the_next_score_at_once(client, roster, onnx_bundle):
    """Scoring reads a roster snapshot; an edit through the API must not wait for it to age."""
    topics = read_bundle(onnx_bundle).schema_.task("topic").labels
    one = {"agents": [{"id": "first", "skills": dict.fromkeys(topics, 0.5)}]}
    assert client.put("/v1/agents", headers=AUTH, json=one).status_code == 200
    routed = client.post("/v1/score", headers=AUTH, json=posts(TEXTS[0])).json()["results"][0]
    assert [m["id"] for m in routed["route"]["agents"]] == ["first"]
    second = {"id": "second", "skills": dict.fromkeys(topics, 0.5)}
    assert client.put("/v1/agents/second", headers=AUTH, json=second).status_code == 201
    assert client.delete("/v1/agents/first", headers=AUTH).status_code == 204
    routed = client.post("/v1/score", headers=AUTH, json=posts(TEXTS[0])).json()["results"][0]
    assert [m["id"] for m in routed["route"]["agents"]] == ["second"]


def test_small_and_large_requests_answer_alike(client, roster, onnx_bundle):
    """Small requests are assembled on the event loop, large ones in the thread pool: the
    results must not depend on which path served them."""
    from serving.routers.score import INLINE_RESULT_POSTS

    topics = read_bundle(onnx_bundle).schema_.task("topic").labels
    team = {"agents": [agent("a", topics), agent("b", topics[:1])]}
    assert client.put("/v1/agents", headers=AUTH, json=team).status_code == 200
    many = [TEXTS[i % len(TEXTS)] for i in range(INLINE_RESULT_POSTS + 3)]
    batch = client.post("/v1/score", headers=AUTH, json=posts(*many)).json()["results"]
    assert len(batch) == len(many)
    for i, text in enumerate(many):
        alone = client.post("/v1/score", headers=AUTH, json=posts(text)).json()["results"][0]
        for key in ("priority", "route", "actionable"):
            got, want = batch[i][key], alone[key]
            if key == "priority":
                clock = {"respond_by": None, "internal_target": None}  # "now" differs
                got, want = got | clock, want | clock
            assert got == pytest.approx(want, abs=1e-3) if key == "actionable" else got == want


@pytest.mark.parametrize(
    ("row", "threshold", "label", "confidence", "uncertain"),
    [
        ([0.2, 0.7, 0.1], 0.5, "b", 0.7, False),
        ([0.2, 0.7, 0.1], 0.8, "b", 0.7, True),
        ([0.5, 0.5, 0.0], 0.0, "a", 0.5, False),  # a tie goes to the first label
        ([0.123456, 0.0, 0.876544], 0.9, "c", 0.8765, True),  # rounded to 4 places, not before
    ],
)
def test_predictions_per_row(row, threshold, label, confidence, uncertain):
    """Each row of a batch gets its own argmax, rounded confidence and scores, and flag."""
    from serving.routers.score import predictions

    labels = ["a", "b", "c"]
    other = [1.0, 0.0, 0.0]  # a second row, so a mix-up between rows would show
    got = predictions(labels, np.array([other, row]), threshold)
    assert [p.label for p in got] == ["a", label]
    p = got[1]
    assert (p.confidence, p.uncertain) == (confidence, uncertain)
    assert p.scores == {lab: round(x, 4) for lab, x in zip(labels, row, strict=True)}


def test_a_schemas_further_task_is_returned_by_name(tmp_path):
    """A deployment's schema may add a task beyond the three the policy reads: its
    prediction comes back under ``tasks`` (the three stay where they were)."""
    from features.schema import LabelSchema, TaskSpec, default_schema_path
    from tests._tiny_onnx import build_onnx_bundle

    base = LabelSchema.load(default_schema_path())
    extra = TaskSpec(name="language", labels=["en", "es", "fr"])
    schema = base.model_copy(update={"tasks": [*base.tasks, extra]})
    bundle = build_onnx_bundle(tmp_path / "b", schema=schema)
    with TestClient(create_app(make_settings(bundle, tmp_path))) as c:
        r = c.post("/v1/score", headers=AUTH, json=posts(*TEXTS[:2]))
    assert r.status_code == 200, r.text
    for res in r.json()["results"]:
        assert set(res["tasks"]) == {"language"}
        pred = res["tasks"]["language"]
        assert set(pred["scores"]) == {"en", "es", "fr"}
        assert pred["label"] == max(pred["scores"], key=pred["scores"].get)
        assert abs(sum(pred["scores"].values()) - 1.0) < 1e-3
        assert set(res["topic"]["scores"]) == set(base.task("topic").labels)


def test_the_three_tasks_alone_return_no_further_tasks(client):
    r = client.post("/v1/score", headers=AUTH, json=posts(TEXTS[0]))
    assert r.json()["results"][0]["tasks"] == {}
