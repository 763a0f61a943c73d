"""Feeding the labeling pool over HTTP: uploads (JSON, CSV, JSONL, a file) with bad rows
reported by line, and sampled scoring traffic."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.labeling.store import LabelingStore
from serving.settings import Settings

KEY = "test-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}


def client_for(bundle, tmp_path, **kw) -> TestClient:
    settings = Settings(
        api_keys=[KEY],
        model_dir=bundle,
        database_url=f"sqlite:///{tmp_path / 'l.db'}",
        session_secret="s" * 40,
        **kw,
    )
    return TestClient(create_app(settings))


@pytest.fixture
def client(onnx_bundle, tmp_path):
    with client_for(onnx_bundle, tmp_path) as c:
        yield c


def pool(c: TestClient) -> LabelingStore:
    return c.app.state.workspace.labels


def test_json_upload_keeps_good_rows_and_names_bad_ones(client):
    r = client.post(
        "/v1/labeling/items",
        headers=AUTH,
        json={
            "items": [{"text": "bag lost"}, {"txt": "typo"}, {"text": "Bag  LOST"}, {"text": "ok"}]
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["added"], body["duplicates"]) == (2, 1)
    assert [e["line"] for e in body["errors"]] == [2]
    items = pool(client).all_items()
    assert {i["text"] for i in items} == {"bag lost", "ok"}
    item = next(i for i in items if i["text"] == "bag lost")
    schema = client.app.state.bundle.schema_
    assert set(item["suggestion"]) == set(schema.names)
    for task in schema.tasks:
        s = item["suggestion"][task.name]
        assert s["label"] in task.labels and s["label"] == max(s["scores"], key=s["scores"].get)
    assert 0.0 <= item["uncertainty"] <= 1.0 and item["source"] == "upload"


def test_csv_body_and_file_upload_report_lines(client):
    csv_text = (
        'id,text,channel\na1,"my flight, again\nlate",twitter\na2,,twitter\na3,fine,facebook\n'
    )
    r = client.post(
        "/v1/labeling/items", headers={**AUTH, "Content-Type": "text/csv"}, content=csv_text
    )
    assert r.status_code == 200, r.text
    assert r.json()["added"] == 2 and [e["line"] for e in r.json()["errors"]] == [4]
    jsonl = b'{"text": "one more"}\nnot json\n{"text": "fine"}\n'
    r = client.post("/v1/labeling/items", headers=AUTH, files={"file": ("posts.jsonl", jsonl)})
    assert r.status_code == 200, r.text
    assert (r.json()["added"], r.json()["duplicates"]) == (1, 1)
    assert [e["line"] for e in r.json()["errors"]] == [2]


def test_upload_needs_a_key_or_a_lead(client):
    r = client.post("/v1/labeling/items", json={"items": [{"text": "x"}]})
    assert r.status_code == 401
    r = client.post(
        "/v1/labeling/items", headers={"Authorization": "Bearer wrong-key-0123456789"}, json={}
    )
    assert r.status_code == 401


def test_scored_traffic_is_sampled_into_the_pool(onnx_bundle, tmp_path):
    with client_for(onnx_bundle, tmp_path, label_traffic_share=1.0) as c:
        posts = [{"id": f"p{i}", "text": f"post number {i} about my bag"} for i in range(5)]
        r = c.post("/v1/score", headers=AUTH, json={"posts": posts})
        assert r.status_code == 200
        deadline = time.monotonic() + 10
        while len(pool(c).all_items()) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        items = pool(c).all_items()
        assert sorted(i["external_id"] for i in items) == [f"p{i}" for i in range(5)]
        assert all(i["source"] == "traffic" and i["expires_at"] is not None for i in items)
        assert {i["model_version"] for i in items} == {r.json()["model_version"]}


def test_traffic_sampling_is_off_by_default(client):
    r = client.post("/v1/score", headers=AUTH, json={"posts": [{"id": "a", "text": "hello"}]})
    assert r.status_code == 200
    time.sleep(0.2)
    assert pool(client).all_items() == []
