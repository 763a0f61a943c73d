"""The real server in a subprocess, and closed-loop HTTP load against it over loopback.

The server is started the way ``make run`` starts it (``python -m caretriage_cli serve``) with
a throw-away API key, a temporary SQLite database and the bundle under test; it is always
terminated by the context manager, whatever happens in between.

The load itself goes through ``RawClient``, a keep-alive HTTP/1.1 client on one blocking socket:
client and server share this machine's cores, and httpx spent about 0.7 ms of the client's CPU
per request (more than the server's whole HTTP stack for a trivial route, 0.57 ms), CPU the
server then lacked. ``--http-client httpx`` in ``bench.py`` measures with httpx instead.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import urlsplit

import httpx
from tqdm.auto import tqdm

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A port free on loopback right now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_memory_mb(pid: int) -> dict[str, float]:
    """Resident (VmRSS) and peak resident (VmHWM) memory of a process, from /proc."""
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = round(int(value.split()[0]) / 1024, 1)  # kB -> MiB
    return out


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    api_key: str
    log_path: Path
    start_to_ready_s: float = 0.0

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"}

    def memory_mb(self) -> dict[str, float]:
        return proc_memory_mb(self.proc.pid)

    def cpu_s(self) -> float:
        return proc_cpu_s(self.proc.pid)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class HTTPTransportError(OSError):
    """No HTTP response: the connection failed, closed early or sent something unparsable."""


class RawClient:
    """HTTP/1.1 over one keep-alive socket, for load generation only: requests are built from
    pre-encoded bytes and a response is read by its Content-Length (or chunks) without parsing
    the body, so the client costs tens of microseconds of CPU per request. Reconnects once
    when a kept-alive connection turns out closed."""

    def __init__(self, url: str, headers: dict[str, str], timeout: float = 60.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"RawClient speaks plain http only, not {url!r}")
        self.address = (parts.hostname, parts.port or 80)
        self.timeout = timeout
        host = f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname
        self._head = "".join(f"{k}: {v}\r\n" for k, v in ({"Host": host} | headers).items())
        self._sock: socket.socket | None = None
        self._buf = b""
        self.last_headers: dict[str, str] = {}  # of the last response, names lower-cased

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buf = b""

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(self.address, timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock, self._buf = sock, b""
        return sock

    def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        """(status, body) of one request; HTTPTransportError when no response came."""
        head = f"{method} {path} HTTP/1.1\r\n{self._head}Content-Length: {len(body)}\r\n\r\n"
        message = head.encode("latin-1") + body
        reused = self._sock is not None
        try:
            return self._exchange(message)
        except (OSError, ValueError) as e:
            self.close()
            if not reused:
                raise HTTPTransportError(f"{method} {path}: {e}") from e
        try:  # the kept-alive connection was closed by the server: once more on a new one
            return self._exchange(message)
        except (OSError, ValueError) as e:
            self.close()
            raise HTTPTransportError(f"{method} {path}: {e}") from e

    def _exchange(self, message: bytes) -> tuple[int, bytes]:
        sock = self._sock or self._connect()
        sock.sendall(message)
        while (end := self._buf.find(b"\r\n\r\n")) < 0:
            self._fill(sock)
        lines = self._buf[:end].decode("latin-1").split("\r\n")
        self._buf = self._buf[end + 4 :]
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip().lower()
        self.last_headers = headers
        if "content-length" in headers:
            body = self._read(sock, int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            body = self._read_chunked(sock)
        else:
            raise ValueError("response has neither Content-Length nor chunked encoding")
        if headers.get("connection") == "close":
            self.close()
        return status, body

    def _fill(self, sock: socket.socket) -> None:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed by the server")
        self._buf += data

    def _read(self, sock: socket.socket, n: int) -> bytes:
        while len(self._buf) < n:
            self._fill(sock)
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def _read_chunked(self, sock: socket.socket) -> bytes:
        parts = []
        while True:
            while (eol := self._buf.find(b"\r\n")) < 0:
                self._fill(sock)
            size = int(self._buf[:eol].split(b";")[0], 16)
            self._buf = self._buf[eol + 2 :]
            chunk = self._read(sock, size + 2)  # the chunk and its CRLF
            if size == 0:  # no trailers are sent by the servers measured here
                return b"".join(parts)
            parts.append(chunk[:-2])


class Poster(Protocol):
    def post(self, path: str, body: bytes) -> int: ...

    def close(self) -> None: ...


ClientKind = Literal["raw", "httpx"]


class _RawPoster:
    def __init__(self, server: Server) -> None:
        self._client = RawClient(server.url, server.headers)

    def post(self, path: str, body: bytes) -> int:
        return self._client.request("POST", path, body)[0]

    def close(self) -> None:
        self._client.close()


class _HttpxPoster:
    def __init__(self, server: Server) -> None:
        self._client = httpx.Client(base_url=server.url, headers=server.headers, timeout=60.0)

    def post(self, path: str, body: bytes) -> int:
        try:
            return self._client.post(path, content=body).status_code
        except httpx.HTTPError as e:
            raise HTTPTransportError(str(e)) from e

    def close(self) -> None:
        self._client.close()


def make_poster(server: Server, kind: ClientKind = "raw") -> Poster:
    """One keep-alive connection to ``server``; ``post`` returns the status or raises
    HTTPTransportError."""
    return _RawPoster(server) if kind == "raw" else _HttpxPoster(server)


def _wait_ready(server: Server, t0: float, timeout: float) -> float:
    """Poll /readyz until 200; seconds from spawn. Fails fast if the process exits."""
    with httpx.Client(base_url=server.url, timeout=2.0) as client:
        while True:
            if server.proc.poll() is not None:
                code = server.proc.returncode
                raise RuntimeError(f"server exited with {code} before ready:\n{server.log_tail()}")
            try:
                if client.get("/readyz").status_code == 200:
                    return time.perf_counter() - t0
            except httpx.TransportError:
                pass
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError(f"server not ready after {timeout:.0f} s:\n{server.log_tail()}")
            time.sleep(0.02)


@contextmanager
def running_server(
    bundle: Path,
    workdir: Path,
    *,
    threads: int = 0,
    timeout: float = 120.0,
    env_extra: dict[str, str] | None = None,
) -> Iterator[Server]:
    """Spawn the server on 127.0.0.1:<free port>, wait for /readyz, yield, then terminate it.
    ``env_extra`` overrides settings (``CARETRIAGE_*``) for a server variant."""
    port = free_port()
    key = secrets.token_urlsafe(32)
    env = (
        os.environ
        | {
            "CARETRIAGE_API_KEYS": key,
            "CARETRIAGE_MODEL_DIR": str(Path(bundle).resolve()),
            "CARETRIAGE_DATABASE_URL": f"sqlite:///{workdir / 'bench.db'}",
            "CARETRIAGE_LOG_LEVEL": "warning",
            "CARETRIAGE_INTRA_OP_THREADS": str(threads),
            "HF_HUB_OFFLINE": "1",
            # The load is one key from one address: per-key limits would measure themselves.
            "CARETRIAGE_RATE_LIMIT_ENABLED": "false",
        }
        | (env_extra or {})
    )
    cmd = [
        sys.executable,
        "-m",
        "caretriage_cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    log_path = workdir / "server.log"
    with log_path.open("wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        server = Server(proc, f"http://127.0.0.1:{port}", key, log_path)
        try:
            server.start_to_ready_s = _wait_ready(server, t0, timeout)
            yield server
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def roster(topics: Sequence[str], n: int = 20, seed: int = 0) -> dict:
    """A plausible roster, so routing does its real work on every scored post."""
    rng = random.Random(seed)
    agents = []
    for i in range(n):
        skills = {
            t: round(rng.uniform(0.2, 1.0), 2)
            for t in rng.sample(list(topics), k=min(3, len(topics)))
        }
        agents.append(
            {
                "id": f"agent-{i:03d}",
                "work_group": f"group-{i % 4}",
                "skills": skills,
                "capacity": 10,
                "caseload": rng.randint(0, 9),
            }
        )
    return {"agents": agents}


def score_bodies(texts: Sequence[str], per_request: int) -> list[bytes]:
    """Pre-serialized /v1/score bodies of ``per_request`` posts each, in arrival order (the
    client does not sort: that is the server's job)."""
    bodies = []
    for s in range(0, len(texts), per_request):
        posts = [{"id": f"p{s + i}", "text": t} for i, t in enumerate(texts[s : s + per_request])]
        bodies.append(json.dumps({"posts": posts}).encode())
    return bodies


@dataclass
class LoadResult:
    clients: int
    posts_per_request: int
    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    failures: int = 0  # transport errors (no HTTP status)
    wall_s: float = 0.0
    # CPU seconds spent meanwhile by the server and by this (client) process: on a small
    # machine the load generator competes with the server, and this shows by how much.
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)


def closed_loop(
    server: Server,
    bodies: Sequence[bytes],
    *,
    posts_per_request: int,
    clients: int,
    max_requests: int,
    max_seconds: float,
    desc: str,
    path: str = "/v1/score",
    client: ClientKind = "raw",
) -> LoadResult:
    """``clients`` threads, each with its own keep-alive connection, send the next body as soon
    as their previous response arrives, until ``max_requests`` were sent or ``max_seconds``
    passed. Latency is measured per request on the client."""
    res = LoadResult(clients, posts_per_request)
    lock = threading.Lock()
    sent = 0
    deadline = time.perf_counter() + max_seconds
    bar = tqdm(total=max_requests, desc=desc, unit="req", leave=False)

    def worker() -> None:
        nonlocal sent
        conn = make_poster(server, client)
        try:
            while True:
                with lock:
                    if sent >= max_requests or time.perf_counter() > deadline:
                        return
                    body = bodies[sent % len(bodies)]
                    sent += 1
                t0 = time.perf_counter()
                status: int | None
                try:
                    status = conn.post(path, body)
                except HTTPTransportError:
                    status = None
                dt = time.perf_counter() - t0
                with lock:
                    if status is None:
                        res.failures += 1
                    else:
                        res.statuses[status] += 1
                        if status == 200:
                            res.latencies_s.append(dt)
                    bar.update()
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    cpu0, client0, t0 = server.cpu_s(), time.process_time(), time.perf_counter()
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        res.wall_s = time.perf_counter() - t0
        res.client_cpu_s = time.process_time() - client0
        res.server_cpu_s = server.cpu_s() - cpu0
        bar.close()
    return res


@contextmanager
def poster(
    server: Server, path: str = "/v1/score", client: ClientKind = "raw"
) -> Iterator[Callable[[bytes], None]]:
    """One keep-alive client's POST of a body, for timing request by request beside in-process
    calls; any status but 200 raises (a refused request must not count as a fast one)."""
    conn = make_poster(server, client)

    def post(body: bytes) -> None:
        status = conn.post(path, body)
        if status != 200:
            raise RuntimeError(f"POST {path}: HTTP {status}")

    try:
        yield post
    finally:
        conn.close()


def put_roster(server: Server, body: dict) -> None:
    r = httpx.put(f"{server.url}/v1/agents", headers=server.headers, json=body, timeout=30.0)
    r.raise_for_status()
