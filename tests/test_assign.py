"""Assignment as a transaction and feedback as its outcome, on SQLite and PostgreSQL: 32
concurrent clients never overfill an agent nor assign a post twice (through the store and
through a live server), closing frees the caseload once, feedback teaches the router, and the
API's errors name the field."""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from serving.app import create_app
from serving.assignments import AssignmentStore, CaseworkError
from serving.casework_schemas import FeedbackIn
from serving.dispatch import Case, RouterConfig
from serving.priority import load_policy
from serving.schemas import (
    Actionable,
    Agent,
    Post,
    Prediction,
    Priority,
    Route,
    ScoreResult,
)
from serving.settings import Settings
from serving.store import Store
from serving.tables import assignments_table, feedback_table
from tests.conftest import PG_URL
from tests.live import LiveServer

CLIENTS = 32
T = "lost_luggage"
ROUTING = load_policy().routing
NOW = datetime.now(UTC).replace(microsecond=0)
KEY = "test-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = Store(f"sqlite:///{tmp_path / 'assign.db'}")
    else:
        s = Store(PG_URL, schema=request.getfixturevalue("pg_schemas")())
    s.upgrade()
    yield s
    s.dispose()


def pred(label: str, scores: dict[str, float]) -> Prediction:
    return Prediction(label=label, confidence=max(scores.values()), scores=scores)


def scored(post_id: str, topic: str = T, p_negative: float = 0.3) -> ScoreResult:
    at = NOW + timedelta(hours=1)
    return ScoreResult(
        id=post_id,
        topic=pred(topic, {topic: 0.9, "long_lines": 0.1}),
        sentiment=pred(
            "negative" if p_negative > 0.5 else "neutral",
            {"negative": p_negative, "neutral": 1 - p_negative, "positive": 0.0},
        ),
        actionability=pred("complaint", {"complaint": 0.9, "request": 0.05, "none": 0.05}),
        actionable=Actionable(label=True, probability=0.95),
        priority=Priority(score=40, level="P3", respond_by=at, internal_target=at, reasons=[]),
        route=Route(agents=[]),
    )


def post(post_id: str) -> Post:
    return Post(id=post_id, text=f"my bag is lost ({post_id})", created_at=NOW)


def case(post_id: str, topic: str = T) -> Case:
    r = scored(post_id, topic)
    return Case(post_id, topic, 0.9, 0.3, r.priority)


def assign(cw: AssignmentStore, post_id: str, topic: str = T):
    return cw.assign(case(post_id, topic), post(post_id), scored(post_id, topic), ROUTING)


def roster(store: Store, n: int = 4, capacity: int = 5, **kw) -> None:
    store.replace_agents(
        [Agent(id=f"a{i}", skills={T: 0.8}, capacity=capacity, **kw) for i in range(n)]
    )


def rows(store: Store, table) -> int:
    with store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def run_clients(work, n: int = CLIENTS) -> list[BaseException]:
    """``work(k)`` on ``n`` threads started together; the unexpected errors they raised."""
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def body(k: int) -> None:
        barrier.wait()
        try:
            work(k)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=body, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


# -- the transactions, 32 clients at once ------------------------------------------------------


def test_concurrent_assignments_never_overfill_nor_assign_twice(store):
    roster(store, n=4, capacity=5)  # 20 places for 48 posts, each asked for by two clients
    cw = AssignmentStore(store)
    posts = [f"p{i}" for i in range(48)]
    got: dict[str, list] = defaultdict(list)
    refused: Counter[str] = Counter()
    lock = threading.Lock()

    def work(k: int) -> None:
        for j in range(3):
            pid = posts[(k * 3 + j) % len(posts)]
            try:
                a = assign(cw, pid)
            except CaseworkError as e:
                assert e.status == 409, e.message
                with lock:
                    refused[pid] += 1
                continue
            with lock:
                got[pid].append(a)

    assert run_clients(work) == []
    caseloads = {a.id: a.caseload for a in store.list_agents()}
    assert caseloads == {f"a{i}": 5 for i in range(4)}  # full, never over
    assert len(got) == 20 == rows(store, assignments_table)
    for pid, calls in got.items():
        assert len({a.agent_id for a in calls}) == 1, pid  # one agent per post, whoever asked
        assert sum(not a.replay for a in calls) == 1, pid  # assigned once, the rest replays
    per_agent = Counter(calls[0].agent_id for calls in got.values())
    assert per_agent == Counter(caseloads)
    assert sum(refused.values()) + sum(map(len, got.values())) == CLIENTS * 3


def test_concurrent_feedback_closes_each_case_once(store):
    roster(store, n=2, capacity=100)
    cw = AssignmentStore(store)
    for i in range(16):
        assign(cw, f"p{i}")
    assert sum(a.caseload for a in store.list_agents()) == 16
    released: Counter[str] = Counter()
    lock = threading.Lock()

    def work(k: int) -> None:
        pid = f"p{k % 16}"  # each case closed by two clients
        out = cw.record_feedback(FeedbackIn(post_id=pid, csat=1 + k % 5, resolved=k % 2 == 0))
        assert out.closed and out.agent_id in {"a0", "a1"}
        with lock:
            released[pid] += out.released

    assert run_clients(work) == []
    assert released == Counter({f"p{i}": 1 for i in range(16)})
    assert sum(a.caseload for a in store.list_agents()) == 0
    assert rows(store, feedback_table) == 16
    assert all(cw.get(f"p{i}").closed_at is not None for i in range(16))


def test_an_agent_at_capacity_is_never_chosen_and_nobody_left_is_409(store):
    store.replace_agents(
        [
            Agent(id="full", skills={T: 1.0}, capacity=2, caseload=2, csat={T: 1.0}),
            Agent(id="off", skills={T: 1.0}, status="offline"),
            Agent(id="ok", skills={T: 0.2}, capacity=1),
        ]
    )
    cw = AssignmentStore(store)
    assert assign(cw, "p1").agent_id == "ok"
    with pytest.raises(CaseworkError) as e:
        assign(cw, "p2")
    assert e.value.status == 409 and "no available agent" in e.value.message
    assert assign(cw, "p1").replay  # assigned before: the same answer, not a 409


# -- feedback ---------------------------------------------------------------------------------


def test_feedback_fills_in_and_attributes_the_outcome(store):
    roster(store, n=2, capacity=10)
    cw = AssignmentStore(store)
    first = assign(cw, "p1")
    out = cw.record_feedback(
        FeedbackIn(post_id="p1", first_response_at=NOW + timedelta(minutes=12), closed=False)
    )
    assert out.first_response_minutes == pytest.approx(12.0)
    assert not out.closed and not out.released and out.agent_id == first.agent_id
    # A later survey fills in the rating; the time given before is kept.
    later = cw.record_feedback(FeedbackIn(post_id="p1", csat=5, nps=9, resolved=True))
    assert (later.csat, later.nps, later.resolved) == (5, 9, True)
    assert later.first_response_minutes == pytest.approx(12.0) and later.released
    # The agent fixed the topic: the outcome counts for the corrected topic.
    fixed = cw.record_feedback(FeedbackIn(post_id="p1", corrected={"topic": "late_flight"}))
    assert fixed.topic == "late_flight" and fixed.closed and not fixed.released
    assert cw.open_case("p1")["text"] is None  # erased when the case closed


@pytest.mark.parametrize(
    ("fb", "field"),
    [
        (dict(post_id="never", csat=4), "agent_id"),  # not assigned here: who handled it?
        (dict(post_id="never", csat=4, agent_id="a0"), "topic"),
        (dict(post_id="p1", agent_id="ghost"), "agent_id"),  # not on the roster
        (dict(post_id="p1", first_response_at=NOW - timedelta(minutes=1)), "first_response_at"),
        (
            dict(post_id="never", agent_id="a0", topic=T, first_response_at=NOW),
            "first_response_at",
        ),
    ],
)
def test_feedback_that_cannot_be_attributed_names_the_field(store, fb, field):
    roster(store, n=2)
    cw = AssignmentStore(store)
    assign(cw, "p1")
    with pytest.raises(CaseworkError) as e:
        cw.record_feedback(FeedbackIn(**fb))
    assert e.value.status == 422 and e.value.fields == [field]
    assert rows(store, feedback_table) == 0  # nothing half-written


def test_feedback_teaches_the_router(store):
    store.replace_agents(
        [
            Agent(id="star", skills={T: 0.8}, capacity=50, csat={T: 0.95}),
            Agent(id="rookie", skills={T: 0.8}, capacity=50, csat={T: 0.85}),
        ]
    )
    cw = AssignmentStore(store, RouterConfig(objective="csat"), refresh_seconds=3600)
    assert assign(cw, "p0").agent_id == "star"
    cw.record_feedback(FeedbackIn(post_id="p0", csat=5))
    # Thirty unhappy customers for "star" outweigh its declared 0.95 (k = 5).
    for i in range(30):
        cw.record_feedback(FeedbackIn(post_id=f"old{i}", agent_id="star", topic=T, csat=1))
    second = assign(cw, "p1")
    assert second.agent_id == "rookie"  # cached estimates were refreshed by the feedback
    assert any("estimated CSAT" in r or "CSAT lost_luggage" in r for r in second.reasons)


# -- the API ----------------------------------------------------------------------------------


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def client(request, onnx_bundle, tmp_path_factory):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('assign') / 'api.db'}"
    else:
        schema = request.getfixturevalue("pg_schemas")()
        url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
        url = url.render_as_string(hide_password=False)
    settings = Settings(
        api_keys=[KEY], model_dir=onnx_bundle, database_url=url, rate_limit_enabled=False
    )
    with TestClient(create_app(settings)) as c:
        yield c


def put_roster(client, *agents: dict) -> None:
    r = client.put("/v1/agents", headers=AUTH, json={"agents": list(agents)})
    assert r.status_code == 200, r.text


def api_post(pid: str) -> dict:
    return {"id": pid, "text": "@airline my bag never arrived in Denver!!", "channel": "twitter"}


def generalist(i: str, **kw) -> dict:
    topics = load_policy().priority.topic_severity.labels
    return {"id": i, "skills": dict.fromkeys(topics, 0.7), "capacity": 3, **kw}


def test_assign_feedback_and_performance_over_http(client):
    put_roster(client, generalist("ana"), generalist("bo", caseload=2))
    r = client.post("/v1/assign", headers=AUTH, json={"post": api_post("h1")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["agent_id"] == "ana" and body["caseload"] == 1 and not body["replay"]
    assert body["result"]["id"] == "h1" and body["reasons"]
    again = client.post("/v1/assign", headers=AUTH, json={"post": api_post("h1")}).json()
    assert again["replay"] and again["agent_id"] == "ana"
    assert client.get("/v1/agents/ana", headers=AUTH).json()["caseload"] == 1
    assert client.get("/v1/assignments/h1", headers=AUTH).json()["agent_id"] == "ana"
    assert client.get("/v1/assignments/nope", headers=AUTH).status_code == 404
    # A post scored already is assigned as scored.
    res = client.post("/v1/score", headers=AUTH, json={"posts": [api_post("h2")]})
    result = res.json()["results"][0]
    r = client.post("/v1/assign", headers=AUTH, json={"post": api_post("h2"), "result": result})
    assert r.status_code == 200 and r.json()["result"] == result
    # The outcome, with a corrected topic: the caseload goes down, the post enters the pool.
    fixed = "damaged_luggage" if body["topic"] != "damaged_luggage" else "late_flight"
    fb = {"post_id": "h1", "csat": 5, "first_response_minutes": 7, "corrected": {"topic": fixed}}
    load = client.get("/v1/agents/ana", headers=AUTH).json()["caseload"]
    r = client.post("/v1/feedback", headers=AUTH, json=fb)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["released"] and out["closed"] and out["pooled"] and out["topic"] == fixed
    assert client.get("/v1/agents/ana", headers=AUTH).json()["caseload"] == load - 1
    ws = client.app.state.workspace
    with ws.labels.store.engine.connect() as conn:
        from serving.labeling.tables import items_table as I

        item = conn.execute(select(I).where(I.c.source == "feedback")).one()._mapping
    assert item["external_id"] == "h1" and item["context"]["correction"] == {"topic": fixed}
    assert item["uncertainty"] == 1.0
    # Sent again: the same outcome, the case not closed twice.
    again = client.post("/v1/feedback", headers=AUTH, json=fb).json()
    assert not again["released"] and again["closed"] and again["pooled"] is False
    perf = client.get("/v1/performance", headers=AUTH, params={"agent_id": "ana"}).json()
    row = next(e for e in perf["estimates"] if e["topic"] == fixed)
    assert row["rated_cases"] == 1 and row["csat"] > 0.8


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/feedback", {"post_id": "h1", "csat": 6}, "csat"),
        ("/v1/feedback", {"post_id": "h1", "nps": -1}, "nps"),
        ("/v1/feedback", {"post_id": "h1", "corrected": {"topic": "weather"}}, "corrected.topic"),
        ("/v1/feedback", {"post_id": "h1", "corrected": {"mood": "x"}}, "corrected.mood"),
        ("/v1/feedback", {"post_id": "zz", "csat": 3}, "agent_id"),
        ("/v1/feedback", {"post_id": "zz", "agent_id": "ghost", "topic": T}, "agent_id"),
        ("/v1/feedback", {"csat": 3}, "post_id"),
        ("/v1/assign", {"post": {"id": "x", "text": " "}}, "post.text"),
        ("/v1/assign", {}, "post"),
    ],
)
def test_bad_input_is_422_naming_the_field(client, path, body, field):
    put_roster(client, generalist("ana"))
    r = client.post(path, headers=AUTH, json=body)
    assert r.status_code == 422, r.text
    assert field in r.json()["fields"], r.json()


def test_a_client_result_must_be_this_posts(client):
    put_roster(client, generalist("ana"))
    result = client.post("/v1/score", headers=AUTH, json={"posts": [api_post("r1")]}).json()
    result = result["results"][0]
    r = client.post("/v1/assign", headers=AUTH, json={"post": api_post("r2"), "result": result})
    assert r.status_code == 422 and r.json()["fields"] == ["result.id"]
    result["topic"]["confidence"] = 7.0
    r = client.post("/v1/assign", headers=AUTH, json={"post": api_post("r1"), "result": result})
    assert r.status_code == 422 and r.json()["fields"] == ["result.topic"]


def test_nobody_to_take_it_is_409_and_nothing_is_recorded(client):
    put_roster(client)
    r = client.post("/v1/assign", headers=AUTH, json={"post": api_post("lonely")})
    assert r.status_code == 409 and r.json()["error"] == "conflict"
    assert client.get("/v1/assignments/lonely", headers=AUTH).status_code == 404


# -- 32 HTTP clients against a live server -----------------------------------------------------


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_32_http_clients_against_a_live_server(backend, onnx_bundle, tmp_path, request):
    url = None
    if backend == "postgres":
        schema = request.getfixturevalue("pg_schemas")()
        url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    with LiveServer(onnx_bundle, tmp_path, database_url=url) as server, server.client() as http:
        agents = [generalist(f"g{i}", capacity=4) for i in range(3)]  # 12 places
        assert http.put("/v1/agents", json={"agents": agents}).status_code == 200
        posts = [api_post(f"live{i}") for i in range(40)]
        results = http.post("/v1/score", json={"posts": posts}).json()["results"]
        codes: Counter[int] = Counter()
        answers: dict[str, set[str]] = defaultdict(set)
        lock = threading.Lock()

        def work(k: int) -> None:
            with httpx.Client(
                base_url=server.url, headers=server.auth_headers, trust_env=False, timeout=60
            ) as c:
                for j in range(2):  # 64 calls over 40 posts: 24 asked for twice
                    i = (k * 2 + j) % len(posts)
                    r = c.post("/v1/assign", json={"post": posts[i], "result": results[i]})
                    with lock:
                        codes[r.status_code] += 1
                        if r.status_code == 200:
                            answers[posts[i]["id"]].add(r.json()["agent_id"])

        assert run_clients(work) == []
        assert set(codes) <= {200, 409} and sum(codes.values()) == 64
        loads = {a["id"]: a["caseload"] for a in http.get("/v1/agents").json()["agents"]}
        assert loads == {"g0": 4, "g1": 4, "g2": 4}
        assert len(answers) == 12 and all(len(v) == 1 for v in answers.values())
