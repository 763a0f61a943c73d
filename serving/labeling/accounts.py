"""Evaluator, lead and admin accounts: password hashes, signed session cookies, CSRF tokens
and the sign-in slow-down. Separate from the helpdesk API keys on purpose: a key scores posts,
a person labels them, and every label names its person.

- Passwords: argon2id (``argon2-cffi``'s defaults), rehashed when the parameters move.
- Sessions: a cookie signed with itsdangerous (HttpOnly, SameSite=Lax, Secure behind TLS)
  holding the user id, a random session nonce and a fingerprint of the password hash, so
  changing a password signs every session of that user out.
- CSRF: every state-changing request under a session carries a token, the HMAC of the
  session nonce (a hidden form field, or the ``X-CSRF-Token`` header from the page's script);
  the sign-in form itself uses a double-submit cookie.
- Slow-down: after ``FREE_FAILURES`` failed sign-ins a name must wait, doubling from 1 s up to
  a minute, before the next try is even checked (429 with Retry-After); unknown names are
  hashed against a dummy so that timing does not tell which names exist.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, URLSafeTimedSerializer

SESSION_COOKIE = "caretriage_session"
LOGIN_COOKIE = "caretriage_login"
CSRF_HEADER = "X-CSRF-Token"
FREE_FAILURES = 3
MAX_DELAY = 60.0
MIN_PASSWORD = 10

_hasher = PasswordHasher()
_DUMMY = _hasher.hash("not-a-password-" + secrets.token_hex(8))


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"password: at least {MIN_PASSWORD} characters")
    return _hasher.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    """Constant work whether or not the user exists (``stored`` None hashes a dummy)."""
    try:
        return _hasher.verify(stored or _DUMMY, password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    return _hasher.check_needs_rehash(stored)


def login_delay(failures: int) -> float:
    """Seconds a name must wait after ``failures`` consecutive failed sign-ins."""
    if failures < FREE_FAILURES:
        return 0.0
    return min(MAX_DELAY, 2.0 ** (failures - FREE_FAILURES))


def retry_after(failures: int, last_failed_at: datetime | None, now: datetime) -> float:
    """Seconds until the next sign-in attempt for this name is checked (0: now)."""
    if last_failed_at is None:
        return 0.0
    wait = login_delay(failures) - (now - last_failed_at).total_seconds()
    return max(0.0, wait)


@dataclass(frozen=True)
class Session:
    user_id: int
    nonce: str
    fingerprint: str


def fingerprint(password_hash: str) -> str:
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


class Signer:
    """Signs and reads session cookies and CSRF tokens with the service's session secret."""

    def __init__(self, secret: str, max_age: int) -> None:
        self._key = secret.encode()
        self.max_age = max_age
        self._sessions = URLSafeTimedSerializer(secret, salt="caretriage-session")

    def session_cookie(self, user_id: int, password_hash: str) -> tuple[str, Session]:
        session = Session(user_id, secrets.token_urlsafe(16), fingerprint(password_hash))
        token = self._sessions.dumps([session.user_id, session.nonce, session.fingerprint])
        return token, session

    def read_session(self, token: str | None) -> Session | None:
        if not token:
            return None
        try:
            uid, nonce, fp = self._sessions.loads(token, max_age=self.max_age)
        except (BadSignature, ValueError, TypeError):
            return None
        if not isinstance(uid, int) or not isinstance(nonce, str) or not isinstance(fp, str):
            return None
        return Session(uid, nonce, fp)

    def csrf_token(self, nonce: str) -> str:
        return hmac.new(self._key, b"csrf:" + nonce.encode(), hashlib.sha256).hexdigest()

    def check_csrf(self, nonce: str, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf_token(nonce), token or "")


class ClientThrottle:
    """Failed sign-ins per client address, for names that do not exist (a name that exists
    keeps its count in the store, shared by every process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fails: dict[str, tuple[int, float]] = {}

    def wait(self, client: str) -> float:
        with self._lock:
            n, last = self._fails.get(client, (0, 0.0))
        return max(0.0, login_delay(n) - (time.monotonic() - last))

    def failed(self, client: str) -> None:
        with self._lock:
            n, _ = self._fails.get(client, (0, 0.0))
            if len(self._fails) > 10_000:  # bounded: forget the oldest half
                for k in sorted(self._fails, key=lambda k: self._fails[k][1])[:5_000]:
                    del self._fails[k]
            self._fails[client] = (n + 1, time.monotonic())

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._fails.pop(client, None)


def now() -> datetime:
    return datetime.now(UTC)
