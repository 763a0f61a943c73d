"""FastAPI dependencies: everything a route needs comes from ``app.state`` through these, so tests
can build an app with other settings, a fake scorer or an in-memory store without patching.

They are ``async def`` because none of them blocks: FastAPI would otherwise send each one
through the thread pool, several hops per request."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from features.bundle import Bundle
from serving.batcher import Batcher
from serving.errors import ModelNotReady, Unauthorized
from serving.priority import Policy
from serving.settings import Settings
from serving.store import Store

# auto_error=False: a missing/malformed header is answered by our 401 (ErrorBody), not FastAPI's.
_bearer = HTTPBearer(auto_error=False, description="An API key from CARETRIAGE_API_KEYS.")


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def _loaded(request: Request, name: str) -> object:
    value = getattr(request.app.state, name, None)
    if value is None:
        raise ModelNotReady()
    return value


async def get_bundle(request: Request) -> Bundle:
    return _loaded(request, "bundle")  # type: ignore[return-value]


async def get_batcher(request: Request) -> Batcher:
    return _loaded(request, "batcher")  # type: ignore[return-value]


async def get_store(request: Request) -> Store:
    return _loaded(request, "store")  # type: ignore[return-value]


async def get_policy(request: Request) -> Policy:
    return _loaded(request, "policy")  # type: ignore[return-value]


def _verify(request: Request, token: str | None) -> None:
    if not token:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    given = token.encode("utf-8")
    keys: list[bytes] = request.app.state.api_keys
    ok = False
    for key in keys:  # no early exit: the time taken does not depend on which key matched
        ok |= hmac.compare_digest(given, key)
    if not ok:
        raise Unauthorized("invalid API key")


async def require_api_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """``Authorization: Bearer <key>`` with a configured key, else 401 (constant-time compare)."""
    _verify(request, credentials.credentials if credentials else None)


def check_auth_first(request: Request) -> None:
    """For error handlers: raise Unauthorized if the matched route needs a key and the request
    lacks a valid one. FastAPI parses a JSON body before it runs dependencies, so without this
    an anonymous client would get a 422 describing our validation instead of a 401."""
    route = request.scope.get("route")
    if route is None:  # older Starlette does not record the route: every /v1 route needs a key
        needed = request.url.path.startswith("/v1/")
    else:
        deps = getattr(route, "dependencies", None) or []
        needed = any(getattr(d, "dependency", None) is require_api_key for d in deps)
    if not needed:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    _verify(request, token.strip() if scheme.lower() == "bearer" else None)


SettingsDep = Annotated[Settings, Depends(get_settings)]
BundleDep = Annotated[Bundle, Depends(get_bundle)]
BatcherDep = Annotated[Batcher, Depends(get_batcher)]
StoreDep = Annotated[Store, Depends(get_store)]
PolicyDep = Annotated[Policy, Depends(get_policy)]
Authorized = Depends(require_api_key)
