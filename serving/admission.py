"""Admission control for ``POST /v1/score``: refuse early what the model cannot start in time.

A queue bounded only by its length (2,048 posts) admitted exactly the load it was sized for, 64
clients of 32 posts, and made each of them wait about 10 s; under real overload every refusal
came after its body had been read and parsed, and was logged, so throughput fell as load rose.
Admission is therefore decided from the wait a request would face: the posts ahead of it times
the measured service time per post, against a deadline (``CARETRIAGE_QUEUE_DEADLINE_MS``). The
check runs twice: in :class:`AdmissionMiddleware`, before the body is read (FastAPI reads and
parses the body before it runs any dependency, so it cannot be a dependency), and in
``Batcher.submit``, for requests that were admitted together while the queue filled. Refusals
are logged as a rate (:class:`RateLog`), one line per interval.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.datastructures import State
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.errors import error_response

# Weight of the newest run in the service-time average; runs are weighted by their posts, so a
# burst of large runs (the regime in which queues are long) sets the estimate within a few.
EWMA_ALPHA = 0.2
RETRY_AFTER_MAX_S = 30
SHED_LOG_INTERVAL_S = 10.0


@dataclass(frozen=True)
class Verdict:
    """Whether to admit a request; ``wait_s`` is the estimated queue wait before its posts
    start, ``retry_after_s`` what a refusal tells the client."""

    admit: bool
    wait_s: float
    retry_after_s: int = 0
    reason: str = ""


def retry_after(wait_s: float, deadline_s: float) -> int:
    """Seconds until the queue, drained without new arrivals, is back within the deadline
    (at least 1, at most ``RETRY_AFTER_MAX_S``)."""
    return int(min(RETRY_AFTER_MAX_S, max(1, math.ceil(wait_s - max(deadline_s, 0.0)))))


def decide(
    *, pending: int, posts: int, per_post_s: float | None, deadline_s: float, max_queue: int
) -> Verdict:
    """Admit ``posts`` new posts behind ``pending`` ones? Refused when the queue would exceed
    ``max_queue`` posts, or when the estimated wait (``pending`` x ``per_post_s``) exceeds
    ``deadline_s`` (0 or less: no deadline). An empty queue admits anything: a request's own
    service time is not queue wait, and a large request must be able to run at all. Before
    any run was measured (``per_post_s`` None) only ``max_queue`` applies."""
    wait = pending * (per_post_s or 0.0)
    if pending + posts > max_queue:
        return Verdict(
            False,
            wait,
            retry_after(wait, deadline_s),
            f"{pending} posts are waiting (limit {max_queue})",
        )
    if deadline_s > 0 and pending > 0 and wait > deadline_s:
        return Verdict(
            False,
            wait,
            retry_after(wait, deadline_s),
            f"the model's queue would make this request wait about {wait:.1f} s "
            f"(deadline {deadline_s:g} s)",
        )
    return Verdict(True, wait)


class ServiceTime:
    """Seconds per post, averaged over model runs with exponentially decaying weights, each run
    weighted by its posts. Written by the batcher's run thread, read on the event loop: two
    float assignments, and a reader seeing one update late is harmless."""

    def __init__(self, alpha: float = EWMA_ALPHA) -> None:
        self.alpha = alpha
        self._seconds = 0.0
        self._posts = 0.0

    def observe(self, seconds: float, posts: int) -> None:
        if posts <= 0 or seconds < 0:
            return
        keep = 1.0 - self.alpha
        self._seconds = self._seconds * keep + seconds
        self._posts = self._posts * keep + posts

    @property
    def per_post_s(self) -> float | None:
        return self._seconds / self._posts if self._posts > 0 else None


class RateLog:
    """Counts events and logs them as a rate: the first after a quiet interval at once, then
    at most one line per interval (``message % (count, seconds)`` and the latest detail).
    Under overload a warning per refused request had been 9,600 lines in 25 s. Use from the
    event loop; a count left over when events stop is flushed by a timer on that loop."""

    def __init__(
        self,
        logger: logging.Logger,
        message: str,
        *,
        interval_s: float = SHED_LOG_INTERVAL_S,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.message = message
        self.interval_s = interval_s
        self.level = level
        self.clock = clock
        self.total = 0
        self._count = 0
        self._since = 0.0
        self._emitted_at = -math.inf
        self._detail = ""
        self._timer: asyncio.TimerHandle | None = None

    def record(self, detail: str = "") -> None:
        now = self.clock()
        if self._count == 0:
            self._since = now
        self._count += 1
        self.total += 1
        self._detail = detail
        if now - self._emitted_at >= self.interval_s:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop: the next record after the interval flushes
                return
            self._timer = loop.call_later(
                self._emitted_at + self.interval_s - now, self._flush_from_timer
            )

    def _flush_from_timer(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Log what was counted since the last line, if anything."""
        if self._count == 0:
            return
        now = self.clock()
        text = self.message % (self._count, max(now - self._since, 0.0))
        self.logger.log(self.level, "%s%s", text, f" ({self._detail})" if self._detail else "")
        self._count = 0
        self._emitted_at = now

    def close(self) -> None:
        """Flush and drop the timer (at shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()


class AdmissionMiddleware:
    """Answers ``POST /v1/score`` with 503 and ``Retry-After`` from the headers alone when the
    served model's queue is already past its deadline: the body is never read, so a refusal
    costs no parsing, however large the request. It runs before authentication on purpose
    (the cheapest refusal; a 503 says nothing about the key). Everything else passes."""

    def __init__(self, app: ASGIApp, state: State, path: str = "/v1/score") -> None:
        self.app = app
        self.state = state
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == self.path:
            served = getattr(self.state, "served", None)
            if served is not None:
                refused = served.batcher.refusal(posts=1)
                if refused is not None:
                    await error_response(refused)(scope, receive, send)
                    return
        await self.app(scope, receive, send)
