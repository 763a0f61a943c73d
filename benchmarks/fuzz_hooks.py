"""Schemathesis hooks for ``benchmarks/fuzz.py`` (loaded through ``SCHEMATHESIS_HOOKS``).

One auth provider gives each operation the credential that reaches its handler: the admin key
for ``/v1/admin/*`` and ``/metrics``, a signed-in admin's session cookie and CSRF header for
the labeling workspace and ``/v1/users``, the API key for the rest. Without them most cases
would stop at 401/403 and the checks would test the auth layer alone. The credentials come
from the environment ``fuzz.py`` sets; nothing here talks to the server.
"""

from __future__ import annotations

import os
from typing import Any

import schemathesis

ADMIN_PATHS = ("/v1/admin/", "/metrics")
SESSION_PATHS = ("/v1/labeling/", "/v1/users")


def credential(path: str) -> str:
    """``admin``, ``session`` or ``key``: what the operation at ``path`` is called with."""
    if path.startswith(ADMIN_PATHS):
        return "admin"
    if path.startswith(SESSION_PATHS):
        return "session"
    return "key"


@schemathesis.auth(refresh_interval=None)
class CaretriageAuth:
    """Static credentials, chosen by the operation's path."""

    def get(self, case: Any, ctx: Any) -> dict[str, str]:
        return dict(os.environ)

    def set(self, case: Any, data: dict[str, str], ctx: Any) -> None:
        kind = credential(ctx.operation.path)
        case.headers = dict(case.headers or {})
        if kind == "session":
            case.cookies = {
                **(case.cookies or {}),
                "caretriage_session": data["CARETRIAGE_FUZZ_SESSION"],
            }
            case.headers["X-CSRF-Token"] = data["CARETRIAGE_FUZZ_CSRF"]
            return
        key = data["CARETRIAGE_FUZZ_ADMIN_KEY" if kind == "admin" else "CARETRIAGE_FUZZ_API_KEY"]
        case.headers["Authorization"] = f"Bearer {key}"
