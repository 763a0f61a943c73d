"""Per-key rate limits and the brake on wrong keys (serving/ratelimit.py), through the API."""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.ratelimit import key_id
from serving.settings import Settings, SettingsError

KEY_A = "rate-key-a-0123456789abcdef"
KEY_B = "rate-key-b-0123456789abcdef"
ADMIN = "rate-admin-key-0123456789abcdef"
REDIS_URL = os.environ.get("CARETRIAGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def posts(n: int) -> dict:
    return {"posts": [{"id": f"p{i}", "text": f"my bag is lost, flight {i}"} for i in range(n)]}


def settings(bundle: Path, tmp: Path, **kw) -> Settings:
    kw.setdefault("api_keys", [KEY_A, KEY_B])
    return Settings(model_dir=bundle, database_url=f"sqlite:///{tmp / 'rl.db'}", **kw)


@pytest.fixture
def make_client(onnx_bundle, tmp_path):
    """Started TestClients over apps built from ``Settings`` overrides; closed at the end."""
    opened: list[TestClient] = []

    def make(address: str = "testclient", **kw) -> TestClient:
        folder = tmp_path / uuid.uuid4().hex[:8]
        folder.mkdir()
        client = TestClient(create_app(settings(onnx_bundle, folder, **kw)), client=(address, 1))
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for c in opened:
        c.__exit__(None, None, None)


def quota(r) -> tuple[int, int, int]:
    h = r.headers
    return int(h["RateLimit-Limit"]), int(h["RateLimit-Remaining"]), int(h["RateLimit-Reset"])


# -------------------------------------------------------------------------------- settings


def test_key_id_is_the_sha256_prefix_an_operator_can_compute():
    assert key_id(KEY_A) == hashlib.sha256(KEY_A.encode()).hexdigest()[:12]
    assert KEY_A not in key_id(KEY_A)


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        ("rate_limit", "lots", "CARETRIAGE_RATE_LIMIT"),
        ("post_rate_limit", "10/fortnight", "CARETRIAGE_POST_RATE_LIMIT"),
        ("auth_failure_limit", "", "CARETRIAGE_AUTH_FAILURE_LIMIT"),
        ("rate_limit_overrides", {"000000000000": "5/minute"}, "not the id of a configured"),
        ("post_rate_limit_overrides", {key_id(KEY_A): "many"}, "POST_RATE_LIMIT_OVERRIDES"),
        ("rate_limit_storage", "memcached://u:hunter2-secret@h:11211", "is not one of"),
    ],
)
def test_unreadable_rate_limit_settings_are_refused(field, value, said):
    with pytest.raises(SettingsError) as e:
        Settings(api_keys=[KEY_A], **{field: value})
    assert said in str(e.value)
    assert "hunter2" not in str(e.value)  # a storage URL's password is never echoed


def test_rate_limit_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("CARETRIAGE_API_KEYS", KEY_A)
    monkeypatch.setenv("CARETRIAGE_RATE_LIMIT", "10 per second")
    monkeypatch.setenv(
        "CARETRIAGE_POST_RATE_LIMIT_OVERRIDES", f'{{"{key_id(KEY_A)}": "unlimited"}}'
    )
    s = Settings()
    assert s.rate_limit == "10 per second"
    assert s.post_rate_limit_overrides == {key_id(KEY_A): "unlimited"}
    assert s.rate_limit_storage == "memory://" and s.rate_limit_enabled


# ----------------------------------------------------------------------------- per key


def test_requests_per_key_then_429_with_headers(make_client):
    c = make_client(rate_limit="3/minute")
    seen = []
    for _ in range(3):
        r = c.get("/v1/agents", headers=auth(KEY_A))
        assert r.status_code == 200, r.text
        seen.append(quota(r))
    assert [s[:2] for s in seen] == [(3, 2), (3, 1), (3, 0)]
    assert all(0 < s[2] <= 60 for s in seen)
    r = c.get("/v1/agents", headers=auth(KEY_A))
    assert r.status_code == 429
    body = r.json()
    assert body["error"] == "too_many_requests" and "requests" in body["message"]
    assert 1 <= int(r.headers["Retry-After"]) <= 61
    assert quota(r)[:2] == (3, 0)
    # Another key has its own budget.
    r = c.get("/v1/agents", headers=auth(KEY_B))
    assert r.status_code == 200 and quota(r)[:2] == (3, 2)


def test_per_key_override_and_unlimited(make_client):
    c = make_client(
        rate_limit="2/minute",
        rate_limit_overrides={key_id(KEY_A): "5/minute", key_id(KEY_B): "unlimited"},
    )
    r = c.get("/v1/agents", headers=auth(KEY_A))
    assert quota(r)[:2] == (5, 4)
    for _ in range(10):
        r = c.get("/v1/agents", headers=auth(KEY_B))
        assert r.status_code == 200
    assert "RateLimit-Limit" not in r.headers


def test_posts_count_per_post_and_a_batch_over_the_budget_is_refused(make_client):
    c = make_client(post_rate_limit="10/minute")
    r = c.post("/v1/score", headers=auth(KEY_A), json=posts(4))
    assert r.status_code == 200, r.text
    # The scarcer budget is the one reported: 6 of 10 posts left, not 599 of 600 requests.
    assert quota(r)[:2] == (10, 6)
    assert c.post("/v1/score", headers=auth(KEY_A), json=posts(4)).status_code == 200
    r = c.post("/v1/score", headers=auth(KEY_A), json=posts(4))
    assert r.status_code == 429, r.text
    assert "posts" in r.json()["message"] and r.headers["Retry-After"]
    assert quota(r)[:2] == (10, 2)
    # Two posts fit what is left; a batch larger than the whole budget never would.
    assert c.post("/v1/score", headers=auth(KEY_A), json=posts(2)).status_code == 200
    r = c.post("/v1/score", headers=auth(KEY_B), json=posts(11))
    assert r.status_code == 429
    assert "whole limit" in r.json()["message"]
    # Refused posts were not taken from the budget.
    r = c.post("/v1/score", headers=auth(KEY_B), json=posts(10))
    assert r.status_code == 200 and quota(r)[:2] == (10, 0)


def test_unlimited_routes_carry_no_headers(make_client):
    c = make_client(rate_limit="1/minute")
    for _ in range(3):
        r = c.get("/healthz")
        assert r.status_code == 200 and "RateLimit-Limit" not in r.headers


def test_the_off_switch(make_client):
    c = make_client(rate_limit="1/minute", auth_failure_limit="1/minute", rate_limit_enabled=False)
    for _ in range(5):
        r = c.get("/v1/agents", headers=auth(KEY_A))
        assert r.status_code == 200 and "RateLimit-Limit" not in r.headers
        assert c.get("/v1/agents", headers=auth("wrong-key-0123456789abcdef")).status_code == 401


# --------------------------------------------------------------------------- wrong keys


def test_wrong_keys_from_one_client_are_slowed_down(make_client):
    c = make_client(auth_failure_limit="3/minute")
    wrong = auth("wrong-key-0123456789abcdef")
    # A missing key is not a guess: it does not count.
    for _ in range(5):
        assert c.get("/v1/agents").status_code == 401
    for _ in range(2):
        assert c.get("/v1/agents", headers=wrong).status_code == 401
    # An unparsable body does not dodge the count (the 401 comes from the error handler).
    r = c.post(
        "/v1/score", content=b'{"posts": [', headers={**wrong, "Content-Type": "application/json"}
    )
    assert r.status_code == 401
    # Past the budget every request from this address is refused, the right key included:
    # a 200 for a right guess would keep the guessing going.
    for headers in (wrong, auth(KEY_A)):
        r = c.get("/v1/agents", headers=headers)
        assert r.status_code == 429, r.text
        assert "invalid API keys" in r.json()["message"]
        assert 1 <= int(r.headers["Retry-After"]) <= 61
    r = c.post("/v1/score", content=b"{", headers={**wrong, "Content-Type": "application/json"})
    assert r.status_code == 429


def test_wrong_admin_keys_count_too(make_client):
    c = make_client(admin_keys=[ADMIN], auth_failure_limit="2/minute")
    assert c.get("/metrics", headers=auth(ADMIN)).status_code == 200
    for _ in range(2):
        assert c.get("/metrics", headers=auth("not-the-admin-key-0123")).status_code == 403
    assert c.get("/metrics", headers=auth(ADMIN)).status_code == 429


def test_a_failing_storage_lets_requests_through_and_logs_once(make_client, caplog):
    c = make_client(rate_limit="1/minute", rate_limit_storage="redis://:pw-secret@127.0.0.1:9/0")
    with caplog.at_level(logging.WARNING, logger="caretriage"):
        for _ in range(3):
            r = c.get("/v1/agents", headers=auth(KEY_A))
            assert r.status_code == 200 and "RateLimit-Limit" not in r.headers
    said = [r.getMessage() for r in caplog.records if "rate-limit storage" in r.getMessage()]
    assert len(said) == 1 and "pw-secret" not in said[0]


# ---------------------------------------------------------------------------------- Redis


@pytest.fixture(scope="module")
def redis_url() -> str:
    """The test Redis, or a skip; under CI (``CI=true``) a failure, as for PostgreSQL."""
    redis = pytest.importorskip("redis")
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except Exception as e:
        msg = f"Redis unreachable at {REDIS_URL} ({type(e).__name__}); start redis-server"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(msg + "; under CI=true the Redis tests must run", pytrace=False)
        pytest.skip(msg)
    return REDIS_URL


def test_two_processes_share_limits_through_redis(make_client, redis_url):
    """Two app instances (as two server processes would) draw on one budget per key."""
    key = secrets.token_urlsafe(24)  # fresh ids: counts left by earlier runs never interfere
    common = {"api_keys": [key], "rate_limit": "6/minute", "post_rate_limit": "6/minute"}
    one = make_client(rate_limit_storage=redis_url, **common)
    two = make_client(rate_limit_storage=redis_url, **common)
    alone = make_client(**common)  # memory:// keeps its own counts
    assert quota(one.get("/v1/agents", headers=auth(key)))[:2] == (6, 5)
    assert quota(two.get("/v1/agents", headers=auth(key)))[:2] == (6, 4)
    assert quota(one.get("/v1/agents", headers=auth(key)))[:2] == (6, 3)
    assert quota(alone.get("/v1/agents", headers=auth(key)))[:2] == (6, 5)
    # Posts are shared too: 4 through one, then 3 through the other are over 6.
    r = one.post("/v1/score", headers=auth(key), json=posts(4))
    assert r.status_code == 200 and quota(r)[:2] == (6, 2)  # posts: the scarcer budget
    r = two.post("/v1/score", headers=auth(key), json=posts(3))
    assert r.status_code == 429 and "6 posts per 1 minute" in r.json()["message"]
    # Both scoring requests counted as requests: one left, for either instance.
    assert two.get("/v1/agents", headers=auth(key)).status_code == 200
    r = one.get("/v1/agents", headers=auth(key))
    assert r.status_code == 429 and "6 requests per 1 minute" in r.json()["message"]
    assert quota(r)[:2] == (6, 0)


def test_two_processes_share_the_wrong_key_brake_through_redis(make_client, redis_url):
    common = {
        "address": f"test-{uuid.uuid4().hex}",  # a fresh client: earlier runs' counts differ
        "auth_failure_limit": "3/minute",
        "rate_limit_storage": redis_url,
    }
    one, two = make_client(**common), make_client(**common)
    wrong = auth("wrong-key-0123456789abcdef")
    for _ in range(3):
        assert one.get("/v1/agents", headers=wrong).status_code == 401
    assert one.get("/v1/agents", headers=auth(KEY_A)).status_code == 429
    # The other process had not seen this client guess: one more guess gets through (and is
    # counted), then the shared count refuses it there too.
    assert two.get("/v1/agents", headers=wrong).status_code == 401
    assert two.get("/v1/agents", headers=auth(KEY_A)).status_code == 429
