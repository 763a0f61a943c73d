"""The HTTP protocol's limits (serving/protocol.py), against the real server over raw sockets:
an oversized head gets 431, a client trickling its head or body is cut off with 408, and
neither holds the server from answering others. Timeouts are set short for the test."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.live import HOST, LiveServer

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.5
# Far above both timeouts: a test that waits this long has failed, not been slow.
SOCKET_TIMEOUT_S = 15.0


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LiveServer]:
    pytest.importorskip("onnx")
    from tests._tiny_onnx import build_onnx_bundle

    root = tmp_path_factory.mktemp("protocol")
    bundle = build_onnx_bundle(root / "tiny")
    env = {
        "CARETRIAGE_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT_S),
        "CARETRIAGE_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT_S),
        "CARETRIAGE_MAX_HEADER_BYTES": "16384",
    }
    with LiveServer(bundle, root / "work", env=env) as s:
        yield s


def connect(server: LiveServer) -> socket.socket:
    sock = socket.create_connection((HOST, server.port), timeout=SOCKET_TIMEOUT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response (status, headers, body), read by its Content-Length."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response; got {buf[:200]!r}")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return int(lines[0].split(" ", 2)[1]), headers, rest[:length]


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed its side (EOF or reset) within the socket timeout."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def get(path: str = "/healthz", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n{extra}\r\n".encode()


def healthy(server: LiveServer) -> int:
    with httpx.Client(trust_env=False, timeout=SOCKET_TIMEOUT_S) as http:
        return http.get(f"{server.url}/healthz").status_code


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        return next(int(x.split()[1]) for x in f if x.startswith("VmHWM:")) / 1024


def test_a_huge_header_gets_431_and_the_connection_closes(server):
    sock = connect(server)
    peak_before = peak_rss_mib(server.proc.pid)
    # The client streams a 64 MiB header from a thread, as the probe did; the server must
    # answer once the head passes the limit, and never hold the header in memory.
    header = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "

    def flood() -> None:
        try:
            sock.sendall(header)
            for _ in range(1024):
                sock.sendall(b"a" * 65536)
        except OSError:
            pass  # the server closed: expected

    sender = threading.Thread(target=flood, daemon=True)
    sender.start()
    status, headers, body = read_response(sock)
    assert status == 431, body
    assert headers.get("connection") == "close"
    assert json.loads(body)["error"] == "headers_too_large"
    assert closed_by_server(sock)
    sender.join(SOCKET_TIMEOUT_S)
    sock.close()
    # Unguarded, the parser buffered the whole header (+97 MB for 64 MB in the probe).
    assert peak_rss_mib(server.proc.pid) - peak_before < 32
    assert healthy(server) == 200


def test_headers_under_the_limit_are_served(server):
    sock = connect(server)
    sock.sendall(get(extra="X-Fine: " + "a" * 12_000 + "\r\n"))
    status, _, _ = read_response(sock)
    sock.close()
    assert status == 200


def test_a_client_trickling_its_headers_is_cut_off_while_others_are_served(server):
    log_before = len(server.log_text())
    socks = [connect(server) for _ in range(20)]
    for s in socks:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # the head never ends
    stop = threading.Event()

    def trickle() -> None:  # one more header line now and then: progress, never the end
        while not stop.wait(0.3):
            for s in socks:
                with contextlib.suppress(OSError):
                    s.sendall(b"X-Slow: 1\r\n")

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    try:
        assert healthy(server) == 200  # held connections do not block another client
        statuses = []
        for s in socks:
            status, headers, body = read_response(s)
            statuses.append((status, json.loads(body)["error"], headers.get("connection")))
            assert closed_by_server(s)
    finally:
        stop.set()
        t.join()
        for s in socks:
            s.close()
    assert set(statuses) == {(408, "request_timeout", "close")}
    # 20 cut-offs are logged as a rate: a line at the first after a quiet spell (this test's
    # or an earlier one's), the rest in a summary line per 10 s; never a line each.
    text = server.log_text()
    cutoff_lines = [x for x in text[log_before:].splitlines() if "cut off" in x]
    assert len(cutoff_lines) <= 2, cutoff_lines
    assert "cut off 1 slow or oversized requests" in text


def test_a_slow_body_gets_408_and_a_close(server):
    sock = connect(server)
    auth = server.auth_headers["Authorization"]
    sock.sendall(
        f"POST /v1/score HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n".encode()
        + b'{"posts": ['
    )
    assert healthy(server) == 200
    status, _, body = read_response(sock)
    assert status == 408, body
    assert json.loads(body)["error"] == "request_timeout"
    assert closed_by_server(sock)
    sock.close()
    assert "Exception in ASGI application" not in server.log_text()


def test_an_idle_connection_is_closed_silently(server):
    sock = connect(server)
    assert closed_by_server(sock)  # no request: no answer, just the close
    sock.close()


def test_a_kept_alive_connection_gets_its_head_timeout_per_request(server):
    """The head timer runs from a request's first byte: a pause between requests longer than
    the header timeout (within uvicorn's 5 s keep-alive) does not cut the next one off."""
    sock = connect(server)
    sock.sendall(get())
    assert read_response(sock)[0] == 200
    time.sleep(HEADER_TIMEOUT_S * 2)
    sock.sendall(get())
    assert read_response(sock)[0] == 200
    sock.close()
