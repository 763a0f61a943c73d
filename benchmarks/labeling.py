"""The labeling queue under load: next-item latency and the labels per second a back end
sustains with 16 evaluators on a pool of 100,000 items, on SQLite (a temporary file) and on
PostgreSQL (a fresh database, dropped after).

The pool is inserted directly (``LabelingStore.add_items`` in chunks) with what intake would
store: the model's suggestions and confidences, a margin uncertainty (the queue's order) and a
hashed bag-of-word-pieces vector. Each evaluator loops: the next item (n=1), then its label.

- ``http`` (the headline, what evaluators see): the real server in a subprocess; each evaluator
  signs in through the form and then talks to the JSON API over its own keep-alive connection
  (``http_load.RawClient``: cheap on the client, which shares the machine's cores).
- ``paced``: the same, but each evaluator starts a cycle at a fixed pace (``--rate`` labels/s
  offered in all, 200 by default): the latency at the target load, not at saturation (in a
  closed loop without pauses, latency is only the evaluators' number over the throughput).
- ``store``: the same loop calling ``LabelingStore`` from 16 threads in this process (no HTTP,
  no sign-in), the server stopped: what the database layer alone sustains.

Latencies are measured by the client after a warm-up, over a fixed duration. Targets are shown,
never asserted: next-item p99 <= 50 ms, >= 200 labels/s on SQLite.

    .venv/bin/python -m benchmarks.labeling [--items 100000] [--seconds 20] [--stores sqlite]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import report
from benchmarks.http_load import HTTPTransportError, RawClient, proc_cpu_s, running_server
from benchmarks.measure import percentile_ms

REPO_ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PASSWORD = "bench-labeling-password"
SESSION_SECRET = "benchmark-session-secret-" + "0" * 16
# (key, description, op, threshold), checked against the SQLite HTTP run.
MODES = ("http", "paced", "store")
TARGETS = (
    ("next_p99_ms", "next-item p99 (ms)", "<=", 50.0),
    ("labels_per_s", "labels/s sustained", ">=", 200.0),
)
_VOCABULARY = """
    bag flight late cancelled refund seat crew gate delay luggage lost app booking wifi meal
    thanks great terrible never again waited hours denver oslo lima phone nobody answers
    upgrade miles points baggage claim broken rude lovely smooth landing
"""
WORDS = _VOCABULARY.split()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--items", type=int, default=100_000, help="items in the pool")
    p.add_argument("--evaluators", type=int, default=16)
    p.add_argument("--seconds", type=float, default=20.0, help="measured time per mode and store")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before that")
    p.add_argument("--stores", nargs="+", choices=["sqlite", "postgres"], default=None)
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--rate", type=float, default=200.0, help="offered labels/s of the paced mode")
    p.add_argument("--bundle", type=Path, default=REPO_ROOT / "models" / "caretriage-minilm")
    p.add_argument(
        "--postgres-url",
        default=PG_ADMIN_URL,
        help="a database on the server to create the benchmark's own database from",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "labeling.json"
    )
    return p.parse_args(argv)


# -- the pool -----------------------------------------------------------------------------------


def pool_items(n: int, schema: Any, *, seed: int = 0, chunk: int = 5_000) -> Iterator[list]:
    """``n`` distinct posts in chunks of ``chunk`` NewItems, as intake would pool them: the
    model's suggestions from random (Dirichlet, mostly confident) probabilities, their margin
    uncertainty, and a hashed vector of random word-piece ids."""
    from features import active
    from serving.labeling.intake import suggestions
    from serving.labeling.store import NewItem, text_key

    rng = np.random.default_rng(seed)
    channels = ("twitter", "facebook", "instagram", "email")
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        probs = {
            t.name: rng.dirichlet(np.full(len(t.labels), 0.4), size=size) for t in schema.tasks
        }
        sugg = suggestions(probs, schema)
        unc = active.uncertainty(probs, "margin")
        batch = []
        for i in range(size):
            k = start + i
            words = rng.choice(WORDS, size=int(rng.integers(6, 24)))
            text = f"@airline {' '.join(words)} #{k}"
            ids = rng.integers(1000, 30_000, size=int(rng.integers(10, 48))).tolist()
            batch.append(
                NewItem(
                    text=text,
                    text_key=text_key(text),
                    source="upload",
                    external_id=f"post-{k}",
                    channel=channels[k % len(channels)],
                    model_version="bench",
                    suggestion=sugg[i],
                    uncertainty=float(unc[i]),
                    embedding=active.hashed_vector(ids),
                )
            )
        yield batch


def fill_pool(ls: Any, n: int, schema: Any, *, seed: int = 0) -> float:
    """Insert ``n`` items; returns the seconds the inserts took (generation not counted)."""
    spent = 0.0
    for batch in pool_items(n, schema, seed=seed):
        t0 = time.perf_counter()
        res = ls.add_items(batch)
        spent += time.perf_counter() - t0
        if res.duplicates:
            raise RuntimeError(f"{res.duplicates} duplicate texts in the generated pool")
    return spent


def add_evaluators(ls: Any, count: int) -> dict[str, int]:
    from serving.labeling.accounts import hash_password

    hashed = hash_password(PASSWORD)  # argon2 once: it is slow on purpose
    return {
        f"bench-eval-{i:02d}": ls.add_user(f"bench-eval-{i:02d}", "evaluator", hashed).id
        for i in range(count)
    }


def random_labels(schema: Any, rng: random.Random, suggestion: dict | None) -> dict[str, str]:
    """Mostly the model's suggestion, sometimes another label (as evaluators correct it)."""
    out = {}
    for task in schema.tasks:
        suggested = (suggestion or {}).get(task.name, {}).get("label")
        out[task.name] = (
            suggested if suggested and rng.random() < 0.8 else rng.choice(list(task.labels))
        )
    return out


# -- the load -----------------------------------------------------------------------------------


@dataclass
class Tally:
    """One mode's counts and latencies; ``labels_total`` counts warm-up too (it is what the
    store must hold), the rest only the measured window."""

    next_s: list[float] = field(default_factory=list)
    submit_s: list[float] = field(default_factory=list)
    labels: int = 0
    labels_total: int = 0
    empty: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def summary(self, seconds: float) -> dict[str, Any]:
        def pct(xs: Sequence[float], q: float) -> float | None:
            return round(percentile_ms(xs, q), 2) if xs else None

        return {
            "seconds": round(seconds, 2),
            "labels": self.labels,
            "labels_per_s": round(self.labels / seconds, 1) if seconds > 0 else None,
            "next_calls": len(self.next_s),
            "next_p50_ms": pct(self.next_s, 50),
            "next_p99_ms": pct(self.next_s, 99),
            "next_max_ms": round(1000 * max(self.next_s), 2) if self.next_s else None,
            "submit_p50_ms": pct(self.submit_s, 50),
            "submit_p99_ms": pct(self.submit_s, 99),
            "labels_total": self.labels_total,
            "empty_next": self.empty,
            "errors": len(self.errors),
            "first_errors": self.errors[:3],
        }


def _drive(workers: Sequence[Any], tally: Tally, warmup: float, seconds: float) -> float:
    """Run ``workers`` (callables taking (measuring, stop) events) on threads for the warm-up,
    then the measured window; returns the window's length."""
    measuring, stop = threading.Event(), threading.Event()
    threads = [threading.Thread(target=w, args=(measuring, stop), daemon=True) for w in workers]
    for t in threads:
        t.start()
    time.sleep(warmup)
    with tally.lock:
        measuring.set()
        t0 = time.perf_counter()
    time.sleep(seconds)
    with tally.lock:
        stop.set()
        window = time.perf_counter() - t0
    for t in threads:
        t.join(timeout=60)
    if any(t.is_alive() for t in threads):
        raise RuntimeError("an evaluator did not stop within 60 s of the end")
    return window


def run_store(ls: Any, users: dict[str, int], schema: Any, warmup: float, seconds: float):
    """(b) ``LabelingStore`` from one thread per evaluator."""
    tally = Tally()

    def worker(uid: int):
        rng = random.Random()  # seeded by the OS: idempotency keys never repeat across runs

        def loop(measuring: threading.Event, stop: threading.Event) -> None:
            while not stop.is_set():
                try:
                    t0 = time.perf_counter()
                    items = ls.next_items(uid, n=1)
                    t1 = time.perf_counter()
                    if not items:
                        with tally.lock:
                            tally.empty += 1
                        time.sleep(0.05)
                        continue
                    item = items[0]
                    labels = random_labels(schema, rng, item.get("suggestion"))
                    res = ls.submit(
                        uid,
                        item["id"],
                        kind="label",
                        labels=labels,
                        idempotency_key=f"{rng.getrandbits(64):016x}",
                    )
                    t2 = time.perf_counter()
                except Exception as e:  # counted and shown, never hidden
                    with tally.lock:
                        tally.errors.append(f"{type(e).__name__}: {e}"[:300])
                    time.sleep(0.05)
                    continue
                with tally.lock:
                    tally.labels_total += not res["replay"]
                    if measuring.is_set() and not stop.is_set():
                        tally.next_s.append(t1 - t0)
                        tally.submit_s.append(t2 - t1)
                        tally.labels += 1

        return loop

    cpu0 = time.process_time()
    window = _drive([worker(uid) for uid in users.values()], tally, warmup, seconds)
    out = tally.summary(window)
    out["process_cpu_s"] = round(time.process_time() - cpu0, 1)
    return out


def sign_in(url: str, name: str) -> dict[str, str]:
    """The headers of a signed-in evaluator: the session cookie and the API's CSRF token,
    through the real form (GET /login for the double-submit cookie, POST /login)."""
    import re

    import httpx

    with httpx.Client(base_url=url, timeout=30.0, trust_env=False) as http:
        page = http.get("/login")
        page.raise_for_status()
        token = re.search(r'name="csrf" value="([^"]+)"', page.text)
        if token is None:
            raise RuntimeError("no CSRF field on /login")
        r = http.post("/login", data={"name": name, "password": PASSWORD, "csrf": token.group(1)})
        if r.status_code != 303:
            raise RuntimeError(f"sign-in of {name}: HTTP {r.status_code} {r.text[:200]}")
        me = http.get("/v1/labeling/me")
        me.raise_for_status()
        cookie = "; ".join(f"{k}={v}" for k, v in http.cookies.items())
        return {
            "Cookie": cookie,
            "X-CSRF-Token": me.json()["csrf_token"],
            "Content-Type": "application/json",
        }


def run_http(
    url: str,
    pid: int,
    headers: dict[str, dict[str, str]],
    schema: Any,
    warmup: float,
    seconds: float,
    rate: float | None = None,
):
    """(a) The real server: signed-in evaluators (``headers`` from :func:`sign_in`), one
    keep-alive connection each, as fast as answers come back; or, with ``rate``, each starting
    a cycle every ``len(headers) / rate`` seconds (right away when late): the latency at that
    offered load rather than at saturation."""
    tally = Tally()
    interval = len(headers) / rate if rate else 0.0

    def worker(name: str, seed: int):
        rng = random.Random()  # seeded by the OS: idempotency keys never repeat across runs

        def loop(measuring: threading.Event, stop: threading.Event) -> None:
            start_at = time.perf_counter() + interval * seed / max(1, len(headers))
            with RawClient(url, headers[name], timeout=60.0) as conn:
                while not stop.is_set():
                    if interval:  # paced: no catching up in a burst after a slow cycle
                        time.sleep(max(0.0, start_at - time.perf_counter()))
                        start_at = max(start_at + interval, time.perf_counter())
                    try:
                        t0 = time.perf_counter()
                        status, body = conn.request("GET", "/v1/labeling/next?n=1")
                        t1 = time.perf_counter()
                        if status != 200:
                            raise RuntimeError(f"GET /next: HTTP {status} {body[:200]!r}")
                        items = json.loads(body)["items"]
                        if not items:
                            with tally.lock:
                                tally.empty += 1
                            time.sleep(0.05)
                            continue
                        item = items[0]
                        answer = {
                            "kind": "label",
                            "labels": random_labels(schema, rng, item.get("suggestion")),
                            "idempotency_key": f"{rng.getrandbits(64):016x}",
                        }
                        t2 = time.perf_counter()
                        status, body = conn.request(
                            "POST",
                            f"/v1/labeling/items/{item['id']}/answer",
                            json.dumps(answer).encode(),
                        )
                        t3 = time.perf_counter()
                        if status != 200:
                            raise RuntimeError(f"POST answer: HTTP {status} {body[:200]!r}")
                        replay = json.loads(body)["replay"]
                    except (HTTPTransportError, RuntimeError, ValueError) as e:
                        with tally.lock:
                            tally.errors.append(f"{type(e).__name__}: {e}"[:300])
                        time.sleep(0.05)
                        continue
                    with tally.lock:
                        tally.labels_total += not replay
                        if measuring.is_set() and not stop.is_set():
                            tally.next_s.append(t1 - t0)
                            tally.submit_s.append(t3 - t2)
                            tally.labels += 1

        return loop

    cpu0, client0 = proc_cpu_s(pid), time.process_time()
    window = _drive([worker(n, i) for i, n in enumerate(headers)], tally, warmup, seconds)
    out = tally.summary(window)
    out["offered_labels_per_s"] = rate
    out["server_cpu_s"] = round(proc_cpu_s(pid) - cpu0, 1)
    out["client_cpu_s"] = round(time.process_time() - client0, 1)
    return out


# -- one back end -------------------------------------------------------------------------------


@contextlib.contextmanager
def database(kind: str, workdir: Path, admin_url: str = PG_ADMIN_URL) -> Iterator[str]:
    """The URL of an empty database: an SQLite file in ``workdir``, or a new PostgreSQL
    database made next to ``admin_url`` (dropped afterwards)."""
    if kind == "sqlite":
        yield f"sqlite:///{(workdir / 'labeling-bench.db').resolve()}"
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from serving.store import normalize_url

    admin = create_engine(normalize_url(admin_url), isolation_level="AUTOCOMMIT")
    name = f"caretriage_bench_{secrets.token_hex(6)}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def count_labels(url: str) -> int:
    from sqlalchemy import func, select

    from serving.labeling.tables import labels_table
    from serving.store import Store

    store = Store(url)
    try:
        with store.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count()).where(
                        labels_table.c.kind == "label", labels_table.c.retracted_at.is_(None)
                    )
                ).scalar_one()
            )
    finally:
        store.dispose()


def run_backend(
    url: str,
    *,
    bundle: Path,
    items: int,
    evaluators: int,
    seconds: float,
    warmup: float,
    modes: Sequence[str] = MODES,
    rate: float = 200.0,
    workdir: Path,
    seed: int = 0,
) -> dict[str, Any]:
    """Fill an empty database at ``url`` and measure each of ``modes`` on it in turn (the
    second continues on the pool the first left). ``labels_counted`` (every label a mode saw
    confirmed, warm-up included) must equal ``labels_in_store``. ``rate``: the offered
    labels/s of the ``paced`` mode."""
    unknown = set(modes) - set(MODES)
    if unknown:
        raise ValueError(f"unknown modes {sorted(unknown)}; choose from {MODES}")
    from features.bundle import read_bundle
    from serving.labeling.store import LabelingStore
    from serving.store import Store

    schema = read_bundle(bundle).schema_
    store = Store(url)
    out: dict[str, Any] = {"backend": store.dialect, "items": items, "evaluators": evaluators}
    try:
        store.upgrade()
        ls = LabelingStore(store)
        t0 = time.perf_counter()
        out["fill_insert_s"] = round(fill_pool(ls, items, schema, seed=seed), 1)
        out["fill_total_s"] = round(time.perf_counter() - t0, 1)
        if store.dialect == "postgresql":
            # What autovacuum leaves a pool in after a bulk load, done now rather than in the
            # middle of the measurement: statistics for the planner and the visibility map
            # (index-only counts of the open items).
            from sqlalchemy import text

            t0 = time.perf_counter()
            with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                c.execute(text("VACUUM ANALYZE"))
            out["vacuum_s"] = round(time.perf_counter() - t0, 1)
        users = add_evaluators(ls, evaluators)
        if {"http", "paced"} & set(modes):
            env = {
                "CARETRIAGE_DATABASE_URL": url,
                "CARETRIAGE_SESSION_SECRET": SESSION_SECRET,
                "CARETRIAGE_INFERENCE_WORKERS": "1",  # the model idles: labels only
                "CARETRIAGE_INTRA_OP_SPINNING": "false",
                "CARETRIAGE_LOG_LEVEL": "warning",
            }
            sub = workdir / f"server-{store.dialect}"
            sub.mkdir(parents=True, exist_ok=True)
            with running_server(bundle, sub, threads=1, env_extra=env) as server:
                t0 = time.perf_counter()
                headers = {name: sign_in(server.url, name) for name in users}
                out["sign_in_s"] = round(time.perf_counter() - t0, 2)
                for mode in ("http", "paced"):
                    if mode in modes:
                        out[mode] = run_http(
                            server.url,
                            server.proc.pid,
                            headers,
                            schema,
                            warmup,
                            seconds,
                            rate=rate if mode == "paced" else None,
                        )
        if "store" in modes:
            out["store"] = run_store(ls, users, schema, warmup, seconds)
        out["pool_open_after"] = ls.pool_counts()["open"]
    finally:
        store.dispose()
    out["labels_counted"] = sum(out[m]["labels_total"] for m in modes)
    out["labels_in_store"] = count_labels(url)
    return out


def postgres_reachable(url: str) -> str | None:
    """None if the server answers, else why not."""
    try:
        from sqlalchemy import create_engine, text

        from serving.store import normalize_url

        engine = create_engine(normalize_url(url))
        try:
            with engine.connect() as conn:
                conn.execute(text("select 1"))
        finally:
            engine.dispose()
    except Exception as e:  # any reason: the run goes on without it
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def target_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for backend, res in results.items():
        for mode in MODES:
            if mode not in res:
                continue
            for key, desc, op, limit in TARGETS:
                if key == "labels_per_s" and backend != "sqlite":
                    continue  # the throughput target is set for SQLite
                value = res[mode].get(key)
                ok = value is not None and (value <= limit if op == "<=" else value >= limit)
                rows.append(
                    {
                        "backend": backend,
                        "mode": mode,
                        "target": f"{desc} {op} {limit:g}",
                        "value": value,
                        "met": ok,
                    }
                )
    return rows


def main(argv: list[str] | None = None) -> int:
    from features.bundle import host_summary

    args = parse_args(argv)
    stores = args.stores
    if stores is None:
        why = postgres_reachable(args.postgres_url)
        stores = ["sqlite"] if why else ["sqlite", "postgres"]
        if why:
            print(f"PostgreSQL skipped ({why}); pass --stores postgres to insist")
    host = host_summary()
    machine = report.machine_info()
    print(f"host: {host['cpu']}, {machine['usable_cores']} usable cores")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="caretriage-labeling-bench-") as tmp:
        for kind in stores:
            with database(kind, Path(tmp), args.postgres_url) as url:
                print(f"{kind}: filling {args.items:,} items, then {args.modes} ...", flush=True)
                results[kind] = run_backend(
                    url,
                    bundle=args.bundle,
                    items=args.items,
                    evaluators=args.evaluators,
                    seconds=args.seconds,
                    warmup=args.warmup,
                    modes=args.modes,
                    rate=args.rate,
                    workdir=Path(tmp),
                    seed=args.seed,
                )
    headers = [
        "store",
        "mode",
        "labels/s",
        "next p50 ms",
        "next p99 ms",
        "next max ms",
        "submit p50 ms",
        "submit p99 ms",
        "errors",
    ]
    rows = [
        [
            kind,
            mode,
            r[mode]["labels_per_s"],
            r[mode]["next_p50_ms"],
            r[mode]["next_p99_ms"],
            r[mode]["next_max_ms"],
            r[mode]["submit_p50_ms"],
            r[mode]["submit_p99_ms"],
            r[mode]["errors"],
        ]
        for kind, r in results.items()
        for mode in args.modes
    ]
    load = [round(x, 2) for x in os.getloadavg()]
    print(
        f"\n{args.evaluators} evaluators, {args.items:,} pooled items, "
        f"{args.seconds:g} s measured after {args.warmup:g} s warm-up (paced: "
        f"{args.rate:g} labels/s offered); host CPU: {host['cpu']}, "
        f"{machine['usable_cores']} cores, load average {machine['loadavg_start']} at the "
        f"start, {load} at the end"
    )
    print(report.table(headers, rows))
    targets = target_rows(results)
    for t in targets:
        print(
            f"  {'met   ' if t['met'] else 'MISSED'} {t['backend']}/{t['mode']}: "
            f"{t['target']} (got {t['value']})"
        )
    out = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": host,
        "machine": {**machine, "loadavg_end": load},
        "config": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k not in {"out", "postgres_url"}
        },
        "results": results,
        "targets": targets,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
