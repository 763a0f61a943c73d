"""Drive Debian's Chromium (/usr/bin/chromium) through Playwright (not a test module).

Nothing downloads a browser: ``make browser`` (a prerequisite of ``make test``) installs the
distribution's package, and Playwright only connects to it. Without it, browser tests skip on a
developer's machine and fail under CI (``CI=true``), where a skipped browser test would hide
that the pages were never exercised.

    with browser_page(base_url=server.url) as page:
        page.goto("/label")
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright

CHROMIUM = Path("/usr/bin/chromium")
MISSING = f"{CHROMIUM} is missing: run `make browser` (installs Debian's chromium package)"
CHROMIUM_ARGS = [
    # Root in a container has no user namespaces for the sandbox; the pages are our own.
    "--no-sandbox",
    "--disable-gpu",
    # Without these Chromium reaches out on its own (QUIC probes, component and sync updates,
    # background services): on a closed network that is slow timeouts and log noise.
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Debian's wrapper only adds this when /dev/shm looks small, and its check breaks when
    # /dev/shm is mounted twice (as here); a 64 MB container /dev/shm crashes tabs without it.
    "--disable-dev-shm-usage",
]
# Short enough that a missing element fails the test in seconds, not Playwright's 30 s.
DEFAULT_TIMEOUT_MS = 10_000


def require_chromium() -> None:
    """Skip (or, under CI, fail) the calling test when the system Chromium is absent."""
    if CHROMIUM.exists():
        return
    if os.environ.get("CI", "").lower() in {"true", "1", "yes"}:
        pytest.fail(MISSING, pytrace=False)
    pytest.skip(MISSING)


def launch_browser(playwright: Playwright, **kw) -> Browser:
    """Headless system Chromium with the flags above; ``kw`` goes to ``chromium.launch``."""
    require_chromium()
    args = [*CHROMIUM_ARGS, *kw.pop("args", [])]
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args, **kw)


@contextmanager
def browser_page(
    base_url: str | None = None,
    *,
    viewport: tuple[int, int] = (1280, 800),
    **context_kw,
) -> Iterator[Page]:
    """A fresh browser, context and page, closed afterwards. ``base_url`` lets ``page.goto``
    take paths. Locale and time zone are fixed so pages render the same on every machine;
    ``context_kw`` goes to ``browser.new_context`` (e.g. ``storage_state`` for a session)."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_browser(p)
        try:
            context_kw.setdefault("locale", "en-US")
            context_kw.setdefault("timezone_id", "UTC")
            context = browser.new_context(
                base_url=base_url,
                viewport={"width": viewport[0], "height": viewport[1]},
                **context_kw,
            )
            context.set_default_timeout(DEFAULT_TIMEOUT_MS)
            yield context.new_page()
        finally:
            browser.close()


def collect_errors(page: Page) -> list[str]:
    """A list that fills with the page's uncaught exceptions and console errors (failed loads
    included), for tests to assert empty: a broken script rarely fails a test by itself."""
    errors: list[str] = []

    def on_console(m: ConsoleMessage) -> None:
        url = m.location.get("url", "")
        # Chromium asks every origin for /favicon.ico on its own; the API has none.
        if m.type == "error" and not url.endswith("/favicon.ico"):
            errors.append(f"console: {m.text} ({url})")

    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.on("console", on_console)
    return errors
