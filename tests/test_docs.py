"""``/docs`` works offline: its page references only this server, and every asset it names is
served from the package (FastAPI's default page loaded Swagger UI from a CDN)."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from tests.test_api import assert_error, make_settings

ASSETS = Path(__file__).resolve().parent.parent / "serving" / "vendor" / "swagger-ui"


def vendored(name: str) -> bytes:
    """A vendored file's bytes, unpacked if the package keeps it gzipped."""
    packed = ASSETS / f"{name}.gz"
    if packed.is_file():
        return gzip.decompress(packed.read_bytes())
    return (ASSETS / name).read_bytes()


@pytest.fixture(scope="module")
def client(onnx_bundle, tmp_path_factory):
    app = create_app(make_settings(onnx_bundle, tmp_path_factory.mktemp("docs")))
    with TestClient(app) as c:
        yield c


def test_docs_reference_no_external_url_and_every_asset_is_served(client):
    r = client.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert not re.findall(r"https?://", r.text), "the page must not load anything off-server"
    refs = re.findall(r'(?:href|src)="([^"]+)"', r.text)
    assert {Path(u).name for u in refs} == {
        "swagger-ui.css",
        "swagger-ui-bundle.js",
        "favicon-32x32.png",
    }
    for url in refs:
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert asset.content == vendored(Path(url).name)
    # The spec the page loads, from this server too.
    assert "url: '/openapi.json'" in r.text
    assert client.get("/openapi.json").status_code == 200


def test_docs_page_honours_a_root_path(onnx_bundle, tmp_path):
    """Behind a proxy that mounts the app under a prefix, the page's URLs carry it."""
    app = create_app(make_settings(onnx_bundle, tmp_path))
    with TestClient(app, root_path="/triage") as c:
        text = c.get("/docs").text
    assert "/triage/docs/assets/swagger-ui-bundle.js" in text
    assert "url: '/triage/openapi.json'" in text


def test_only_the_pages_assets_are_served(client):
    for name in ("LICENSE", "README.md", "..%2F..%2Fapp.py", "swagger-ui.js"):
        assert_error(client.get(f"/docs/assets/{name}"), 404, "not_found")


def test_no_validator_badge_and_no_redoc(client):
    # Swagger UI would send the spec to validator.swagger.io; ReDoc needs a CDN: not served.
    assert '"validatorUrl": null' in client.get("/docs").text
    assert client.get("/redoc").status_code == 404


def test_the_vendored_assets_ship_with_their_licence():
    licence = (ASSETS / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0" in licence
    note = (ASSETS / "README.md").read_text()
    assert "swagger-ui-py" in note and "Apache" in note
