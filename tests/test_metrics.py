"""Prometheus metrics (serving/metrics.py): per-app registries, the admin-only endpoint, the
separate port, and what is counted."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from features.bundle import read_bundle
from features.schema import LabelSchema, TaskSpec
from serving.app import create_app
from serving.metrics import ScoreStats
from serving.ratelimit import key_id
from serving.settings import Settings

KEY = "metrics-key-0123456789abcdef"
ADMIN = "metrics-admin-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}


def make_app(bundle: Path, tmp: Path, **kw):
    return create_app(
        Settings(
            api_keys=[KEY],
            admin_keys=[ADMIN],
            model_dir=bundle,
            database_url=f"sqlite:///{tmp / 'm.db'}",
            **kw,
        )
    )


def scrape(client: TestClient) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label items: value}} from GET /metrics."""
    r = client.get("/metrics", headers=ADMIN_AUTH)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return parse(r.text)


def parse(text: str) -> dict[str, dict[tuple, float]]:
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def client(onnx_bundle, tmp_path):
    with TestClient(make_app(onnx_bundle, tmp_path)) as c:
        yield c


def test_metrics_need_an_admin_key(client):
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=AUTH).status_code == 403  # a helpdesk key is not one
    assert client.get("/metrics", headers=ADMIN_AUTH).status_code == 200


def test_http_requests_by_route_template_and_status(client):
    client.get("/v1/agents/alice", headers=AUTH)
    client.get("/v1/agents/bob", headers=AUTH)
    client.get("/no/such/path/12345")
    client.get("/v1/agents")  # 401
    m = scrape(client)
    counts = m["caretriage_http_requests_total"]
    key = (("method", "GET"), ("route", "/v1/agents/{agent_id}"), ("status", "404"))
    assert counts[key] == 2
    assert counts[(("method", "GET"), ("route", "<unmatched>"), ("status", "404"))] == 1
    assert counts[(("method", "GET"), ("route", "/v1/agents"), ("status", "401"))] == 1
    # No raw path becomes a label value.
    assert not any("alice" in str(k) or "12345" in str(k) for k in counts)
    latency = m["caretriage_http_request_duration_seconds_count"]
    assert latency[(("method", "GET"), ("route", "/v1/agents/{agent_id}"))] == 2


def test_scoring_counts_posts_batches_queue_and_score_distributions(client, onnx_bundle):
    texts = ["my bag never arrived", "thanks for the upgrade!", "flight delayed again"]
    body = {"posts": [{"id": f"p{i}", "text": t} for i, t in enumerate(texts)]}
    r = client.post("/v1/score", headers=AUTH, json=body)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    m = scrape(client)
    assert m["caretriage_posts_scored_total"][()] == 3
    assert m["caretriage_score_request_posts_count"][()] == 1
    assert m["caretriage_score_request_posts_sum"][()] == 3
    # The batcher's hook: one run (at least) holding the 3 posts, and the request's wait.
    assert m["caretriage_batch_posts_sum"][()] >= 3
    assert m["caretriage_queue_wait_seconds_count"][()] >= 1
    assert m["caretriage_queue_posts"][()] == 0
    meta = read_bundle(onnx_bundle).meta
    assert m["caretriage_model_info"][(("name", meta.name), ("version", meta.version))] == 1
    for task in ("topic", "sentiment", "actionability"):
        n = m["caretriage_prediction_confidence_count"][(("task", task),)]
        assert n == 3
        total = m["caretriage_prediction_confidence_sum"][(("task", task),)]
        assert total == pytest.approx(sum(x[task]["confidence"] for x in results), abs=1e-3)
        predicted = {
            dict(k)["label"]: v
            for k, v in m["caretriage_predictions_total"].items()
            if dict(k)["task"] == task
        }
        expected: dict[str, float] = {}
        for x in results:
            expected[x[task]["label"]] = expected.get(x[task]["label"], 0) + 1
        assert predicted == expected


def test_rate_limited_requests_are_counted_by_key_id(onnx_bundle, tmp_path):
    with TestClient(make_app(onnx_bundle, tmp_path, rate_limit="1/minute")) as c:
        c.get("/v1/agents", headers=AUTH)
        assert c.get("/v1/agents", headers=AUTH).status_code == 429
        m = scrape(c)
    assert m["caretriage_rate_limited_total"][(("key", key_id(KEY)), ("kind", "requests"))] == 1
    assert KEY not in str(m)


def test_each_app_has_its_own_registry(onnx_bundle, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with (
        TestClient(make_app(onnx_bundle, tmp_path / "a")) as a,
        TestClient(make_app(onnx_bundle, tmp_path / "b")) as b,
    ):
        for _ in range(3):
            a.get("/healthz")
        b.get("/healthz")
        ok = (("method", "GET"), ("route", "/healthz"), ("status", "200"))
        assert scrape(a)["caretriage_http_requests_total"][ok] == 3
        assert scrape(b)["caretriage_http_requests_total"][ok] == 1


def test_a_failing_batch_hook_does_not_stop_the_model(client):
    def broken(posts, waits):
        raise RuntimeError("metrics backend gone")

    client.app.state.served.batcher.observe = broken
    body = {"posts": [{"id": "a", "text": "hello"}]}
    assert client.post("/v1/score", headers=AUTH, json=body).status_code == 200
    assert client.post("/v1/score", headers=AUTH, json=body).status_code == 200


def test_a_separate_metrics_port_serves_without_auth(onnx_bundle, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    with TestClient(make_app(onnx_bundle, tmp_path, metrics_port=port)) as c:
        c.get("/healthz")
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
        assert "caretriage_http_requests_total" in text
        assert "caretriage_model_info" in text
    with pytest.raises((urllib.error.URLError, OSError)):  # stopped with the app
        urllib.request.urlopen(url, timeout=2)


def test_score_stats_buckets_are_le_and_labels_counted():
    schema = LabelSchema(
        tasks=[
            TaskSpec(name="topic", labels=["a", "b", "c"]),
            TaskSpec(name="sentiment", labels=["neg", "pos"], positive_labels=["neg"]),
            TaskSpec(name="actionability", labels=["no", "yes"], positive_labels=["yes"]),
        ]
    )
    stats = ScoreStats()
    topic = np.array([[0.55, 0.25, 0.2], [0.1, 0.3, 0.6], [0.2, 0.3, 0.5], [0.05, 0.05, 0.9]])
    stats.observe(schema, {"topic": topic})
    stats.observe(schema, {"topic": topic[:1], "unknown_task": np.ones((1, 2))})
    families = {f.name: f for f in stats.collect()}
    buckets = {
        s.labels["le"]: s.value
        for s in families["caretriage_prediction_confidence"].samples
        if s.name.endswith("_bucket")
    }
    assert buckets["0.5"] == 1  # 0.5 itself: le means "at most"
    assert buckets["0.55"] == 3  # 0.55 twice
    assert buckets["0.6"] == 4
    assert buckets["0.85"] == 4 and buckets["0.9"] == 5 and buckets["+Inf"] == 5
    labels = {
        s.labels["label"]: s.value
        for s in families["caretriage_predictions"].samples
        if s.name.endswith("_total")
    }
    assert labels == {"a": 2, "c": 3}
