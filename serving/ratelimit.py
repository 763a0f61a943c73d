"""Per-key rate limits, and a brake on guessing keys, on the ``limits`` library.

Each API key has two budgets per window: requests, and posts scored (a ``/v1/score`` batch of
N posts costs N). Past either, the API answers 429 with ``Retry-After``; every response of a
limited route carries the IETF draft ``RateLimit-Limit``/``-Remaining``/``-Reset`` headers so a
client can pace itself before it is refused. A key is known by its id (the first 12 hex digits
of its SHA-256), never by the key itself, in the storage, the metrics and the logs. A client
address that sends more wrong keys than ``AUTH_FAILURE_LIMIT`` within its window is refused
(429) whatever key it sends until the window frees up: answering a right guess with 200 would
keep the guessing going at full speed.

Counts live in ``memory://`` (this process) or Redis (``redis://``), where every process that
points at the same server shares them. Redis calls go through the thread pool, so a slow Redis
never stalls the event loop. When the storage fails the requests pass (logged at most once a
minute, then the storage is left alone for a few seconds): an outage of the limiter must not be
an outage of the API.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.errors import TooManyRequests

if TYPE_CHECKING:
    from limits import RateLimitItem
    from limits.strategies import MovingWindowRateLimiter

    from serving.settings import Settings

log = logging.getLogger("caretriage.serving")

UNLIMITED = "unlimited"
REQUESTS, POSTS = "requests", "posts"
STORAGE_SCHEMES = ("memory", "redis", "rediss", "redis+unix")
# Redis must answer within this, or the request passes unlimited (the event loop never waits:
# Redis calls run in the thread pool, except a wrong key on an unparsable body, see deps).
REDIS_TIMEOUT_S = 0.25
# After a storage failure, how long requests pass without asking it again.
STORAGE_BACKOFF_S = 5.0
STATE_KEY = "rate_limit"  # request.state attribute: the Quota whose headers the response gets

T = TypeVar("T")


def key_id(key: str | bytes) -> str:
    """The id a key is known by in settings, metrics and logs: the first 12 hex digits of its
    SHA-256 (``printf %s "$KEY" | sha256sum | cut -c1-12``). Not reversible into the key."""
    raw = key.encode("utf-8") if isinstance(key, str) else key
    return hashlib.sha256(raw).hexdigest()[:12]


def parse_limit(text: str) -> RateLimitItem | None:
    """``"600/minute"``, ``"10 per second"``, ``"5000/2 hours"`` (the ``limits`` notation), or
    ``"unlimited"`` (None). Raises ValueError naming what it could not read."""
    from limits import parse

    if text.strip().lower() == UNLIMITED:
        return None
    try:
        return parse(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a rate limit: write e.g. '600/minute', '10 per second' or "
            f"'{UNLIMITED}'"
        ) from None


def storage_scheme(uri: str) -> str:
    return uri.split("://", 1)[0].lower() if "://" in uri else ""


@dataclass(frozen=True)
class Quota:
    """What is left of one budget after a request: the RateLimit-* headers."""

    limit: int
    remaining: int
    reset_s: int  # seconds until the budget's oldest use expires (more becomes available)

    @property
    def share_left(self) -> float:
        return self.remaining / self.limit if self.limit else 1.0

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_s),
        }


def client_address(conn: HTTPConnection) -> str:
    """The peer's address, the unit wrong keys are counted by. The server does not trust
    forwarding headers (``proxy_headers`` off): behind a proxy, every client is the proxy."""
    return conn.client.host if conn.client else "unknown"


class RateLimiter:
    """One app's limits. ``enabled`` False (CARETRIAGE_RATE_LIMIT_ENABLED=false) makes every
    check a no-op. The storage is made on first use, so building an app connects to nothing.

    Budgets are moving windows (exact: no double burst across a window's edge). ``check_client``,
    ``failed`` and ``charge`` are synchronous (they may wait on Redis): call them through
    ``call``, which keeps memory storage on the event loop (microseconds) and sends Redis calls
    to the thread pool."""

    def __init__(
        self,
        settings: Settings,
        *,
        on_limited: Callable[[str, str], None] | None = None,
    ) -> None:
        self.enabled = settings.rate_limit_enabled
        self.storage_uri = settings.rate_limit_storage
        self.remote = storage_scheme(self.storage_uri) != "memory"
        self.key_ids = [key_id(k.get_secret_value()) for k in settings.api_keys]
        self._budgets: dict[str, dict[str, RateLimitItem | None]] = {REQUESTS: {}, POSTS: {}}
        for kind, default, overrides in (
            (REQUESTS, settings.rate_limit, settings.rate_limit_overrides),
            (POSTS, settings.post_rate_limit, settings.post_rate_limit_overrides),
        ):
            base = parse_limit(default)
            for kid in self.key_ids:
                given = overrides.get(kid)
                self._budgets[kind][kid] = base if given is None else parse_limit(given)
        self.failures = parse_limit(settings.auth_failure_limit)
        self.on_limited = on_limited
        self._limiter: MovingWindowRateLimiter | None = None
        self._build_lock = threading.Lock()
        self._down_until = 0.0
        self._logged_at = -math.inf
        # Clients this process saw send a wrong key, until when: only they are looked up, which
        # spares every other request a storage round trip. With several processes, one that
        # has not yet seen a client's wrong key lets at most one more through before it has.
        self._suspects: dict[str, float] = {}

    # -- storage ---------------------------------------------------------------------------

    @property
    def limiter(self) -> MovingWindowRateLimiter:
        if self._limiter is None:
            with self._build_lock:
                if self._limiter is None:
                    self._limiter = self._build()
        return self._limiter

    def _build(self) -> MovingWindowRateLimiter:
        from limits.storage import storage_from_string
        from limits.strategies import MovingWindowRateLimiter

        options: dict[str, Any] = {"wrap_exceptions": True}
        if self.remote:
            options |= {
                "socket_timeout": REDIS_TIMEOUT_S,
                "socket_connect_timeout": REDIS_TIMEOUT_S,
                "key_prefix": "caretriage",
            }
        return MovingWindowRateLimiter(storage_from_string(self.storage_uri, **options))

    def _guarded(self, fn: Callable[[], T], default: T) -> T:
        """``fn()`` against the storage; ``default`` (let the request pass) while the storage
        is failing."""
        from limits.errors import StorageError

        now = time.monotonic()
        if now < self._down_until:
            return default
        try:
            return fn()
        except (StorageError, ConnectionError, TimeoutError, OSError) as e:
            self._down_until = now + STORAGE_BACKOFF_S
            if now - self._logged_at > 60:
                self._logged_at = now
                # The storage URL may hold a password: its scheme is enough to find it.
                log.warning(
                    "rate-limit storage (%s://) failed (%s); requests pass unlimited, retrying "
                    "in %.0f s",
                    storage_scheme(self.storage_uri),
                    type(getattr(e, "storage_error", e)).__name__,
                    STORAGE_BACKOFF_S,
                )
            return default

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a synchronous check off the event loop when it may wait on a network."""
        if self.enabled and self.remote:
            return await run_in_threadpool(fn, *args)
        return fn(*args)

    # -- the checks --------------------------------------------------------------------------

    def check_client(self, client: str) -> None:
        """429 if ``client`` sent too many wrong keys within the window."""
        item = self.failures
        if not self.enabled or item is None:
            return
        if self._suspects.get(client, 0.0) < time.monotonic():
            return
        lim = self.limiter
        ok = self._guarded(lambda: lim.test(item, "auth-failures", client), True)
        if not ok:
            stats = self._guarded(lambda: lim.get_window_stats(item, "auth-failures", client), None)
            wait = stats.reset_time - time.time() if stats else item.get_expiry()
            if self.on_limited is not None:
                self.on_limited("auth_failures", "-")
            raise TooManyRequests(
                "too many invalid API keys from this address "
                f"(limit {_spell(item, 'wrong keys')}); "
                f"retry in {math.ceil(max(wait, 1))} s",
                retry_after=wait,
            )

    def failed(self, client: str) -> None:
        """Count one wrong key from ``client``."""
        item = self.failures
        if self.enabled and item is not None:
            now = time.monotonic()
            if len(self._suspects) > 100_000:  # bounded: forget the expired
                self._suspects = {c: t for c, t in self._suspects.items() if t > now}
            self._suspects[client] = now + item.get_expiry()
            lim = self.limiter
            self._guarded(lambda: lim.hit(item, "auth-failures", client), True)

    def charge(self, conn: HTTPConnection, kid: str, kind: str, cost: int = 1) -> None:
        """Take ``cost`` from key ``kid``'s ``kind`` budget; 429 past it. The budget left is
        kept on the request for the RateLimit-* headers (the scarcer of the two)."""
        if not self.enabled:
            return
        item = self._budgets[kind].get(kid)
        if item is None:
            return
        lim = self.limiter
        ok = self._guarded(lambda: lim.hit(item, kind, kid, cost=cost), True)
        stats = self._guarded(lambda: lim.get_window_stats(item, kind, kid), None)
        if stats is None:
            return
        now = time.time()
        quota = Quota(
            item.amount, max(0, stats.remaining), max(0, math.ceil(stats.reset_time - now))
        )
        held: Quota | None = getattr(conn.state, STATE_KEY, None)
        if not ok or held is None or quota.share_left < held.share_left:
            setattr(conn.state, STATE_KEY, quota)
        if ok:
            return
        if self.on_limited is not None:
            self.on_limited(kind, kid)
        wait = max(stats.reset_time - now, 0.0)
        if cost > item.amount:
            msg = (
                f"this request's {cost} {kind} exceed this API key's whole limit of "
                f"{_spell(item, kind)}; send fewer per request"
            )
        else:
            msg = (
                f"rate limit of {_spell(item, kind)} for this API key reached; "
                f"retry in {math.ceil(max(wait, 1))} s"
            )
        raise TooManyRequests(msg, retry_after=wait)

    async def charge_posts(self, conn: HTTPConnection, posts: int) -> None:
        """Charge the key that authenticated ``conn`` (``require_api_key`` recorded it) for
        ``posts`` posts; 429 past its budget."""
        kid = getattr(conn.state, "api_key_id", None)
        if self.enabled and kid is not None:
            await self.call(self.charge, conn, kid, POSTS, posts)


def _spell(item: RateLimitItem, unit: str) -> str:
    """``600 requests per 1 minute``."""
    return f"{item.amount} {unit} per {item.multiples} {item.GRANULARITY.name}"


class RateLimitHeadersMiddleware:
    """Adds the RateLimit-* headers of the budget a request drew on (set by ``charge``) to its
    response, error or not: FastAPI drops headers set by a dependency when the route returns a
    ``Response`` itself, as ``/v1/score`` does."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_quota(message: Message) -> None:
            if message["type"] == "http.response.start":
                quota: Quota | None = scope.get("state", {}).get(STATE_KEY)
                if quota is not None:
                    extra = [(k.lower().encode(), v.encode()) for k, v in quota.headers().items()]
                    message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_quota)
