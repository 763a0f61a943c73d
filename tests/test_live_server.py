"""The real server process (tests/live.py): it starts from its environment, scores, and what it
stored survives a SIGKILL and a restart on the same SQLite file."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from features.bundle import read_bundle
from tests.live import LiveServer, LiveServerError, sqlite_url


@pytest.fixture(scope="module")
def tiny_bundle_dir(tmp_path_factory) -> Path:
    pytest.importorskip("onnx")
    from tests._tiny_onnx import build_onnx_bundle

    return build_onnx_bundle(tmp_path_factory.mktemp("live_bundle") / "tiny")


def test_serves_scores_and_keeps_agents_across_a_kill(tiny_bundle_dir, tmp_path):
    db = tmp_path / "live.db"
    server = LiveServer(tiny_bundle_dir, tmp_path, database_url=sqlite_url(db))
    with server, server.client() as http:
        ready = http.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"status": "ready"}
        assert http.get("/v1/model").json()["name"] == read_bundle(tiny_bundle_dir).meta.name

        assert http.post("/v1/score", json={"posts": []}, headers={}).status_code == 422
        assert http.get("/v1/model", headers={"Authorization": "Bearer nope"}).status_code == 401
        r = http.post(
            "/v1/score",
            json={"posts": [{"id": "p1", "text": "@airline my bag never arrived!!"}]},
        )
        assert r.status_code == 200, r.text
        [result] = r.json()["results"]
        assert result["id"] == "p1" and 0 <= result["priority"]["score"] <= 100

        r = http.put("/v1/agents/ana", json={"id": "ana", "caseload": 3})
        assert r.status_code == 201, r.text

        pid = server.proc.pid
        assert server.kill() == -9  # a crash: no shutdown code runs
        assert not server.running
        with pytest.raises(httpx.ConnectError):
            http.get("/healthz", timeout=2)
        server.restart()
        assert server.proc.pid != pid

        r = http.get("/v1/agents/ana")
        assert r.status_code == 200, r.text
        assert r.json()["id"] == "ana" and r.json()["caseload"] == 3
    assert not server.running
    assert server.log_text().count("----- live server start") == 2
    assert "caretriage: serving" in server.log_text()


def test_start_failure_reports_the_log(tmp_path):
    """A server that cannot start fails fast with the reason from its own output."""
    server = LiveServer(tmp_path / "no-such-bundle", tmp_path)
    with pytest.raises(LiveServerError, match="cannot serve") as e:
        server.start(timeout=30)
    assert "exited with code" in str(e.value)
    assert not server.running
