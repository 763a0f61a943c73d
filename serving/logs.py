"""Logging: text or JSON lines, each with the request id, and never the content of a post or a
stored row.

Content reaches logs through exceptions more than through messages: SQLAlchemy's error text
carries the statement's parameters (the whole agent row of a failed write), PostgreSQL's
``DETAIL`` repeats the row or the key, and pydantic's errors quote the input. So tracebacks are
rendered by ``safe_traceback``: every frame (file, line, function), and the exception's own
words except for these kinds, which are reduced to what names the fault (type, SQLSTATE,
table and constraint; the locations and kinds of validation errors). ``one_error_record``
answers an unhandled error with one such record and a bare 500; Starlette would re-raise it for
the server to log a second time, with the raw text.

``configure`` (called by ``caretriage serve`` and ``serving.app.app_factory``) installs one
handler for the service's loggers and uvicorn's; ``CARETRIAGE_LOG_FORMAT=json`` makes it write
one JSON object per line.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import re
import sys
import time
import traceback
from typing import Any

from sqlalchemy.exc import DBAPIError, StatementError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.errors import InternalError, error_response
from serving.metrics import Metrics, route_template

log = logging.getLogger("caretriage.serving")
access_log = logging.getLogger("caretriage.access")

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
# A client's X-Request-ID is taken as is when it looks like an id: anything else (spaces,
# quotes, control characters, 100 characters of prose) could forge or garble log lines.
REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"

# Attributes every LogRecord has; anything else on a record was passed as ``extra``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "request_id",
    "color_message",  # uvicorn's copy of the message with terminal colours
}


def sane_request_id(given: str | None) -> str | None:
    """``given`` if it is usable as a request id, else None (the caller makes one)."""
    return given if given and REQUEST_ID.fullmatch(given) else None


# -- what an exception may say ---------------------------------------------------------------


def _db_fault(exc: BaseException) -> str:
    """A database error named by what identifies the fault, never by values."""
    parts = [type(exc).__name__]
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate:
        parts.append(f"SQLSTATE {sqlstate}")
    name = getattr(exc, "sqlite_errorname", None)
    if name:
        parts.append(name)
    diag = getattr(exc, "diag", None)
    for attr in ("table_name", "column_name", "constraint_name"):
        value = getattr(diag, attr, None) if diag is not None else None
        if value:
            parts.append(f"{attr.removesuffix('_name')} {value}")
    return ", ".join(parts) + " (details withheld: they may quote stored data)"


def safe_message(exc: BaseException) -> str | None:
    """What to log instead of ``str(exc)`` for exceptions whose text quotes data; None when
    its own text can be logged."""
    if isinstance(exc, DBAPIError):
        return "database error: " + _db_fault(exc.orig if exc.orig is not None else exc)
    if isinstance(exc, StatementError):
        return "statement failed (details withheld: they may quote stored data)"
    module = type(exc).__module__
    if module.startswith(("psycopg", "sqlite3")):
        return "database error: " + _db_fault(exc)
    errors = getattr(exc, "errors", None)
    if module.startswith("pydantic") and callable(errors):
        try:
            found = errors(include_url=False, include_input=False, include_context=False)
        except TypeError:
            found = []
        where = "; ".join(
            ".".join(str(p) for p in e.get("loc", ())) + f" ({e.get('type', '?')})"
            for e in found[:10]
        )
        return f"{len(found)} validation error(s): {where} (input withheld)"
    if isinstance(exc, UnicodeError):
        return f"{type(exc).__name__} (the text is withheld)"
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes, oldest first (the order Python prints them)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        if current.__cause__ is not None:
            current = current.__cause__
        elif current.__context__ is not None and not current.__suppress_context__:
            current = current.__context__
        else:
            current = None
    return seen[::-1]


def safe_traceback(exc: BaseException) -> str:
    """The traceback Python would print, with ``safe_message`` in place of what the
    exceptions that quote data say (their causes included)."""
    out: list[str] = []
    chain = _chain(exc)
    for i, e in enumerate(chain):
        if i:
            link = "direct cause" if chain[i].__cause__ is chain[i - 1] else "during handling"
            out.append(
                "\nThe above exception was the direct cause of the following exception:\n\n"
                if link == "direct cause"
                else "\nDuring handling of the above exception, another exception occurred:\n\n"
            )
        if e.__traceback__ is not None:
            out.append("Traceback (most recent call last):\n")
            out.extend(traceback.format_list(traceback.extract_tb(e.__traceback__)))
        said = safe_message(e)
        name = f"{type(e).__module__}.{type(e).__qualname__}".removeprefix("builtins.")
        if said is None:
            out.extend(traceback.format_exception_only(type(e), e))
        else:
            out.append(f"{name}: {said}\n")
    return "".join(out).rstrip("\n")


# -- formatting ------------------------------------------------------------------------------


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every record (``%(request_id)s`` in a format)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class TextFormatter(logging.Formatter):
    """``TEXT_FORMAT`` lines; tracebacks through ``safe_traceback``."""

    def __init__(self, fmt: str = TEXT_FORMAT) -> None:
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "request_id"):  # a handler without RequestIdFilter
            record.request_id = request_id.get()
        return super().format(record)

    def formatException(self, ei: Any) -> str:
        return safe_traceback(ei[1]) if ei and ei[1] is not None else ""


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, request_id,
    the record's ``extra`` fields, and ``exception`` rendered by ``safe_traceback``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or request_id.get(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info and record.exc_info[1] is not None:
            out["exception"] = safe_traceback(record.exc_info[1])
        elif record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, default=str, ensure_ascii=False)


def formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else TextFormatter()


# Loggers the handler serves: the service's, and uvicorn's (serve runs it with log_config=None,
# so it adds none of its own).
LOGGERS = ("caretriage", "uvicorn", "alembic")


def configure(level: str, fmt: str, stream: Any = None) -> logging.Handler:
    """One handler on stderr (or ``stream``) for the service's and uvicorn's loggers, in
    ``fmt`` ("json" or "text"). Called once by ``caretriage serve``; never at import."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(fmt))
    handler.addFilter(RequestIdFilter())
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
    logging.getLogger("caretriage").setLevel(level.upper())
    logging.getLogger("uvicorn").setLevel(level.upper())
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # AccessLogMiddleware replaces uvicorn's access log, which names the raw path and query
    # (customer ids, handles). Without handlers uvicorn skips it (``--no-access-log``), also
    # when uvicorn, not ``caretriage serve``, configured logging first.
    access = logging.getLogger("uvicorn.access")
    access.handlers[:] = []
    access.propagate = False
    return handler


def error_record(logger: logging.Logger, exc: BaseException, msg: str, *args: Any) -> None:
    """Log ``msg`` at ERROR with ``safe_traceback(exc)`` as the record's traceback text. The
    record holds no exception object, so no handler (a test's, a library's) can render the
    raw one."""
    if not logger.isEnabledFor(logging.ERROR):
        return
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, msg, args, None)
    record.exc_text = safe_traceback(exc)
    logger.handle(record)


# -- per request -----------------------------------------------------------------------------


def _rid_of(scope: Scope) -> str | None:
    return scope.get("state", {}).get("request_id")


class AccessLogMiddleware:
    """One INFO record per request on ``caretriage.access``: method, route template, status,
    milliseconds, request id. Replaces uvicorn's access log, which has no request id and
    names the raw path (agent ids included). No query, no body, no client address.

    With ``metrics`` it also counts and times the request by route and status (a request
    that raises past the app counts as a 500): one wrapper, one clock and one route lookup
    per request serve both the log and the metrics."""

    def __init__(self, app: ASGIApp, metrics: Metrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        logging_on = access_log.isEnabledFor(logging.INFO)
        if scope["type"] != "http" or not (logging_on or self.metrics):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            seconds = time.perf_counter() - started
            route = route_template(scope)
            if self.metrics is not None:
                self.metrics.observe_http(scope["method"], route, status, seconds)
            if logging_on:
                self._log(scope, route, status, round(seconds * 1000, 2))

    @staticmethod
    def _log(scope: Scope, route: str, status: int, ms: float) -> None:
        access_log.info(
            "%s %s %d %.1f ms",
            scope["method"],
            route,
            status,
            ms,
            extra={"method": scope["method"], "route": route, "status": status, "ms": ms},
        )


class UnhandledErrorMiddleware:
    """A true bug: one ERROR record (``safe_traceback``) and a bare 500 quoting the request id.
    Sits inside Starlette's ServerErrorMiddleware, which would otherwise answer it and then
    re-raise it for the server to log again, in full."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            rid = _rid_of(scope)
            error_record(
                log,
                exc,
                "unhandled error on %s %s (request %s)",
                scope["method"],
                route_template(scope),
                rid,
            )
            if started:  # too late for a 500: the server ends the connection
                return
            msg = "internal error" + (f"; quote request id {rid}" if rid else "")
            response = error_response(InternalError(msg))
            if rid:
                response.headers["X-Request-ID"] = rid
            await response(scope, receive, send)
