"""A real browser against the real server process: the browser tooling works end to end (system
Chromium starts, reaches the server on loopback, renders, takes screenshots), so page tests that
fail later fail for their own reasons."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.browser import browser_page, collect_errors, require_chromium
from tests.live import LiveServer

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(onnx_bundle: Path, tmp_path_factory) -> LiveServer:
    require_chromium()  # before paying for a server start
    with LiveServer(onnx_bundle, tmp_path_factory.mktemp("live")) as s:
        yield s


def shown_json(page) -> dict:
    """The JSON document as the browser shows it (Chromium renders it in a <pre>)."""
    return json.loads(page.locator("pre").first.inner_text())


def test_probes_render_in_chromium(server, tmp_path):
    with browser_page(server.url) as page:
        errors = collect_errors(page)
        r = page.goto("/healthz")
        assert r is not None and r.status == 200
        assert shown_json(page) == {"status": "ok"}

        r = page.goto("/readyz")
        assert r is not None and r.status == 200
        assert shown_json(page) == {"status": "ready"}  # public: nothing more

        shot = tmp_path / "readyz.png"
        page.screenshot(path=str(shot), full_page=True)
        assert errors == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 1000


def test_docs_render_from_the_server_alone(server):
    """/docs draws Swagger UI with every request to the server itself: no CDN, so the docs
    work offline (FastAPI's default page was blank without internet access)."""
    with browser_page(server.url) as page:
        errors = collect_errors(page)
        requested: list[str] = []
        page.on("request", lambda r: requested.append(r.url))
        r = page.goto("/docs")
        assert r is not None and r.status == 200
        # Drawn from /openapi.json by the vendored script: the title and an operation.
        page.locator(".swagger-ui .info .title").filter(has_text="caretriage").wait_for()
        page.locator(".opblock-summary-path", has_text="/v1/score").first.wait_for()
        assert errors == []
    assert requested and all(u.startswith(server.url) for u in requested), requested
