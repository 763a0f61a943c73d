"""One error taxonomy, one error body.

Every failure the API reports is an ``ApiError`` subclass (or is translated into one) and leaves
as ``schemas.ErrorBody`` {error, message, fields}, so clients branch on ``error`` and show
``message``; no handler lets a traceback or framework-specific shape escape.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.schemas import ErrorBody

log = logging.getLogger("caretriage.serving")

# The ASGI scope extension ``serving.protocol`` puts on every request it parses, with its
# header-size and header/body-time limits: how the app knows those limits hold.
PROTOCOL_BOUNDS = "caretriage.protocol_bounds"

# How many field errors the message spells out, and how many paths ``fields`` lists.
_MESSAGE_ERRORS = 5
_MAX_FIELDS = 100


class ApiError(Exception):
    """Base of every error the API reports on purpose."""

    status_code: int = 500
    error: str = "internal"

    def __init__(
        self,
        message: str,
        fields: Sequence[str] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.fields = list(fields)
        self.headers = dict(headers or {})

    def body(self) -> ErrorBody:
        return ErrorBody(
            error=self.error,
            message=printable(self.message),
            fields=[printable(f) for f in self.fields],
        )


def printable(text: str) -> str:
    """``text`` with lone surrogates escaped (``\\ud800``): an error that echoes what the client
    sent must still encode as UTF-8, or the error itself becomes a 500."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class BadRequest(ApiError):
    status_code = 400
    error = "bad_request"


class Unauthorized(ApiError):
    status_code = 401
    error = "unauthorized"

    def __init__(self, message: str = "missing or invalid API key") -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ApiError):
    status_code = 403
    error = "forbidden"


class Conflict(ApiError):
    status_code = 409
    error = "conflict"


class TooManyRequests(ApiError):
    status_code = 429
    error = "too_many_requests"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, round(retry_after + 0.5)))})


class NotFound(ApiError):
    status_code = 404
    error = "not_found"


class MethodNotAllowed(ApiError):
    status_code = 405
    error = "method_not_allowed"


class PayloadTooLarge(ApiError):
    status_code = 413
    error = "payload_too_large"


class ValidationFailed(ApiError):
    status_code = 422
    error = "validation_failed"


class Overloaded(ApiError):
    """Refused to keep the queue within its deadline. Logged as a rate by the batcher
    (``serving.admission.RateLog``), never a line per request."""

    status_code = 503
    error = "overloaded"

    def __init__(
        self, message: str = "too many posts waiting; retry shortly", retry_after: int = 1
    ) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class RequestTimeout(ApiError):
    """Sent by ``serving.protocol`` when a request's headers or body arrive too slowly, or by
    ``BodyLimitMiddleware`` for a slow body under a server without that protocol."""

    status_code = 408
    error = "request_timeout"


class HeadersTooLarge(ApiError):
    """Sent by ``serving.protocol`` when a request's headers exceed the limit."""

    status_code = 431
    error = "headers_too_large"


class ModelNotReady(ApiError):
    status_code = 503
    error = "model_not_ready"

    def __init__(self, message: str = "the model is not loaded yet or is shutting down") -> None:
        super().__init__(message, headers={"Retry-After": "5"})


class InternalError(ApiError):
    status_code = 500
    error = "internal"


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries documenting our error body for ``codes``."""
    text = {
        401: "Missing or invalid API key (or, on labeling routes, not signed in).",
        408: "The request body arrived too slowly (CARETRIAGE_BODY_TIMEOUT_SECONDS).",
        403: "Signed in, but the role does not allow this.",
        409: "Conflicts with the item's state (e.g. answered already).",
        429: "Too many requests for this key, or wrong keys from this client; retry after "
        "the Retry-After header.",
        404: "No such resource.",
        413: "Request body too large.",
        422: "Invalid request; `fields` names each field at fault.",
        503: "Model not ready, or overloaded (retry after the Retry-After header).",
    }
    return {c: {"model": ErrorBody, "description": text.get(c, "Error.")} for c in codes}


_BY_STATUS: dict[int, type[ApiError]] = {
    cls.status_code: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        MethodNotAllowed,
        PayloadTooLarge,
        ValidationFailed,
        RequestTimeout,
    )
}

# Where FastAPI says a parameter came from; the field name follows it.
_SOURCES = {"body", "query", "path", "header", "cookie"}


def field_path(loc: Iterable[Any]) -> str:
    """``("body", "posts", 3, "text")`` -> ``"posts.3.text"``; ``("body",)`` -> ``"body"``."""
    parts = [printable(str(p)) for p in loc]
    if len(parts) > 1 and parts[0] in _SOURCES:
        parts = parts[1:]
    return ".".join(parts) or "body"


def json_problem(exc: BaseException) -> str:
    """What is wrong with JSON text that ``json.loads`` refused with ``exc``, in words a client
    can act on (each cause used to read "not readable as JSON text")."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text (byte {exc.start}); send UTF-8"
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON at character {exc.pos}: {exc.msg}"
    if isinstance(exc, ValueError) and "integer string conversion" in str(exc):
        return f"an integer has more than {sys.get_int_max_str_digits()} digits"
    return "not readable as JSON text (send UTF-8)"


def unreadable_body(exc: BaseException) -> ValidationFailed:
    """The 422 for a body ``json.loads`` refused with ``exc``."""
    return ValidationFailed(f"body: {json_problem(exc)}", ["body"])


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def validation_failed(
    errors: Sequence[Mapping[str, Any]], content_type: str | None
) -> ValidationFailed:
    """Turn pydantic/FastAPI error dicts into one ``ValidationFailed`` naming each field."""
    lines: list[str] = []
    fields: list[str] = []
    for e in errors:
        loc = tuple(e.get("loc", ()))
        kind = e.get("type", "")
        if kind == "json_invalid":
            # FastAPI puts the character offset in the location: name the body, say where.
            pos = loc[1] if len(loc) > 1 else "?"
            reason = (e.get("ctx") or {}).get("error", "invalid JSON")
            path, msg = "body", f"invalid JSON at character {pos}: {reason}"
        elif loc in {("body",), ()} and kind != "missing" and not _is_json(content_type):
            path = "body"
            got = f"got {content_type!r}" if content_type else "no Content-Type was sent"
            msg = f"expected a JSON body with Content-Type: application/json; {got}"
        else:
            path = field_path(loc)
            msg = "required" if kind == "missing" and path == "body" else str(e.get("msg", ""))
        lines.append(f"{path}: {msg}")
        if path not in fields:
            fields.append(path)
    shown = "; ".join(lines[:_MESSAGE_ERRORS])
    if len(lines) > _MESSAGE_ERRORS:
        shown += f"; and {len(lines) - _MESSAGE_ERRORS} more"
    return ValidationFailed(shown or "invalid request", fields[:_MAX_FIELDS])


def error_response(exc: ApiError, request: Request | None = None) -> JSONResponse:
    headers = dict(exc.headers)
    rid = getattr(getattr(request, "state", None), "request_id", None) if request else None
    if rid:
        headers["X-Request-ID"] = rid
    return JSONResponse(exc.body().model_dump(), status_code=exc.status_code, headers=headers)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    if exc.status_code >= 500 and not isinstance(exc, Overloaded):
        log.warning("%s %s -> %d %s", request.method, request.url.path, exc.status_code, exc.error)
    return error_response(exc, request)


def _denied(request: Request) -> JSONResponse | None:
    """The 401 a request without a valid key gets before any word about its body."""
    auth_first = getattr(request.app.state, "auth_first", None)
    if auth_first is not None:
        try:
            auth_first(request)
        except ApiError as denied:
            return error_response(denied, request)
    return None


async def _request_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return _denied(request) or error_response(
        validation_failed(exc.errors(), request.headers.get("content-type")), request
    )


_UNPARSABLE_BODY = "There was an error parsing the body"


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app fully matches at this request's path (asked of the
    routes themselves, since included routers nest theirs)."""
    routes = request.app.router.routes
    return [
        m
        for m in _METHODS
        if any(r.matches({**request.scope, "method": m})[0] is Match.FULL for r in routes)
    ]


async def _http_exception(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (unknown route, wrong method, ...) in our shape."""
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else "request failed"
    headers = dict(exc.headers or {})
    if exc.status_code == 404:
        detail = f"no route {request.method} {request.url.path}"
    elif exc.status_code == 405:
        detail = f"method {request.method} not allowed on {request.url.path}"
        # Starlette names only the first route's methods; a path served by several routes
        # (GET and PUT /v1/agents) allows them all.
        headers["Allow"] = ", ".join(allowed_methods(request))
    elif exc.status_code == 400 and detail == _UNPARSABLE_BODY:
        # FastAPI's answer to a body json.loads refused other than as invalid JSON (not UTF-8,
        # nested too deeply, an integer too long): the same fault, to a client, as invalid
        # JSON, which is a 422 naming the body; FastAPI chains the cause, which says which.
        return _denied(request) or error_response(unreadable_body(exc.__cause__ or exc), request)
    err = ApiError(detail, fields=["body"] if exc.status_code == 413 else (), headers=headers)
    err.status_code = exc.status_code
    cls = _BY_STATUS.get(exc.status_code)
    err.error = cls.error if cls else "http_error"
    return error_response(err, request)


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    """A true bug: log the traceback server-side, return a bare 500 that leaks nothing."""
    rid = getattr(request.state, "request_id", None)
    log.error(
        "unhandled error on %s %s (request %s)", request.method, request.url.path, rid, exc_info=exc
    )
    msg = "internal error" + (f"; quote request id {rid}" if rid else "")
    return error_response(InternalError(msg), request)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(Exception, _unhandled)


def protocol_bounds(scope: Scope) -> dict[str, Any] | None:
    """The header and body limits the server's HTTP protocol enforces on this request
    (``serving.protocol``), or None under a server without them (a bare ``uvicorn``)."""
    return (scope.get("extensions") or {}).get(PROTOCOL_BOUNDS)


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413 before they are buffered, and bodies
    slower than ``timeout_s`` with 408, whatever server runs the app.

    Checks Content-Length up front, and counts streamed (chunked) bodies as they arrive, so a
    client cannot make the server hold more than the limit in memory. The time limit counts
    from the request's start while the app waits for more of its body; where the server's
    protocol bounds bodies itself (``serving.protocol``, which also covers bodies the app never
    reads) it is left to it. The first request without that protocol logs, once, that header
    size and time are unbounded.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float = 0.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self._told = False

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"body: request body exceeds {self.max_bytes} bytes", fields=["body"]
        )

    def _warn_unguarded(self) -> None:
        self._told = True
        log.warning(
            "request headers are not bounded in size or time: this server's HTTP protocol "
            "is not serving.protocol's (run `caretriage serve`, or uvicorn with "
            "`--http serving.protocol:SettingsGuardedProtocol`); bodies are bounded by the app"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        guarded = protocol_bounds(scope) is not None
        if not guarded and not self._told:
            self._warn_unguarded()
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes:
                    await error_response(self._too_large())(scope, receive, send)
                    return
        received = 0
        more = True
        deadline = time.monotonic() + self.timeout_s if self.timeout_s > 0 and not guarded else 0

        async def bounded_receive() -> Message:
            nonlocal received, more
            if deadline and more:
                try:
                    with anyio.fail_after(max(deadline - time.monotonic(), 0.0)):
                        message = await receive()
                except TimeoutError:
                    # As an HTTPException, for the reason given below; "Connection: close"
                    # makes the server drop the connection instead of reading on.
                    raise StarletteHTTPException(
                        408,
                        f"the request body did not arrive within {self.timeout_s:g} s",
                        headers={"Connection": "close"},
                    ) from None
            else:
                message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                more = bool(message.get("more_body", False))
                if received > self.max_bytes:
                    # An HTTPException passes through FastAPI's body reading untouched and is
                    # rendered by the handler above as payload_too_large.
                    raise StarletteHTTPException(413, self._too_large().message)
            elif message["type"] == "http.disconnect":
                more = False
            return message

        await self.app(scope, bounded_receive, send)
