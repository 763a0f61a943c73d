"""``/docs``: the interactive API docs, from assets this package ships.

FastAPI's own page loads Swagger UI from a CDN (and its favicon from fastapi.tiangolo.com), so
on a machine without internet access the docs were a blank page. The same page here points at
``serving/vendor/swagger-ui/`` (Swagger UI 5, Apache-2.0; provenance in its README.md), served
under ``/docs/assets/``. ReDoc, which would need another megabyte of vendored script and web
fonts, is not served.
"""

from __future__ import annotations

import gzip
from functools import cache
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response

from serving.errors import NotFound

router = APIRouter(include_in_schema=False)

VENDOR = Path(__file__).resolve().parent.parent / "vendor" / "swagger-ui"
# The files the page uses, and nothing else from that folder.
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}
# Swagger UI would otherwise send the spec to validator.swagger.io for a badge.
PARAMETERS = {"validatorUrl": None}


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI for ``/openapi.json``, every asset served by this app."""
    root = request.scope.get("root_path", "").rstrip("/")
    assets = f"{root}/docs/assets"
    return get_swagger_ui_html(
        openapi_url=root + (request.app.openapi_url or "/openapi.json"),
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{assets}/swagger-ui-bundle.js",
        swagger_css_url=f"{assets}/swagger-ui.css",
        swagger_favicon_url=f"{assets}/favicon-32x32.png",
        swagger_ui_parameters=PARAMETERS,
    )


@cache
def _asset(name: str) -> bytes:
    """A vendored file's bytes; the 1.4 MB script is kept gzipped in the package (400 KB)."""
    packed = VENDOR / f"{name}.gz"
    if packed.is_file():
        return gzip.decompress(packed.read_bytes())
    return (VENDOR / name).read_bytes()


@router.get("/docs/assets/{name}")
def swagger_ui_asset(name: str) -> Response:
    """One of the vendored files (cached by the browser: they change only with a release)."""
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"no docs asset {name!r}", ["name"])
    return Response(
        _asset(name), media_type=media_type, headers={"Cache-Control": "public, max-age=86400"}
    )
