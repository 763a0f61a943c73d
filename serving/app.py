"""The FastAPI application. ``create_app`` builds it; nothing happens at import.

The lifespan loads everything heavy once (bundle, ONNX session, policy, store), warms the model
and starts the batcher; routes receive them through ``serving.deps``. Run with ``caretriage
serve``, or ``uvicorn --factory serving.app:app_factory`` with the flags the README's "Under
another server" gives: every limit that can live in an ASGI app (rate limits, body size and
time, admission) is here; header size and time need ``serving.protocol``'s HTTP protocol.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.admission import AdmissionMiddleware
from serving.assignments import AssignmentStore
from serving.contacts import ContactStore
from serving.deps import check_auth_first
from serving.dictionary import DictionarySlot
from serving.dictionary import follow as follow_dictionary
from serving.errors import BodyLimitMiddleware, install_error_handlers, responses
from serving.experiment_store import ExperimentStore
from serving.labeling.workspace import Workspace
from serving.logs import (
    AccessLogMiddleware,
    UnhandledErrorMiddleware,
    request_id,
    sane_request_id,
)
from serving.metrics import Metrics
from serving.metrics import start_server as start_metrics_server
from serving.priority import load_policy
from serving.ratelimit import RateLimiter, RateLimitHeadersMiddleware
from serving.routers import (
    admin,
    agents,
    assign,
    contacts,
    dictionary,
    docs,
    experiments,
    health,
    labeling,
    metrics,
    model,
    pages,
    reports,
    score,
    users,
)
from serving.schemas import UploadRequest
from serving.served import ModelSlot, follow, load_served
from serving.settings import Settings
from serving.store import Store

log = logging.getLogger("caretriage.serving")

DESCRIPTION = """
Turns social-media posts addressed to a brand into prioritized, routed customer-service work.

`POST /v1/score` classifies each post (topic, sentiment, actionability), gives it a priority
(0-100, P1-P4, respond-by time, reasons) and suggests agents from the roster (`/v1/agents`).
Every `/v1` route needs `Authorization: Bearer <key>`; each key has a budget of requests and of
posts per window, reported in `RateLimit-Limit`/`-Remaining`/`-Reset` and answered with 429
and `Retry-After` once spent. Errors share one body:
`{"error": ..., "message": ..., "fields": [...]}`.
"""


class RequestIdMiddleware:
    """Takes ``X-Request-ID`` from the client (or makes one), exposes it to logs and handlers,
    and echoes it on the response so a client can quote it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers", ())).get(b"x-request-id", b"").decode("latin-1")
        rid = sane_request_id(given) or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        token = request_id.set(rid)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"]
                message["headers"] = [*headers, (b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)


def _make_lifespan(settings: Settings) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = app.state
        store = Store(settings.database_url)
        await run_in_threadpool(store.upgrade)
        dictionary = DictionarySlot(state, store)
        policy = (await dictionary.start(lambda: load_policy(settings.policy_path()))).policy
        slot = ModelSlot(state, settings, policy)
        served = await load_served(settings.model_dir, settings, policy, require_self_check=False)
        slot.install(served)
        extra = sorted(set(settings.abstain_below) - set(served.bundle.schema_.names))
        if extra:
            log.warning("abstain_below names tasks the model lacks: %s", extra)
        workspace = Workspace.build(store, settings)
        state.slot, state.dictionary_slot = slot, dictionary
        state.store, state.workspace = store, workspace
        state.contacts = ContactStore.from_settings(store, settings)
        state.casework = AssignmentStore.from_settings(store, settings)
        state.experiments = ExperimentStore(store, settings.dictionary_poll_seconds)
        tasks = [
            asyncio.create_task(_upkeep(workspace, purges=(state.contacts.purge_expired,))),
            asyncio.create_task(follow_dictionary(dictionary, settings.dictionary_poll_seconds)),
        ]
        if settings.model_pointer is not None:
            tasks.append(
                asyncio.create_task(
                    follow(slot, settings.model_pointer, settings.model_poll_seconds)
                )
            )
        bundle = served.bundle
        log.info("serving %s %s from %s", bundle.meta.name, bundle.meta.version, bundle.path)
        _log_bounds(settings, getattr(state, "http_protocol", None))
        scrape = None
        if settings.metrics_port is not None:
            scrape = start_metrics_server(state.metrics, settings.host, settings.metrics_port)
        try:
            yield
        finally:
            if scrape is not None:
                scrape.shutdown()
                scrape.server_close()
            for task in tasks:
                task.cancel()
            await slot.close()
            store.dispose()
            state.batcher = state.scorer = state.store = state.workspace = None
            state.served = state.slot = None
            state.dictionary = state.dictionary_slot = None
            state.contacts = state.casework = state.experiments = None

    return lifespan


def _log_bounds(settings: Settings, protocol: str | None) -> None:
    """Say at start-up which request bounds hold: the app's own always, the header bounds only
    when ``caretriage serve`` installed ``serving.protocol`` (any other server: the first
    request tells, see ``BodyLimitMiddleware``)."""
    body = f"bodies {settings.max_body_bytes} bytes within {settings.body_timeout_seconds:g} s"
    if protocol is not None:
        log.info(
            "request bounds: headers %d bytes within %g s, %s (%s)",
            settings.max_header_bytes,
            settings.header_timeout_seconds,
            body,
            protocol,
        )
    else:
        log.info(
            "request bounds: %s (the app); header size and time are bounded only by "
            "serving.protocol's HTTP protocol, which the first request will show (a warning "
            "if it is not this server's)",
            body,
        )


async def _upkeep(
    workspace: Workspace, period: float = 2.0, purges: Sequence[Callable[[], object]] = ()
) -> None:
    """Re-rank the labeling queue's head while labels arrive, and drop sampled traffic (and,
    through ``purges``, contacts) past its retention, off the request path. Errors are
    logged, never fatal."""
    purged_at = 0.0
    while True:
        await asyncio.sleep(period)
        try:
            if workspace.refresh_due():
                await run_in_threadpool(workspace.refresh)
            now = time.monotonic()
            if now - purged_at > 3600:
                purged_at = now
                await run_in_threadpool(workspace.labels.purge_expired)
                for purge in purges:
                    await run_in_threadpool(purge)
        except Exception:
            log.exception("labeling upkeep failed; retrying")


# Paths whose admin-key check counts wrong keys against the client (429 once past the brake).
_ADMIN_KEYED = ("/v1/admin/", "/metrics")


def _complete_openapi(app: FastAPI, models: Sequence[type[BaseModel]]) -> None:
    """What the routes cannot declare themselves, added to the OpenAPI document: ``models``
    (and those they nest) as components, since a route that parses its body itself names its
    schema by reference only and a reference to a missing component left that body
    undocumented; and the answers of the middleware, which every route can give: 408 and 413
    where there is a body, 429 where a key is checked (rate limits, the wrong-key brake)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        doc = generate()
        components = doc.setdefault("components", {}).setdefault("schemas", {})
        for cls in models:
            schema = cls.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, nested in schema.pop("$defs", {}).items():
                components.setdefault(name, nested)
            components.setdefault(cls.__name__, schema)
        for path, operations in doc.get("paths", {}).items():
            for op in operations.values():
                codes = [408, 413] if "requestBody" in op else []
                if op.get("security") or path.startswith(_ADMIN_KEYED):
                    codes.append(429)
                for code, entry in responses(*codes).items():
                    op.setdefault("responses", {}).setdefault(
                        str(code),
                        {
                            "description": entry["description"],
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/ErrorBody"}
                                }
                            },
                        },
                    )
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app for ``settings`` (default: from the environment). Loading happens in the
    lifespan, i.e. when the server (or a ``TestClient`` context) starts, not here."""
    settings = settings or Settings()
    app = FastAPI(
        title="caretriage",
        summary="Prioritized, routed customer-service work from social-media posts.",
        description=DESCRIPTION,
        version="1",
        lifespan=_make_lifespan(settings),
        # /docs from the package's own assets (serving.routers.docs): FastAPI's loads a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.http_protocol = None  # "serving.protocol" when caretriage serve installs it
    app.state.api_keys = settings.api_key_bytes()
    app.state.auth_first = check_auth_first
    app.state.bundle = app.state.policy = app.state.scorer = None
    app.state.store = app.state.batcher = app.state.workspace = None
    app.state.served = app.state.slot = None
    app.state.dictionary = app.state.dictionary_slot = None
    app.state.contacts = app.state.casework = app.state.experiments = None
    app.state.metrics = Metrics(app.state)
    app.state.batch_observer = app.state.metrics.observe_batch  # ModelSlot hands it to batchers
    app.state.rate_limiter = RateLimiter(settings, on_limited=app.state.metrics.rate_limited_by)
    install_error_handlers(app)
    for r in (
        health.router,
        docs.router,
        model.router,
        agents.router,
        score.router,
        contacts.router,
        assign.router,
        labeling.router,
        users.router,
        admin.router,
        dictionary.router,
        experiments.router,
        metrics.router,
        reports.router,
        pages.router,
    ):
        app.include_router(r)
    pages.mount_static(app)
    _complete_openapi(app, [UploadRequest])  # POST /v1/labeling/items reads JSON itself
    # Added last = outermost: ids first, then the size limit before anything reads the body.
    app.add_middleware(RateLimitHeadersMiddleware)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        timeout_s=settings.body_timeout_seconds,
    )
    # Over the queue deadline, /v1/score is refused from its headers, before its body is read.
    app.add_middleware(AdmissionMiddleware, state=app.state)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
        )
    app.add_middleware(UnhandledErrorMiddleware)  # one record per 500, content withheld
    app.add_middleware(AccessLogMiddleware, metrics=app.state.metrics)
    app.add_middleware(RequestIdMiddleware)
    return app


def app_factory() -> FastAPI:
    """For ``uvicorn --factory serving.app:app_factory``: settings from the environment, checked
    and logged as ``caretriage serve`` does (one line, no traceback, for a bad bundle or an
    unreachable store; the service's log format, and no uvicorn access log, which names paths
    with their query: customer ids and handles)."""
    from serving.cli import check
    from serving.logs import configure
    from serving.settings import SettingsError

    try:
        settings = Settings()
    except SettingsError as e:
        raise SystemExit(f"caretriage: {e}") from e
    configure(settings.log_level, settings.log_format)
    check(settings)
    return create_app(settings)
