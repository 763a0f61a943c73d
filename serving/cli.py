"""``serve(settings)``: run the API under uvicorn (called by the top-level ``caretriage`` CLI)."""

from __future__ import annotations

import os
import urllib.error
import urllib.request

from serving.settings import Settings, SettingsError


def check(settings: Settings) -> None:
    """Exit before binding the port, with one clear line, if the bundle or policy is unusable
    (the lifespan would fail too, but buried in a traceback)."""
    from pydantic import ValidationError

    from features.bundle import BundleError, read_bundle
    from serving.priority import PolicyError, load_policy
    from serving.served import SwapRefused, check_policy
    from serving.store import Store, describe_url

    try:
        check_policy(read_bundle(settings.model_dir), load_policy(settings.policy_path()))
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


def _configure_logging(settings: Settings) -> None:
    """One handler for the service's and uvicorn's loggers, text or JSON (serving/logs.py)."""
    from serving.logs import configure

    configure(settings.log_level, settings.log_format)


def serve(settings: Settings | None = None) -> None:
    """Serve until interrupted. One process holds one model; scale with more processes or
    replicas, not uvicorn workers sharing a port (each would load its own copy anyway)."""
    import uvicorn

    from serving.app import create_app
    from serving.protocol import guarded_protocol

    if settings is None:
        try:
            settings = Settings()
        except SettingsError as e:
            raise SystemExit(f"caretriage: {e}") from e
    _configure_logging(settings)
    check(settings)
    app = create_app(settings)
    app.state.http_protocol = "serving.protocol"  # the http= below: header bounds hold
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
        log_config=None,  # the loggers are configured above, in CARETRIAGE_LOG_FORMAT
        access_log=False,  # serving.logs.AccessLogMiddleware: route template and request id
        # httptools with a header-size limit and header/body timeouts (serving/protocol.py).
        http=guarded_protocol(
            max_header_bytes=settings.max_header_bytes,
            header_timeout_s=settings.header_timeout_seconds,
            body_timeout_s=settings.body_timeout_seconds,
        ),
    )
