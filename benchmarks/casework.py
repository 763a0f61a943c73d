"""What customer context and assignment cost the store, on SQLite and PostgreSQL.

* **Contact lookup**: a history of ``--customers`` customers with five contacts each (on phone,
  email, chat; half also linked to a handle), then ``ContactStore.for_posts`` for requests of
  1, 32 and 256 posts (half looked up by customer id, half by handle): milliseconds per
  request, the one query ``/v1/score`` adds when its posts name customers.
* **Assignment**: ``--clients`` threads assigning ``--assignments`` posts through
  ``AssignmentStore.assign`` (one transaction each: roster read, choice, conditional caseload
  update, insert), then closing them through ``record_feedback``: transactions per second.

    .venv/bin/python -m benchmarks.casework [--stores sqlite postgresql]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks import report

REPO_ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get(
    "CARETRIAGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
T = "lost_luggage"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--stores", nargs="+", default=["sqlite", "postgresql"])
    p.add_argument("--customers", type=int, default=20_000)
    p.add_argument("--lookups", type=int, default=200, help="requests timed per size")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--assignments", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "casework.json"
    )
    return p.parse_args(argv)


def make_store(kind: str, workdir: Path) -> tuple[Any, Callable[[], None]]:
    """An empty, upgraded store and how to drop it."""
    from sqlalchemy import create_engine, text

    from serving.store import Store, normalize_url

    if kind == "sqlite":
        s = Store(f"sqlite:///{workdir / f'casework-{uuid.uuid4().hex[:8]}.db'}")
        s.upgrade()
        return s, s.dispose
    schema = f"bench_casework_{uuid.uuid4().hex[:8]}"
    admin = create_engine(normalize_url(PG_URL))
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    s = Store(PG_URL, schema=schema)
    s.upgrade()

    def drop() -> None:
        s.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

    return s, drop


def bench_lookups(store: Any, args: argparse.Namespace) -> dict[str, Any]:
    from serving.casework_schemas import ContactIn, HandleLink
    from serving.contacts import ContactStore, history_window
    from serving.schemas import Author, Customer, Post

    rng = random.Random(args.seed)
    now = datetime.now(UTC).replace(microsecond=0)
    cs = ContactStore(store)
    t = time.perf_counter()
    for start in range(0, args.customers, 200):
        ids = range(start, min(start + 200, args.customers))
        cs.record(
            [
                ContactIn(
                    customer_id=f"c{i}",
                    channel=rng.choice(["phone", "email", "chat"]),
                    at=now - timedelta(hours=rng.uniform(0, 24 * 20)),
                )
                for i in ids
                for _ in range(5)
            ],
            [HandleLink(handle=f"h{i}", customer_id=f"c{i}") for i in ids if i % 2 == 0],
        )
    fill_s = time.perf_counter() - t

    def request(n: int) -> list[Post]:
        out = []
        for k in range(n):
            i = rng.randrange(args.customers)
            by_handle = k % 2 == 0 and i % 2 == 0
            out.append(
                Post(
                    id=f"p{k}",
                    text="x",
                    created_at=now,
                    author=Author(handle=f"@h{i}") if by_handle else None,
                    customer=None if by_handle else Customer(id=f"c{i}"),
                )
            )
        return out

    sizes: dict[str, Any] = {}
    for n in (1, 32, 256):
        reqs = [request(n) for _ in range(args.lookups if n < 256 else args.lookups // 4)]
        times, found = [], 0
        for posts in reqs:
            since, until = history_window(posts, 48)
            t = time.perf_counter()
            got = cs.for_posts(posts, since, until)
            times.append((time.perf_counter() - t) * 1000)
            found += sum(map(len, got or []))
        times.sort()
        sizes[str(n)] = {
            "requests": len(reqs),
            "p50_ms": statistics.median(times),
            "p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))],
            "contacts_found_per_post": found / (len(reqs) * n),
        }
    return {"contacts": args.customers * 5, "fill_s": fill_s, "per_request": sizes}


def bench_assign(store: Any, args: argparse.Namespace) -> dict[str, Any]:
    from serving.assignments import AssignmentStore
    from serving.casework_schemas import FeedbackIn
    from serving.dispatch import Case
    from serving.priority import load_policy
    from serving.schemas import (
        Actionable,
        Agent,
        Post,
        Prediction,
        Priority,
        Route,
        ScoreResult,
    )

    routing = load_policy().routing
    n_agents = 12
    capacity = args.assignments // n_agents + 1
    store.replace_agents(
        [Agent(id=f"a{i}", skills={T: 0.5 + i / 30}, capacity=capacity) for i in range(n_agents)]
    )
    cw = AssignmentStore(store)
    at = datetime.now(UTC)
    prio = Priority(score=50, level="P2", respond_by=at, internal_target=at, reasons=[])
    p = Prediction(label=T, confidence=0.9, scores={T: 0.9})
    s = Prediction(label="neutral", confidence=0.7, scores={"negative": 0.2, "neutral": 0.7})
    a = Prediction(label="complaint", confidence=0.9, scores={"complaint": 0.9})

    def assign(i: int) -> None:
        pid = f"b{i}"
        result = ScoreResult(
            id=pid,
            topic=p,
            sentiment=s,
            actionability=a,
            actionable=Actionable(label=True, probability=0.9),
            priority=prio,
            route=Route(agents=[]),
        )
        cw.assign(Case(pid, T, 0.9, 0.2, prio), Post(id=pid, text="x"), result, routing)

    def close(i: int) -> None:
        cw.record_feedback(FeedbackIn(post_id=f"b{i}", csat=1 + i % 5, resolved=i % 3 > 0))

    def worker(fn: Callable[[int], None], todo: Iterator[int], lock: threading.Lock) -> None:
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            fn(i)

    out: dict[str, Any] = {"clients": args.clients, "agents": n_agents}
    for name, fn in (("assign", assign), ("feedback", close)):
        shared = (fn, iter(range(args.assignments)), threading.Lock())
        threads = [threading.Thread(target=worker, args=shared) for _ in range(args.clients)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        out[f"{name}_per_s"] = args.assignments / (time.perf_counter() - t)
    loads = [ag.caseload for ag in store.list_agents()]
    out["caseload_after_closing"] = sum(loads)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results: dict[str, Any] = {
        "machine": report.machine_info(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "stores": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.stores:
            store, drop = make_store(kind, Path(tmp))
            try:
                got = bench_lookups(store, args)
                got["assignment"] = bench_assign(store, args)
            finally:
                drop()
            results["stores"][kind] = got
    rows = []
    for kind, got in results["stores"].items():
        size = got["per_request"]
        a = got["assignment"]
        rows.append(
            [
                kind,
                size["1"]["p50_ms"],
                size["32"]["p50_ms"],
                size["32"]["p99_ms"],
                size["256"]["p50_ms"],
                a["assign_per_s"],
                a["feedback_per_s"],
            ]
        )
    headers = [
        "store",
        "lookup 1 p50 ms",
        "lookup 32 p50 ms",
        "32 p99 ms",
        "lookup 256 p50 ms",
        f"assign/s ({args.clients} thr)",
        "feedback/s",
    ]
    print(report.table(headers, rows))
    print(f"\n{args.customers * 5:,} contacts of {args.customers:,} customers; {results['when']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
