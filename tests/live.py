"""Run the real ``caretriage serve`` process for end-to-end tests (not a test module).

In-process ``TestClient`` tests cannot see what only a real process shows: start-up from the
environment, the port actually bound, a browser talking to it, and what survives a crash
(SIGKILL) of the process. ``LiveServer`` starts ``python -m caretriage_cli serve`` from the
repository root, waits for ``/readyz``, and keeps its output in a log file whose tail is put into
every start-up failure.

    with LiveServer(bundle, tmp_path) as server:
        httpx.get(f"{server.url}/v1/model", headers=server.auth_headers)
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
# A key the service accepts (>= 16 characters); tests that need others pass ``api_keys``.
DEFAULT_KEY = "live-test-key-0123456789abcdef"
# Defaults for the server under test, overridable through ``env``: the test machine's cores are
# shared (with pytest itself and other jobs), so one ONNX run of one thread, without spinning,
# keeps a tiny model fast without starving anything else.
TEST_ENV: dict[str, str] = {
    "CARETRIAGE_INFERENCE_WORKERS": "1",
    "CARETRIAGE_INTRA_OP_THREADS": "1",
    "CARETRIAGE_INTRA_OP_SPINNING": "false",
}
_PR_SET_PDEATHSIG = 1


class LiveServerError(RuntimeError):
    """The server did not come up (exited, or not ready in time); the message ends with the
    tail of its log, which is where the reason is."""


def free_port(host: str = HOST) -> int:
    """A port nothing listens on now, chosen by the kernel (bind to 0). Another process could
    take it before the server binds; on loopback in a test run that is rare enough."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def sqlite_url(path: Path) -> str:
    """The ``CARETRIAGE_DATABASE_URL`` of an SQLite file at ``path``."""
    return f"sqlite:///{Path(path).resolve()}"


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGKILL the server when the test process dies,
    so a crashed or killed pytest leaves no server holding a port on a shared machine.
    (Tied to the starting thread: start servers from the main thread, as pytest does.)"""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class LiveServer:
    """``caretriage serve`` as a subprocess, on a free loopback port.

    Settings come only from the arguments: ``CARETRIAGE_*`` variables of the calling
    environment are dropped so a developer's shell cannot change what a test sees; ``env``
    adds or overrides anything (including :data:`TEST_ENV`). The port, settings and log file
    stay the same across :meth:`restart`, so a test can kill the process and start it again on
    the same database.
    """

    def __init__(
        self,
        model_dir: Path,
        workdir: Path | None = None,
        *,
        api_keys: Sequence[str] = (DEFAULT_KEY,),
        database_url: str | None = None,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        uvicorn_args: Sequence[str] | None = None,
    ) -> None:
        """``workdir`` holds the log (``server.log``) and, unless ``database_url`` is given,
        the SQLite store (``live.db``); without one a temporary folder is made, and removed
        on a clean exit from the ``with`` block. ``uvicorn_args`` starts the app the bare way
        instead, ``uvicorn --factory serving.app:app_factory`` on the same host and port with
        these further arguments (``[]``: none), as a deployment without the CLI would."""
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="caretriage-live-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "server.log"
        self.api_keys = list(api_keys)
        self.database_url = database_url or sqlite_url(self.workdir / "live.db")
        self.port = port or free_port()
        self.env: dict[str, str] = {
            **TEST_ENV,
            "CARETRIAGE_API_KEYS": ",".join(self.api_keys),
            "CARETRIAGE_MODEL_DIR": str(Path(model_dir).resolve()),
            "CARETRIAGE_DATABASE_URL": self.database_url,
            "CARETRIAGE_HOST": HOST,
            "CARETRIAGE_PORT": str(self.port),
            **(env or {}),
        }
        self.uvicorn_args = None if uvicorn_args is None else list(uvicorn_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.starts = 0

    # ------------------------------------------------------------------------------ address

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:41234`` (no trailing slash)."""
        return f"http://{HOST}:{self.port}"

    @property
    def auth_headers(self) -> dict[str, str]:
        """The API's bearer header for the first key."""
        return {"Authorization": f"Bearer {self.api_keys[0]}"}

    def client(self, *, auth: bool = True, **kw: Any) -> httpx.Client:
        """An ``httpx.Client`` on :attr:`url` (the caller closes it). ``trust_env=False``: a
        proxy in the environment must not intercept loopback calls. Cookies persist in the
        client, so it can hold a signed-in session."""
        headers = {**(self.auth_headers if auth else {}), **kw.pop("headers", {})}
        kw.setdefault("timeout", 30.0)
        return httpx.Client(base_url=self.url, headers=headers, trust_env=False, **kw)

    # ---------------------------------------------------------------------------- lifecycle

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 60.0) -> Self:
        """Start the process and return once ``GET /readyz`` answers 200 (model loaded and
        warm). Raises :class:`LiveServerError` with the log's tail if it exits or is not
        ready within ``timeout`` seconds (the process is then killed)."""
        if self.running:
            raise LiveServerError(f"already running (pid {self.proc.pid})")  # type: ignore[union-attr]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CARETRIAGE_")}
        env.update(self.env)
        env["PYTHONUNBUFFERED"] = "1"  # the log is complete up to the moment of a kill
        self._log = self.log_path.open("ab")
        self.starts += 1
        self._log.write(f"----- live server start #{self.starts} on {self.url}\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(
            self.command(),
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,  # never pytest's stdin (CI runs with none)
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        self._wait_ready(timeout)
        return self

    def command(self) -> list[str]:
        """The server's command line: ``caretriage serve``, or the bare uvicorn factory."""
        if self.uvicorn_args is None:
            return [sys.executable, "-m", "caretriage_cli", "serve"]
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "serving.app:app_factory",
            "--host",
            HOST,
            "--port",
            str(self.port),
            *self.uvicorn_args,
        ]

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        with httpx.Client(trust_env=False, timeout=2.0) as http:
            while True:
                code = self.proc.poll()  # type: ignore[union-attr]
                if code is not None:
                    self._close_log()
                    raise LiveServerError(self._failure(f"exited with code {code} before ready"))
                try:
                    r = http.get(f"{self.url}/readyz")
                    if r.status_code == 200:
                        return
                    last = f"{r.status_code} {r.text[:200]}"
                except httpx.HTTPError as e:
                    last = f"{type(e).__name__}: {e}"
                if time.monotonic() > deadline:
                    self.kill()
                    raise LiveServerError(
                        self._failure(f"not ready after {timeout:g}s (last: {last})")
                    )
                time.sleep(0.1)

    def _failure(self, what: str, lines: int = 40) -> str:
        tail = "\n".join(self.log_text().splitlines()[-lines:])
        return f"caretriage live server on {self.url} {what}; log {self.log_path}:\n{tail}"

    def kill(self) -> int | None:
        """SIGKILL and reap: a crash, with no shutdown code run. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait()
        self._close_log()
        return code

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (uvicorn's graceful shutdown: the lifespan's cleanup runs), then SIGKILL if
        the process is still there after ``timeout`` seconds. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        code = self.proc.wait()
        self._close_log()
        return code

    def restart(self, timeout: float = 60.0) -> Self:
        """Stop the process if it still runs, then start it again: same port, settings,
        database and log file (appended to)."""
        self.stop()
        return self.start(timeout)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_text(self) -> str:
        """Everything the server printed, over all starts so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self._own_workdir and exc_type is None:
            shutil.rmtree(self.workdir, ignore_errors=True)
