"""Load shedding under overload: the real server, 64 and 96 closed-loop clients of 32 posts.

The queue bound alone (2,048 posts) admitted exactly 64 clients x 32 posts and made each wait
about 10 s; at 96 clients throughput fell (236 to 182 posts/s in the probe) because every 503
came after its body was parsed, and was logged. This runs each client count against the
server with the queue deadline (``CARETRIAGE_QUEUE_DEADLINE_MS``, default 1000) and, for
comparison, with the deadline off (``0``: the bound in posts alone, still refused before the
body is read), and reports per cell: posts/s scored, p50/p99 of the 200s, the share of 503s and
how long a 503 took, and the warning lines the server logged.

Each client sends its next request as soon as the previous answer arrives; after a 503 it
first waits the Retry-After seconds (plus up to 10% jitter), as the API asks. ``--on-503
retry`` makes the harshest client instead, one that retries at once. A warm-up at the same load
precedes each measured window, so the queue and the service-time estimate are in their steady
state. Rate limits are off on the server: all clients share one key, and per-key limits are
not what is measured here.

    .venv/bin/python -m benchmarks.overload [--seconds 15] [--clients 64 96] [--deadlines 1000 0]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: import from the repo root, not benchmarks/
    sys.path[0] = str(REPO_ROOT)

from benchmarks import http_load, report  # noqa: E402
from benchmarks.measure import percentile_ms  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--bundle", type=Path, default=REPO_ROOT / "models" / "caretriage-minilm")
    p.add_argument("--clients", type=int, nargs="+", default=[64, 96])
    p.add_argument("--posts-per-request", type=int, default=32)
    p.add_argument("--seconds", type=float, default=15.0, help="measured window per cell")
    p.add_argument("--warmup", type=float, default=4.0, help="unmeasured load before each cell")
    p.add_argument(
        "--deadlines",
        type=float,
        nargs="+",
        default=[1000.0, 0.0],
        help="CARETRIAGE_QUEUE_DEADLINE_MS per server variant (0: off, the bound in posts only)",
    )
    p.add_argument(
        "--on-503",
        choices=["wait", "retry"],
        default="wait",
        help="after a 503, wait its Retry-After (default) or retry at once",
    )
    p.add_argument("--data-dir", type=Path, default=None, help="default: the shared data dir")
    p.add_argument(
        "--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "overload.json"
    )
    return p.parse_args(argv)


def load_texts(data_dir: Path | None, n: int = 2048) -> tuple[list[str], str]:
    """Real airline tweets when the shared data is present, else seeded synthetic ones."""
    from benchmarks.workload import airline_texts, synthetic_texts
    from training.config import default_data_dir

    texts = airline_texts(data_dir or default_data_dir())
    if texts:
        return texts[:n], "airline/test.csv"
    return synthetic_texts(n), "synthetic"


@dataclass
class Tally:
    """What a set of clients saw in one measured window."""

    ok_s: list[float] = field(default_factory=list)  # latency of each 200
    shed_s: list[float] = field(default_factory=list)  # latency of each 503
    statuses: Counter[int] = field(default_factory=Counter)
    failures: int = 0  # no HTTP answer at all
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, status: int | None, seconds: float) -> None:
        with self.lock:
            if status is None:
                self.failures += 1
                return
            self.statuses[status] += 1
            if status == 200:
                self.ok_s.append(seconds)
            elif status == 503:
                self.shed_s.append(seconds)


def hammer(
    server: http_load.Server,
    bodies: Sequence[bytes],
    clients: int,
    seconds: float,
    wait_on_503: bool = True,
) -> tuple[Tally, float]:
    """``clients`` threads, one keep-alive connection each, posting back to back for
    ``seconds`` (after a 503 waiting its Retry-After if ``wait_on_503``); returns the tally
    and the wall time."""
    tally = Tally()
    stop_at = time.perf_counter() + seconds

    def worker(i: int) -> None:
        conn = http_load.RawClient(server.url, server.headers, timeout=120.0)
        rng = random.Random(i)
        n = i
        try:
            while time.perf_counter() < stop_at:
                body = bodies[n % len(bodies)]
                n += clients
                t0 = time.perf_counter()
                try:
                    status: int | None = conn.request("POST", "/v1/score", body)[0]
                except http_load.HTTPTransportError:
                    status = None
                tally.add(status, time.perf_counter() - t0)
                if status == 503 and wait_on_503:
                    pause = float(conn.last_headers.get("retry-after", "1"))
                    pause *= 1 + 0.1 * rng.random()
                    time.sleep(max(0.0, min(pause, stop_at - time.perf_counter())))
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return tally, time.perf_counter() - t0


def warning_lines(server: http_load.Server) -> int:
    try:
        text = server.log_path.read_text(errors="replace")
    except OSError:
        return 0
    return sum(1 for line in text.splitlines() if " WARNING " in line)


def _ms(xs: Sequence[float], q: float) -> float | None:
    return round(percentile_ms(xs, q), 1) if xs else None


def measure_cell(
    server: http_load.Server,
    bodies: Sequence[bytes],
    clients: int,
    posts_per_request: int,
    seconds: float,
    warmup: float,
    wait_on_503: bool = True,
) -> dict[str, Any]:
    if warmup > 0:
        hammer(server, bodies, clients, warmup, wait_on_503)
    lines0, cpu0 = warning_lines(server), server.cpu_s()
    tally, wall = hammer(server, bodies, clients, seconds, wait_on_503)
    answered = sum(tally.statuses.values())
    return {
        "clients": clients,
        "posts_per_request": posts_per_request,
        "wall_s": round(wall, 2),
        "requests": answered + tally.failures,
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "transport_failures": tally.failures,
        "ok_posts_per_s": round(len(tally.ok_s) * posts_per_request / wall, 1),
        "ok_p50_ms": _ms(tally.ok_s, 50),
        "ok_p99_ms": _ms(tally.ok_s, 99),
        "shed_share": round(len(tally.shed_s) / answered, 3) if answered else None,
        "shed_p50_ms": _ms(tally.shed_s, 50),
        "shed_p99_ms": _ms(tally.shed_s, 99),
        "server_cpu_s": round(server.cpu_s() - cpu0, 1),
        "warning_lines": warning_lines(server) - lines0,
    }


def render(result: dict[str, Any]) -> str:
    headers = [
        "deadline",
        "clients",
        "posts/s",
        "p50 ms",
        "p99 ms",
        "503 %",
        "503 p50 ms",
        "503 p99 ms",
        "no answer",
        "warn lines",
    ]
    rows = [
        [
            f"{c['deadline_ms']:g} ms" if c["deadline_ms"] else "off",
            c["clients"],
            c["ok_posts_per_s"],
            c["ok_p50_ms"],
            c["ok_p99_ms"],
            None if c["shed_share"] is None else round(100 * c["shed_share"], 1),
            c["shed_p50_ms"],
            c["shed_p99_ms"],
            c["transport_failures"],
            c["warning_lines"],
        ]
        for c in result["cells"]
    ]
    m = result["machine"]
    head = (
        f"overload: {result['posts_per_request']} posts a request, {result['seconds_per_cell']:g}"
        f" s a cell after {result['warmup_s']:g} s warm-up, on 503 {result['on_503']}; "
        f"{m['cpu_model']}, "
        f"{m['usable_cores']} usable cores, load average {m['loadavg_start']} at start"
    )
    return head + "\n" + report.table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(k, "1")
    texts, source = load_texts(args.data_dir)
    bodies = http_load.score_bodies(texts, args.posts_per_request)
    result: dict[str, Any] = {
        "format": 1,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": report.machine_info(),
        "workload": source,
        "posts_per_request": args.posts_per_request,
        "seconds_per_cell": args.seconds,
        "warmup_s": args.warmup,
        "on_503": args.on_503,
        "cells": [],
    }
    t_start = time.perf_counter()
    for deadline in args.deadlines:
        with tempfile.TemporaryDirectory(prefix="ct-overload-") as tmp:
            env = {
                "CARETRIAGE_QUEUE_DEADLINE_MS": str(deadline),
                "CARETRIAGE_RATE_LIMIT_ENABLED": "false",
            }
            with http_load.running_server(args.bundle, Path(tmp), env_extra=env) as server:
                for clients in args.clients:
                    cell = measure_cell(
                        server,
                        bodies,
                        clients,
                        args.posts_per_request,
                        args.seconds,
                        args.warmup,
                        wait_on_503=args.on_503 == "wait",
                    )
                    result["cells"].append({"deadline_ms": deadline, **cell})
                    print(
                        f"deadline {deadline:g} ms, {clients} clients: "
                        f"{cell['ok_posts_per_s']} posts/s, 503 share {cell['shed_share']}",
                        flush=True,
                    )
    result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(render(result))
    print(f"\nwrote {args.out} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
