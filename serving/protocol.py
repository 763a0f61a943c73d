"""uvicorn's httptools protocol with the limits it lacks: header size, header and body time.

uvicorn's httptools protocol (``uvicorn/protocols/http/httptools_impl.py``) buffers a request's
headers without bound (httptools accumulates a header until it ends; only the h11 protocol has
``h11_max_incomplete_event_size``), and arms no timer on a connection until its first response
is sent (``timeout_keep_alive`` covers only the idle time between requests). A probe sent one
64 MB header to ``/healthz`` (accepted after 6 s, +97 MB of memory) and held 500 connections
open for 45 s by trickling partial headers. :func:`guarded_protocol` makes a subclass that:

- counts the bytes of each request's head (request line and headers) as they arrive, feeding
  the parser in slices while the head is incomplete, and answers 431 once it passes
  ``max_header_bytes``, so the parser never buffers much more than the limit;
- gives a request ``header_timeout_s`` to complete its head (from the connection opening, or
  from the request's first byte on a kept-alive connection) and ``body_timeout_s`` from then to
  complete its body, and answers 408 to a client that is slower;
- sends those answers in the API's error body and closes gracefully: it half-closes, then reads
  and drops what the client still sends for up to ``LINGER_S``, so the client reads the answer
  instead of a reset.

Cut-offs are logged as a rate (``serving.admission.RateLog``), one line per interval. Each
request's scope carries the limits under ``serving.errors.PROTOCOL_BOUNDS``, so the app knows
whether it runs under this protocol (``GET /v1/model``'s ``protocol_bounds``; a warning at
the first request without it). ``caretriage serve`` builds the class from its settings; under
another launcher, ``uvicorn --http serving.protocol:SettingsGuardedProtocol`` reads them from
the environment.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from serving.admission import RateLog
from serving.errors import PROTOCOL_BOUNDS, ApiError, HeadersTooLarge, RequestTimeout

log = logging.getLogger("caretriage.serving")

# While a request's head is incomplete the parser is fed this many bytes at a time, so the
# size limit is enforced to within a slice whatever the size of the chunks read.
HEAD_SLICE = 4096
# After refusing a request, how long to keep reading (and dropping) what the client still
# sends before closing: closing with unread data makes the kernel send a reset, which can
# destroy the answer before the client has read it.
LINGER_S = 2.0
CUTOFF_MESSAGE = "cut off %d slow or oversized requests in the last %.0f s"


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """One connection; the limits are class attributes, set by :func:`guarded_protocol`."""

    max_header_bytes: ClassVar[int] = 16 * 1024
    header_timeout_s: ClassVar[float] = 10.0
    body_timeout_s: ClassVar[float] = 30.0
    cutoffs: ClassVar[RateLog] = RateLog(log, CUTOFF_MESSAGE)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._awaiting_head = True  # between requests, or inside one's head
        self._head_bytes = 0  # bytes of the current head seen so far
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._refused = False  # answered and half-closed: what arrives is dropped

    # -- connection -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._head_timer, self._body_timer, self._linger_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = self._linger_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if not self._awaiting_head:
            super().data_received(data)
            return
        pos = 0
        while pos < len(data):
            if not self._awaiting_head:  # the head ended in the previous slice: the rest at once
                super().data_received(data[pos:])
                return
            piece = data[pos : pos + HEAD_SLICE]
            pos += len(piece)
            self._head_bytes += len(piece)
            super().data_received(piece)
            if self.transport.is_closing():  # the parser refused it (400)
                return
            if self._awaiting_head and self._head_bytes > self.max_header_bytes:
                self._refuse(
                    HeadersTooLarge(
                        f"request headers exceed {self.max_header_bytes} bytes",
                        fields=["headers"],
                    )
                )
                return

    # -- parser callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        extensions = self.scope.setdefault("extensions", {})  # type: ignore[typeddict-item]
        extensions[PROTOCOL_BOUNDS] = {
            "max_header_bytes": self.max_header_bytes,
            "header_timeout_s": self.header_timeout_s,
            "body_timeout_s": self.body_timeout_s,
        }
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def on_headers_complete(self) -> None:
        self._awaiting_head = False
        self._head_bytes = 0
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._body_timer = self.loop.call_later(self.body_timeout_s, self._body_timed_out)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._awaiting_head = True
        self._head_bytes = 0

    # -- limits -----------------------------------------------------------------------------

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self._refused or not self._awaiting_head:
            return
        if self._head_bytes == 0:  # nothing of a request arrived: an idle connection, closed
            self.transport.close()  # as uvicorn closes one idle between requests, unlogged
            return
        self._refuse(
            RequestTimeout(
                f"the request's headers did not arrive within {self.header_timeout_s:g} s"
            )
        )

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or self._refused:
            return
        self._refuse(
            RequestTimeout(f"the request body did not arrive within {self.body_timeout_s:g} s")
        )

    def _refuse(self, exc: ApiError) -> None:
        """Answer ``exc`` if no response is under way on this connection, stop the request in
        progress (the app's further sends go nowhere, its next receive is a disconnect), then
        half-close and drop input until the client closes or ``LINGER_S`` passes."""
        self.cutoffs.record(f"{exc.status_code} {exc.error}")
        self._refused = True
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None
        # In a head, ``cycle`` is the previous request's: answer unless its response is being
        # written. In a body it is this request's: answer unless it was answered already (an
        # early 413 or 503 while the client kept sending).
        cycle = self.cycle
        if cycle is None or not cycle.response_started:
            answer = True
        else:
            answer = self._awaiting_head and cycle.response_complete
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.keep_alive = False
            cycle.message_event.set()
        if answer:
            self.transport.write(self._error_bytes(exc))
        self.flow.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self._linger_timer = self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()

    def _error_bytes(self, exc: ApiError) -> bytes:
        body = exc.body().model_dump_json().encode()
        head = [STATUS_LINE[exc.status_code]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
        ]
        return b"".join(head) + body


def guarded_protocol(
    *, max_header_bytes: int, header_timeout_s: float, body_timeout_s: float
) -> type[GuardedHttpToolsProtocol]:
    """A protocol class with these limits, for ``uvicorn.run(..., http=...)`` (uvicorn builds
    one instance per connection from the class), with its own cut-off log."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {
            "max_header_bytes": max_header_bytes,
            "header_timeout_s": header_timeout_s,
            "body_timeout_s": body_timeout_s,
            "cutoffs": RateLog(log, CUTOFF_MESSAGE),
        },
    )


class SettingsGuardedProtocol(GuardedHttpToolsProtocol):
    """For a server started without ``caretriage serve``:
    ``uvicorn --factory serving.app:app_factory --http serving.protocol:SettingsGuardedProtocol``.
    The limits are ``CARETRIAGE_MAX_HEADER_BYTES``, ``HEADER_TIMEOUT_SECONDS`` and
    ``BODY_TIMEOUT_SECONDS``, read when the first connection is made (uvicorn imports the class
    by name, so nothing can pass them in; the app factory has already refused bad settings)."""

    cutoffs: ClassVar[RateLog] = RateLog(log, CUTOFF_MESSAGE)
    _configured: ClassVar[bool] = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        cls = type(self)
        if not cls._configured:
            from serving.settings import Settings

            settings = Settings()
            cls.max_header_bytes = settings.max_header_bytes
            cls.header_timeout_s = settings.header_timeout_seconds
            cls.body_timeout_s = settings.body_timeout_seconds
            cls._configured = True
        super().__init__(*args, **kwargs)
