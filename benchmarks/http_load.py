"""The real server in a subprocess, and closed-loop HTTP load against it over loopback.

The server is started the way ``make run`` starts it (``python -m caretriage_cli serve``) with
a throw-away API key, a temporary SQLite database and the bundle under test; it is always
terminated by the context manager, whatever happens in between.
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
        with httpx.Client(base_url=server.url, headers=server.headers, timeout=60.0) as client:
            while True:
                with lock:
                    if sent >= max_requests or time.perf_counter() > deadline:
                        return
                    body = bodies[sent % len(bodies)]
                    sent += 1
                t0 = time.perf_counter()
                try:
                    status = client.post(path, content=body).status_code
                except httpx.HTTPError:
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
def poster(server: Server, path: str = "/v1/score") -> Iterator[Callable[[bytes], None]]:
    """One keep-alive client's POST of a body, for timing request by request beside in-process
    calls; any status but 200 raises (a refused request must not count as a fast one)."""
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=60.0) as client:

        def post(body: bytes) -> None:
            r = client.post(path, content=body)
            if r.status_code != 200:
                raise RuntimeError(f"POST {path}: HTTP {r.status_code}: {r.text[:200]}")

        yield post


def put_roster(server: Server, body: dict) -> None:
    r = httpx.put(f"{server.url}/v1/agents", headers=server.headers, json=body, timeout=30.0)
    r.raise_for_status()
