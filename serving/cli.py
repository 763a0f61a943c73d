"""``serve(settings)``: run the API under uvicorn (called by the top-level ``caretriage`` CLI)."""

from __future__ import annotations

import logging
import os
import sys
import urllib.error
import urllib.request

from serving.settings import Settings, SettingsError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def check(settings: Settings) -> None:
    """Exit before binding the port, with one clear line, if the bundle or policy is unusable
    (the lifespan would fail too, but buried in a traceback)."""
    from pydantic import ValidationError

    from features.bundle import BundleError, read_bundle
    from serving.priority import PolicyError, load_policy
    from serving.served import SwapRefused, check_policy
    from serving.store import Store, describe_url

    try:
        check_policy(read_bundle(settings.model_dir), load_policy(settings.policy_file))
    except (BundleError, PolicyError, ValidationError, SwapRefused) as e:
        raise SystemExit(f"caretriage: cannot serve: {e}") from e
    store = Store(settings.database_url)
    try:
        store.upgrade()
    except Exception as e:  # the store's own words, one line: not a traceback
        first = str(e).splitlines()[0] if str(e) else ""
        raise SystemExit(
            f"caretriage: cannot serve: the store at {describe_url(store.url)} "
            f"({type(e).__name__}: {first}); check CARETRIAGE_DATABASE_URL and that the "
            "database server is up"
        ) from e
    finally:
        store.dispose()


def ready_url(environ: dict[str, str] | None = None) -> str:
    """The ``/readyz`` of the server this environment configures (``CARETRIAGE_PORT``), on
    loopback: a server bound to 0.0.0.0 in a container answers there too."""
    env = os.environ if environ is None else environ
    port = int(env.get("CARETRIAGE_PORT") or Settings.model_fields["port"].default)
    return f"http://127.0.0.1:{port}/readyz"


def probe(url: str, timeout: float = 2.0) -> tuple[bool, str]:
    """Whether the server at ``url`` says it is ready (200), and what it said. For container
    health checks: any other status, or no answer, is not ready."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200, f"{r.status} {r.read(500).decode(errors='replace')}"
    except urllib.error.HTTPError as e:
        return False, f"{e.code} {e.read(500).decode(errors='replace')}"
    except (urllib.error.URLError, OSError, ValueError) as e:
        return False, f"no answer from {url}: {getattr(e, 'reason', e)}"


def _configure_logging(level: str) -> None:
    from serving.app import RequestIdFilter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger("caretriage")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    logging.getLogger("alembic").setLevel(logging.WARNING)


def serve(settings: Settings | None = None) -> None:
    """Serve until interrupted. One process holds one model; scale with more processes or
    replicas, not uvicorn workers sharing a port (each would load its own copy anyway)."""
    import uvicorn

    from serving.app import create_app

    if settings is None:
        try:
            settings = Settings()
        except SettingsError as e:
            raise SystemExit(f"caretriage: {e}") from e
    _configure_logging(settings.log_level)
    check(settings)
    app = create_app(settings)
    print(
        f"caretriage: serving {settings.model_dir} on {settings.url} (docs {settings.url}/docs)",
        flush=True,
    )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        proxy_headers=False,
        server_header=False,
    )
