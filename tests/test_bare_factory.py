"""The app started the bare way, ``uvicorn --factory serving.app:app_factory``, enforces what an
ASGI app can by itself: per-key rate limits, body size and body time. Header size and time
need ``serving.protocol``'s HTTP protocol: without it the app says so (``/v1/model``, one
warning), and ``--http serving.protocol:SettingsGuardedProtocol`` brings it to a bare uvicorn.
Issue 21 had found every bound applied only under ``caretriage serve``."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from fastapi import FastAPI, Request

from serving.errors import PROTOCOL_BOUNDS, BodyLimitMiddleware, install_error_handlers
from tests.live import HOST, REPO_ROOT, LiveServer
from tests.test_protocol import SOCKET_TIMEOUT_S, closed_by_server, connect, read_response

BODY_TIMEOUT_S = 1.5
MAX_BODY = 20_000
KEYS = [f"bare-factory-key-{i}-0123456789" for i in range(4)]
LIMITS = {
    "CARETRIAGE_RATE_LIMIT": "3/minute",
    "CARETRIAGE_POST_RATE_LIMIT": "40/minute",
    "CARETRIAGE_MAX_BODY_BYTES": str(MAX_BODY),
    "CARETRIAGE_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT_S),
    "CARETRIAGE_HEADER_TIMEOUT_SECONDS": "1",
    "CARETRIAGE_MAX_HEADER_BYTES": "16384",
}
WARNING = "request headers are not bounded in size or time"


@pytest.fixture(scope="module")
def bare(onnx_bundle, tmp_path_factory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("bare")
    with LiveServer(onnx_bundle, root, api_keys=KEYS, env=LIMITS, uvicorn_args=[]) as s:
        yield s


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def posts(n: int) -> dict:
    return {"posts": [{"id": f"p{i}", "text": f"my bag is lost {i}"} for i in range(n)]}


def test_requests_per_key_are_limited_with_429_and_headers(bare):
    with bare.client(auth=False, headers=auth(KEYS[0])) as http:
        seen = [http.get("/v1/model") for _ in range(4)]
    assert [r.status_code for r in seen] == [200, 200, 200, 429]
    assert seen[0].headers["RateLimit-Limit"] == "3"
    assert seen[2].headers["RateLimit-Remaining"] == "0"
    assert int(seen[3].headers["Retry-After"]) >= 1
    assert seen[3].json()["error"] == "too_many_requests"


def test_posts_per_key_are_limited(bare):
    with bare.client(auth=False, headers=auth(KEYS[1])) as http:
        first = http.post("/v1/score", json=posts(32))
        second = http.post("/v1/score", json=posts(32))
    assert first.status_code == 200, first.text
    assert second.status_code == 429
    assert "posts" in second.json()["message"]


def test_a_body_over_the_limit_gets_413_declared_or_streamed(bare):
    big = json.dumps(posts(1) | {"pad": "x" * MAX_BODY}).encode()

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for i in range(0, len(big), 4096):
            yield big[i : i + 4096]

    with bare.client(auth=False, headers=auth(KEYS[2])) as http:
        declared = http.post("/v1/score", content=big, headers={"Content-Type": "application/json"})
        streamed = http.post(
            "/v1/score", content=chunks(), headers={"Content-Type": "application/json"}
        )
    for r in (declared, streamed):
        assert r.status_code == 413, r.text
        assert r.json()["error"] == "payload_too_large"


def test_a_slow_body_gets_408_and_a_close(bare):
    sock = connect(bare)
    t0 = time.monotonic()
    sock.sendall(
        f"PUT /v1/agents/a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEYS[3]}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{".encode()
    )
    status, headers, body = read_response(sock)
    waited = time.monotonic() - t0
    assert status == 408, body
    assert json.loads(body)["error"] == "request_timeout"
    assert headers.get("connection") == "close"
    assert BODY_TIMEOUT_S - 0.1 < waited < SOCKET_TIMEOUT_S
    assert closed_by_server(sock)
    sock.close()


def test_without_the_protocol_the_app_says_headers_are_unbounded(bare):
    with bare.client(auth=False, headers=auth(KEYS[3])) as http:
        info = http.get("/v1/model")
        for _ in range(2):  # one more keyed request: still a single warning
            http.get("/v1/contacts", params={"customer_id": "secret-customer-42"})
    assert info.status_code == 200
    assert info.json()["protocol_bounds"] is False
    log = bare.log_text()
    assert log.count(WARNING) == 1
    assert "request bounds: bodies" in log  # the start-up line
    # uvicorn's own access log names the query; the app's names the route template only.
    assert "secret-customer-42" not in log
    assert "GET /v1/contacts 4" in log or "GET /v1/contacts 2" in log


def test_the_settings_protocol_brings_header_bounds_to_a_bare_uvicorn(onnx_bundle, tmp_path):
    args = ["--http", "serving.protocol:SettingsGuardedProtocol"]
    with LiveServer(onnx_bundle, tmp_path, env=LIMITS, uvicorn_args=args) as s:
        with s.client() as http:
            assert http.get("/v1/model").json()["protocol_bounds"] is True
        sock = connect(s)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n")
        status, _, body = read_response(sock)
        sock.close()
        assert status == 431, body
        sock = connect(s)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # the head never ends
        status, _, body = read_response(sock)
        sock.close()
        assert status == 408, body
        assert WARNING not in s.log_text()


def test_the_factory_refuses_an_unreachable_store_in_one_line(onnx_bundle, tmp_path):
    env = {
        "CARETRIAGE_API_KEYS": KEYS[0],
        "CARETRIAGE_MODEL_DIR": str(onnx_bundle),
        "CARETRIAGE_DATABASE_URL": "postgresql+psycopg://nobody:secret@127.0.0.1:1/none",
        "PATH": "/usr/bin:/bin",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "uvicorn", "--factory", "serving.app:app_factory", "--host", HOST],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "caretriage: cannot serve: the store at" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "secret" not in proc.stderr


# -- the body time bound, in the app ---------------------------------------------------------


async def _answer(app, extensions: dict | None = None) -> tuple[list[dict], float]:
    """Run ``app`` on a POST whose body stops after its first byte; (messages sent, seconds)."""
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "query_string": b"",
        "headers": [],
        "extensions": extensions or {},
    }
    sent: list[dict] = []
    first = True

    async def receive() -> dict:
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": b"{", "more_body": True}
        await asyncio.sleep(3600)  # the rest never comes
        raise AssertionError("unreachable")

    async def send(message: dict) -> None:
        sent.append(message)

    t0 = time.monotonic()
    await app(scope, receive, send)
    return sent, time.monotonic() - t0


async def _reads_body(scope, receive, send) -> None:
    await Request(scope, receive).body()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_the_app_cuts_a_slow_body_off_with_408():
    inner = FastAPI()
    install_error_handlers(inner)

    @inner.post("/")
    async def read(request: Request) -> dict:
        await request.body()
        return {}

    app = BodyLimitMiddleware(inner, max_bytes=1000, timeout_s=0.3)
    sent, waited = asyncio.run(_answer(app))
    start = sent[0]
    assert start["status"] == 408
    assert (b"connection", b"close") in start["headers"]
    assert json.loads(sent[1]["body"])["error"] == "request_timeout"
    assert 0.25 < waited < 5


def test_under_the_protocol_the_body_time_is_left_to_it():
    """The protocol's own timer answers (and covers bodies the app never reads); the app adds
    none, so the stalled receive is still being awaited when the test gives up."""
    app = BodyLimitMiddleware(_reads_body, max_bytes=1000, timeout_s=0.1)
    bounds = {PROTOCOL_BOUNDS: {"body_timeout_s": 30.0}}

    async def run() -> bool:
        try:
            await asyncio.wait_for(_answer(app, bounds), timeout=0.6)
        except TimeoutError:
            return True
        return False

    assert asyncio.run(run())
