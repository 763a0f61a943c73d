"""Soak: a steady mixed load near 80% of measured capacity for N minutes, on SQLite or PostgreSQL.

A load test shows what the server does for seconds; leaks, slow growth of the store or of the
process, and rare errors show over minutes. This starts the real server (rate limits off: one
key carries all the load), puts a roster, measures capacity for the mix with closed-loop
clients, then sends the same mix open-loop at ``--load`` (default 0.8) of that rate for
``--minutes`` (default 10): single-post and 32-post scoring requests and roster edits
(``PUT /v1/agents/{id}``, a caseload change). Latency is counted from each request's scheduled
time, so a server that falls behind shows it instead of slowing the client down. Per interval
(``--interval-seconds``, default 60) it reports throughput, p50/p99 per kind and the server's
resident memory; at the end the memory growth after the warm-up (target at most 5%) and the
error counts (target: no 5xx at all). A 503 the queue deadline sends (``overloaded``, with
Retry-After) is a 5xx like any other: 80% of capacity is the load the server must take, so a
shed there is a miss; the report shows sheds apart from other server errors, and the queue
wait the server measured (``caretriage_queue_wait_seconds``) against the deadline in force,
so a miss says whether the deadline or the server was at fault. Not part of ``make test``:
``make soak``.

    .venv/bin/python -m benchmarks.soak [--minutes 10] [--store sqlite|postgresql]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import secrets
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: import from the repo root, not benchmarks/
    sys.path[0] = str(REPO_ROOT)

from benchmarks import http_load, report  # noqa: E402
from benchmarks.measure import percentile_ms  # noqa: E402
from benchmarks.overload import load_texts  # noqa: E402

PG_URL = os.environ.get(
    "CARETRIAGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
# The mix: (kind, weight). Roster edits are a tenth of the requests.
MIX: tuple[tuple[str, float], ...] = (("single", 0.6), ("batch32", 0.3), ("agent_put", 0.1))
AGENTS = 50
RSS_GROWTH_TARGET = 0.05


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--bundle", type=Path, default=REPO_ROOT / "models" / "caretriage-minilm")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--store", choices=["sqlite", "postgresql"], default="sqlite")
    p.add_argument("--pg-url", default=PG_URL, help="a PostgreSQL server to make a database on")
    p.add_argument("--load", type=float, default=0.8, help="share of measured capacity")
    p.add_argument("--calibrate-seconds", type=float, default=20.0)
    p.add_argument("--calibrate-clients", type=int, default=4)
    p.add_argument("--warmup-seconds", type=float, default=60.0, help="before the RSS baseline")
    p.add_argument("--interval-seconds", type=float, default=60.0, help="one report row each")
    p.add_argument("--workers", type=int, default=32, help="client threads sending the schedule")
    p.add_argument("--data-dir", type=Path, default=None, help="default: the shared data dir")
    p.add_argument("--out", type=Path, default=None, help="default: results/soak-<store>.json")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------- store


@contextmanager
def database(store: str, pg_url: str, workdir: Path) -> Iterator[str]:
    """A ``CARETRIAGE_DATABASE_URL`` for a fresh, empty store: an SQLite file in ``workdir``,
    or a database made on the PostgreSQL server for this run and dropped after it."""
    if store == "sqlite":
        yield f"sqlite:///{workdir / 'soak.db'}"
        return
    from sqlalchemy import create_engine, make_url, text

    from serving.store import normalize_url

    url = make_url(normalize_url(pg_url))
    name = f"caretriage_soak_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield url.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


# ------------------------------------------------------------------------------------ load


@dataclass
class Workload:
    """Pre-built requests: score bodies of 1 and 32 posts, and the roster to edit."""

    singles: list[bytes]
    batches: list[bytes]
    agents: list[dict[str, Any]]

    def request(self, kind: str, rng: random.Random) -> tuple[str, str, bytes, int]:
        """(method, path, body, posts scored) of one request of ``kind``."""
        if kind == "single":
            return "POST", "/v1/score", rng.choice(self.singles), 1
        if kind == "batch32":
            return "POST", "/v1/score", rng.choice(self.batches), 32
        agent = dict(rng.choice(self.agents))
        agent["caseload"] = rng.randint(0, agent.get("capacity", 10))
        return "PUT", f"/v1/agents/{agent['id']}", json.dumps(agent).encode(), 0


def pick_kind(rng: random.Random) -> str:
    x, acc = rng.random(), 0.0
    for kind, weight in MIX:
        acc += weight
        if x < acc:
            return kind
    return MIX[-1][0]


@dataclass
class Sample:
    at_s: float  # scheduled time since the start of the soak
    kind: str
    status: int | None  # None: no HTTP answer
    latency_s: float  # from the scheduled time to the answer
    posts: int
    error: str | None = None  # a 5xx's error body ``error``: "overloaded" is a shed

    @property
    def shed(self) -> bool:
        return self.status == 503 and self.error == "overloaded"


def error_of(status: int | None, body: bytes) -> str | None:
    """The ``error`` field of a 5xx answer (the API's one error shape), else None."""
    if status is None or status < 500:
        return None
    try:
        return str(json.loads(body).get("error"))
    except (ValueError, AttributeError):
        return "unparsable"


@dataclass
class Recorder:
    samples: list[Sample] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, s: Sample) -> None:
        with self.lock:
            self.samples.append(s)


def calibrate(
    server: http_load.Server, work: Workload, clients: int, seconds: float
) -> dict[str, Any]:
    """Requests/s of the mix that ``clients`` closed-loop clients get without being shed: the
    capacity to scale. Shed requests would skew the mix that succeeds (a 503 returns at once,
    so clients pile up cheap successes), so on more than 1% of 503s it measures again with
    half the clients, down to one."""
    while True:
        done = closed_mix(server, work, clients, seconds)
        answered = sum(done["statuses"].values())
        shed = done["statuses"].get("503", 0)
        if clients == 1 or shed <= 0.01 * answered:
            return done
        clients //= 2


def closed_mix(
    server: http_load.Server, work: Workload, clients: int, seconds: float
) -> dict[str, Any]:
    statuses = Counter[str]()
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def worker(i: int) -> None:
        rng = random.Random(1000 + i)
        with http_load.RawClient(server.url, server.headers) as conn:
            while time.perf_counter() < stop_at:
                method, path, body, _ = work.request(pick_kind(rng), rng)
                try:
                    status = str(conn.request(method, path, body)[0])
                except http_load.HTTPTransportError:
                    status = "None"
                with lock:
                    statuses[status] += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = statuses["200"] + statuses["201"]
    return {
        "clients": clients,
        "seconds": round(wall, 1),
        "statuses": dict(statuses),
        "ok_per_s": round(ok / wall, 2),
    }


def soak(
    server: http_load.Server,
    work: Workload,
    rate: float,
    seconds: float,
    workers: int,
    sample_every: float,
) -> tuple[Recorder, list[dict[str, float]]]:
    """Open loop: request k is due at k / ``rate`` seconds; ``workers`` threads take the next
    due request, wait for its time and send it. Also samples the server's memory and CPU
    every ``sample_every`` seconds. Returns the samples and the resource readings."""
    rec = Recorder()
    lock = threading.Lock()
    next_k = 0
    total = int(rate * seconds)
    t0 = time.perf_counter() + 0.5
    stop = threading.Event()
    readings: list[dict[str, float]] = []

    def worker(i: int) -> None:
        nonlocal next_k
        rng = random.Random(i)
        conn = http_load.RawClient(server.url, server.headers, timeout=120.0)
        try:
            while True:
                with lock:
                    k = next_k
                    next_k += 1
                if k >= total:
                    return
                due = t0 + k / rate
                kind = pick_kind(random.Random(k))
                method, path, body, posts = work.request(kind, rng)
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                try:
                    status, answer = conn.request(method, path, body)
                except http_load.HTTPTransportError:
                    status, answer = None, b""
                latency = time.perf_counter() - due
                rec.add(Sample(due - t0, kind, status, latency, posts, error_of(status, answer)))
        finally:
            conn.close()

    def sampler() -> None:
        while True:
            now = time.perf_counter()
            try:
                mem = server.memory_mb()
                readings.append(
                    {"at_s": round(now - t0, 1), "rss_mb": mem["VmRSS"], "cpu_s": server.cpu_s()}
                )
            except OSError:
                return
            if stop.wait(sample_every):
                return

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(workers)]
    watch = threading.Thread(target=sampler, daemon=True)
    watch.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watch.join()
    return rec, readings


# --------------------------------------------------------------------------------- summary


def _ms(xs: Sequence[float], q: float) -> float | None:
    return round(percentile_ms(xs, q), 1) if xs else None


def summarize(
    samples: Sequence[Sample],
    readings: Sequence[dict[str, float]],
    interval: float,
    warmup: float,
) -> dict[str, Any]:
    """Per-interval rows and the totals: throughput, latency per kind, memory, errors."""
    by_interval: dict[int, list[Sample]] = defaultdict(list)
    for s in samples:
        by_interval[int(s.at_s // interval)].append(s)
    rows = []
    for i in sorted(by_interval):
        xs = by_interval[i]
        end = (i + 1) * interval
        rss = [r["rss_mb"] for r in readings if i * interval <= r["at_s"] < end + 1e-9]
        ok = [s for s in xs if s.status is not None and s.status < 400]
        row: dict[str, Any] = {
            "interval": i,
            "from_s": i * interval,
            "requests_per_s": round(len(xs) / interval, 2),
            "posts_per_s": round(sum(s.posts for s in ok) / interval, 1),
            "rss_mb": rss[-1] if rss else None,
            "5xx": sum(1 for s in xs if s.status is not None and s.status >= 500),
            "shed": sum(1 for s in xs if s.shed),
            "4xx": sum(1 for s in xs if s.status is not None and 400 <= s.status < 500),
            "no_answer": sum(1 for s in xs if s.status is None),
        }
        for kind, _ in MIX:
            lat = [s.latency_s for s in ok if s.kind == kind]
            row[f"{kind}_p50_ms"] = _ms(lat, 50)
            row[f"{kind}_p99_ms"] = _ms(lat, 99)
        rows.append(row)
    base = [r["rss_mb"] for r in readings if r["at_s"] <= warmup]
    after = [r["rss_mb"] for r in readings if r["at_s"] > warmup]
    growth = None
    if base and after:
        growth = round((after[-1] - base[-1]) / base[-1], 4)
    statuses = Counter(str(s.status) for s in samples)
    server_errors = [s for s in samples if s.status is not None and s.status >= 500]
    return {
        "rows": rows,
        "statuses": dict(sorted(statuses.items())),
        "requests": len(samples),
        "5xx": len(server_errors),
        "shed": sum(1 for s in server_errors if s.shed),
        "other_5xx": dict(Counter(f"{s.status} {s.error}" for s in server_errors if not s.shed)),
        "no_answer": statuses.get("None", 0),
        "rss_after_warmup_mb": base[-1] if base else None,
        "rss_end_mb": after[-1] if after else None,
        "rss_peak_mb": max((r["rss_mb"] for r in readings), default=None),
        "rss_growth": growth,
        "rss_growth_ok": None if growth is None else growth <= RSS_GROWTH_TARGET,
    }


def render(result: dict[str, Any]) -> str:
    s = result["summary"]
    headers = ["from s", "req/s", "posts/s"]
    for kind, _ in MIX:
        headers += [f"{kind} p50", f"{kind} p99"]
    headers += ["RSS MiB", "5xx", "of which shed", "4xx", "no answer"]
    rows = []
    for r in s["rows"]:
        row = [round(r["from_s"]), r["requests_per_s"], r["posts_per_s"]]
        for kind, _ in MIX:
            row += [r[f"{kind}_p50_ms"], r[f"{kind}_p99_ms"]]
        row += [r["rss_mb"], r["5xx"], r["shed"], r["4xx"], r["no_answer"]]
        rows.append(row)
    m = result["machine"]
    growth = "-" if s["rss_growth"] is None else f"{100 * s['rss_growth']:+.1f}%"
    wait = result.get("queue_wait") or {}
    deadline_ms = result.get("queue_deadline_ms")
    return "\n".join(
        [
            f"soak on {result['store']}: {result['minutes']:g} min at {result['rate_per_s']:.1f} "
            f"requests/s ({result['load']:.0%} of {result['capacity']['ok_per_s']}/s measured); "
            f"{m['cpu_model']}, {m['usable_cores']} usable cores, load average "
            f"{m['loadavg_start']} at start; latencies in ms",
            report.table(headers, rows),
            f"requests {s['requests']}, statuses {s['statuses']}; 5xx {s['5xx']} (target 0): "
            f"{s['shed']} shed by the {deadline_ms:g} ms queue deadline (503 overloaded, "
            f"Retry-After), other server errors {s['other_5xx'] or 'none'}",
            f"queue wait (server): {wait.get('waits')} waits, p50 {_bound(wait, 'p50_le_s')}, "
            f"p99 {_bound(wait, 'p99_le_s')}, {wait.get('over_1s')} over 1 s, "
            f"{wait.get('over_deadline')} over the deadline",
            f"RSS {s['rss_after_warmup_mb']} MiB after warm-up -> {s['rss_end_mb']} MiB at the "
            f"end ({growth}; target <= {RSS_GROWTH_TARGET:.0%}), peak {s['rss_peak_mb']} MiB",
        ]
    )


def _bound(wait: dict[str, Any], key: str) -> str:
    if not wait:
        return "-"
    le = wait.get(key)
    return f"<= {le:g} s" if le is not None else f"> {wait.get('top_bucket_s'):g} s"


_BUCKET = re.compile(r'^caretriage_queue_wait_seconds_bucket\{le="([^"]+)"\} ([0-9.e+]+)$', re.M)


def queue_wait(metrics_text: str, deadline_s: float, since: str = "") -> dict[str, Any]:
    """The server's queue-wait histogram, read off ``/metrics`` (less an earlier reading,
    ``since``: the calibration's waits): how many waits, the bucket bounds under which half and
    99% of them fall, and how many exceeded 1 s and the deadline (counted from the bucket bound
    at or below it: an upper estimate)."""
    earlier = {le: float(n) for le, n in _BUCKET.findall(since)}
    cumulative = [
        (float(le), float(n) - earlier.get(le, 0.0)) for le, n in _BUCKET.findall(metrics_text)
    ]
    if not cumulative:
        return {}
    total = cumulative[-1][1]
    top = max((le for le, _ in cumulative if math.isfinite(le)), default=0.0)

    def quantile_le(q: float) -> float | None:
        """The bucket bound the quantile lies under; None past the last finite one."""
        le = next((le for le, n in cumulative if n >= q * total), math.inf)
        return le if math.isfinite(le) else None

    def over(t: float) -> int:
        under = max((n for le, n in cumulative if le <= t), default=0.0)
        return int(total - under)

    return {
        "waits": int(total),
        "buckets": {str(le): int(n) for le, n in cumulative},
        "top_bucket_s": top,
        "p50_le_s": quantile_le(0.5),
        "p99_le_s": quantile_le(0.99),
        "over_1s": over(1.0),
        "over_deadline": over(deadline_s) if deadline_s > 0 else None,
    }


def scrape(server: http_load.Server, admin_key: str) -> str:
    """``/metrics`` in the Prometheus text format ("" if refused)."""
    with http_load.RawClient(server.url, {"Authorization": f"Bearer {admin_key}"}) as admin:
        status, text = admin.request("GET", "/metrics")
    return text.decode() if status == 200 else ""


def deadline_ms(env: dict[str, str]) -> float:
    """The queue deadline the server runs with: this run's environment, else the default."""
    from serving.settings import Settings

    given = env.get("CARETRIAGE_QUEUE_DEADLINE_MS") or os.environ.get(
        "CARETRIAGE_QUEUE_DEADLINE_MS"
    )
    return float(given) if given else float(Settings.model_fields["queue_deadline_ms"].default)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(k, "1")
    from features.bundle import read_bundle

    out = args.out or REPO_ROOT / "benchmarks" / "results" / f"soak-{args.store}.json"
    texts, source = load_texts(args.data_dir)
    topics = read_bundle(args.bundle).schema_.task("topic").labels
    roster = http_load.roster(topics, n=AGENTS)
    work = Workload(
        singles=http_load.score_bodies(texts, 1),
        batches=http_load.score_bodies(texts, 32),
        agents=roster["agents"],
    )
    result: dict[str, Any] = {
        "format": 1,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": report.machine_info(),
        "store": args.store,
        "workload": source,
        "mix": dict(MIX),
        "minutes": args.minutes,
        "load": args.load,
    }
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ct-soak-") as tmp:
        workdir = Path(tmp)
        with database(args.store, args.pg_url, workdir) as db_url:
            admin_key = secrets.token_urlsafe(32)  # to read /metrics at the end
            env = {
                "CARETRIAGE_DATABASE_URL": db_url,
                "CARETRIAGE_RATE_LIMIT_ENABLED": "false",
                "CARETRIAGE_ADMIN_KEYS": admin_key,
            }
            result["queue_deadline_ms"] = deadline_ms(env)
            with http_load.running_server(args.bundle, workdir, env_extra=env) as server:
                http_load.put_roster(server, roster)
                print("calibrating capacity ...", flush=True)
                capacity = calibrate(server, work, args.calibrate_clients, args.calibrate_seconds)
                calibrated = scrape(server, admin_key)
                rate = args.load * capacity["ok_per_s"]
                result["capacity"], result["rate_per_s"] = capacity, round(rate, 2)
                print(
                    f"capacity {capacity['ok_per_s']} requests/s; soaking at {rate:.1f}/s "
                    f"for {args.minutes:g} min",
                    flush=True,
                )
                rec, readings = soak(
                    server,
                    work,
                    rate,
                    args.minutes * 60,
                    args.workers,
                    sample_every=min(10.0, args.interval_seconds),
                )
                result["queue_wait"] = queue_wait(
                    scrape(server, admin_key), result["queue_deadline_ms"] / 1000, calibrated
                )
                result["server_log_warnings"] = sum(
                    1
                    for line in server.log_path.read_text(errors="replace").splitlines()
                    if " WARNING " in line or " ERROR " in line
                )
    result["readings"] = readings
    result["summary"] = summarize(rec.samples, readings, args.interval_seconds, args.warmup_seconds)
    result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(render(result))
    print(f"\nwrote {out} ({result['seconds']:.0f} s)")
    s = result["summary"]
    return 0 if s["5xx"] == 0 and s["no_answer"] == 0 and s["rss_growth_ok"] is not False else 1


if __name__ == "__main__":
    sys.exit(main())
