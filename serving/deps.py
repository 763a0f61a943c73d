"""FastAPI dependencies: everything a route needs comes from ``app.state`` through these, so tests
can build an app with other settings, a fake scorer or an in-memory store without patching.

They are ``async def`` because none of them blocks: FastAPI would otherwise send each one
through the thread pool, several hops per request."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from features.bundle import Bundle
from features.schema import LabelSchema
from serving.batcher import Batcher
from serving.dictionary import Dictionary
from serving.errors import Forbidden, ModelNotReady, Unauthorized
from serving.labeling.accounts import CSRF_HEADER, SESSION_COOKIE, Session, fingerprint
from serving.labeling.store import User
from serving.labeling.workspace import Workspace
from serving.metrics import Metrics
from serving.priority import Policy
from serving.ratelimit import REQUESTS, RateLimiter, client_address
from serving.served import Served
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


async def get_served(request: Request) -> Served:
    """The model this request uses from start to end: FastAPI resolves it once per request,
    so its bundle and batcher always belong together, even across a model swap."""
    return _loaded(request, "served")  # type: ignore[return-value]


async def get_bundle(served: Annotated[Served, Depends(get_served)]) -> Bundle:
    return served.bundle


async def get_batcher(served: Annotated[Served, Depends(get_served)]) -> Batcher:
    return served.batcher


async def get_store(request: Request) -> Store:
    return _loaded(request, "store")  # type: ignore[return-value]


async def get_policy(request: Request) -> Policy:
    return _loaded(request, "policy")  # type: ignore[return-value]


async def get_dictionary(request: Request) -> Dictionary:
    """The prioritization dictionary this request uses from start to end (resolved once per
    request; a replacement installs a new object, never edits this one)."""
    return _loaded(request, "dictionary")  # type: ignore[return-value]


async def get_workspace(request: Request) -> Workspace:
    return _loaded(request, "workspace")  # type: ignore[return-value]


async def get_label_schema(
    ws: Annotated[Workspace, Depends(get_workspace)], bundle: Annotated[Bundle, Depends(get_bundle)]
) -> LabelSchema:
    """The schema evaluators label under: the served one united with the deployment's."""
    return ws.schema(bundle.schema_)


_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


async def session_of(request: Request, ws: Workspace) -> tuple[User, Session] | None:
    """The signed-in user behind the request's session cookie, or None (no cookie, a bad or
    expired signature, a disabled account, or a password changed since)."""
    session = ws.signer.read_session(request.cookies.get(SESSION_COOKIE))
    if session is None:
        return None
    user = await run_in_threadpool(ws.user, session.user_id)
    if user is None or user.disabled or fingerprint(user.password_hash) != session.fingerprint:
        return None
    return user, session


def require_role(role: str) -> Callable[..., Awaitable[User]]:
    """A dependency: the signed-in user if they hold ``role`` (or above), else 401/403. A
    state-changing request must also carry the session's CSRF token in ``X-CSRF-Token``. An
    API key is not a session: helpdesk integrations cannot label."""

    async def dependency(request: Request, ws: Annotated[Workspace, Depends(get_workspace)]):
        found = await session_of(request, ws)
        if found is None:
            raise Unauthorized("not signed in: sign in at /login")
        user, session = found
        if not user.can(role):
            raise Forbidden(f"this needs the {role} role; {user.name} is {user.role}")
        if request.method not in _SAFE_METHODS and not ws.signer.check_csrf(
            session.nonce, request.headers.get(CSRF_HEADER)
        ):
            raise Forbidden(f"missing or invalid CSRF token: send the {CSRF_HEADER} header")
        request.state.session = session
        return user

    return dependency


def _verify(request: Request, token: str | None) -> int:
    """The index of the configured key ``token`` is, else 401."""
    if not token:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    given = token.encode("utf-8")
    keys: list[bytes] = request.app.state.api_keys
    # No early exit: the time taken does not depend on which key matched.
    hits = [hmac.compare_digest(given, key) for key in keys]
    if not any(hits):
        raise Unauthorized("invalid API key")
    return hits.index(True)


def _verify_limited(request: Request, token: str | None, charge: bool = True) -> None:
    """``_verify`` under the rate limits: a client past its wrong-key budget is refused before
    its key is looked at, a wrong key counts against it, and a right one is charged a request.
    Synchronous (it may wait on Redis): call through ``RateLimiter.call``."""
    limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    if limiter is None:
        _verify(request, token)
        return
    client = client_address(request)
    limiter.check_client(client)
    try:
        index = _verify(request, token)
    except Unauthorized:
        if token:  # a missing key is not a guess
            limiter.failed(client)
        raise
    kid = limiter.key_ids[index]
    request.state.api_key_id = kid
    if charge:
        limiter.charge(request, kid, REQUESTS)


async def require_api_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """``Authorization: Bearer <key>`` with a configured key, else 401 (constant-time compare);
    429 past the key's request budget or the client's wrong-key budget."""
    token = credentials.credentials if credentials else None
    limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    if limiter is None:
        _verify(request, token)
    else:
        await limiter.call(_verify_limited, request, token)


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
    # Wrong keys count here too, or an unparsable body would be a way around the brake. Not
    # charged: the request is refused anyway. Synchronous: Redis is asked on the event loop on
    # this path (bounded by ratelimit.REDIS_TIMEOUT_S).
    _verify_limited(request, token.strip() if scheme.lower() == "bearer" else None, charge=False)


SettingsDep = Annotated[Settings, Depends(get_settings)]
BundleDep = Annotated[Bundle, Depends(get_bundle)]
BatcherDep = Annotated[Batcher, Depends(get_batcher)]
StoreDep = Annotated[Store, Depends(get_store)]
PolicyDep = Annotated[Policy, Depends(get_policy)]
DictionaryDep = Annotated[Dictionary, Depends(get_dictionary)]
Authorized = Depends(require_api_key)
WorkspaceDep = Annotated[Workspace, Depends(get_workspace)]
LabelSchemaDep = Annotated[LabelSchema, Depends(get_label_schema)]
Evaluator = Annotated[User, Depends(require_role("evaluator"))]
Lead = Annotated[User, Depends(require_role("lead"))]
Admin = Annotated[User, Depends(require_role("admin"))]


async def require_admin(request: Request, ws: Annotated[Workspace, Depends(get_workspace)]) -> str:
    """An admin key (``Authorization: Bearer``, from CARETRIAGE_ADMIN_KEYS) or a signed-in
    admin with the CSRF header; returns who. Helpdesk keys are refused."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
        if limiter is None:
            _verify_admin(request, token.strip())
        else:
            await limiter.call(_verify_admin, request, token.strip(), limiter)
        return "admin-key"
    user = await require_role("admin")(request, ws)
    return user.name


def _verify_admin(request: Request, token: str, limiter: RateLimiter | None = None) -> None:
    """403 unless ``token`` is an admin key; wrong ones count against the client's budget."""
    client = client_address(request)
    if limiter is not None:
        limiter.check_client(client)
    given = token.encode("utf-8")
    ok = False
    for key in request.app.state.settings.admin_keys:  # no early exit: constant time
        ok |= hmac.compare_digest(given, key.get_secret_value().encode("utf-8"))
    if not ok:
        if limiter is not None:
            limiter.failed(client)
        raise Forbidden("this needs an admin key (CARETRIAGE_ADMIN_KEYS) or an admin session")


AdminOnly = Annotated[str, Depends(require_admin)]


async def get_rate_limiter(request: Request) -> RateLimiter:
    return request.app.state.rate_limiter


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


RateLimits = Annotated[RateLimiter, Depends(get_rate_limiter)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
