"""What ``GET /v1/reports`` costs the store: a week of ``--cases`` assigned cases (40 agents,
12 topics, 4 channels, 4 levels; 80% closed, 80% with an outcome, half of those with an NPS
answer), then the report of that week, ``serving.reports.gather`` (the SQL) and ``assemble``
(the arithmetic) timed apart, median of ``--repeats``.

    .venv/bin/python -m benchmarks.reports [--stores sqlite postgresql] [--cases 10000 100000]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.casework import make_store

REPO_ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--stores", nargs="+", default=["sqlite", "postgresql"])
    p.add_argument("--cases", nargs="+", type=int, default=[10_000, 100_000])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "reports.json"
    )
    return p.parse_args(argv)


def fill(store: Any, cases: int, now: datetime, seed: int) -> float:
    """Write ``cases`` assignments of the last 7 days and their outcomes; seconds taken."""
    from sqlalchemy import insert

    from serving.tables import assignments_table, feedback_table

    rng = random.Random(seed)
    t = time.perf_counter()
    for start in range(0, cases, 5000):
        rows, outcomes = [], []
        for i in range(start, min(start + 5000, cases)):
            at = now - timedelta(minutes=rng.uniform(0, 7 * 1440))
            level = rng.choice(["P1", "P2", "P3", "P4"])
            row = {
                "post_id": f"p{i}",
                "agent_id": f"a{rng.randrange(40)}",
                "topic": f"t{rng.randrange(12)}",
                "channel": rng.choice(["twitter", "email", "chat", "facebook"]),
                "level": level,
                "score": 50,
                "predicted": {},
                "text": None,
                "reasons": [],
                "post_created_at": at,
                "respond_by": at + timedelta(minutes=30 * (1 + int(level[1]))),
                "assigned_at": at,
                "closed_at": at + timedelta(hours=3) if rng.random() < 0.8 else None,
            }
            rows.append(row)
            if rng.random() < 0.8:
                minutes = rng.expovariate(1 / 40)
                outcomes.append(
                    {
                        "post_id": row["post_id"],
                        "agent_id": row["agent_id"],
                        "topic": row["topic"],
                        "channel": row["channel"],
                        "first_response_minutes": minutes,
                        "log_response": 0.0,
                        "resolved": rng.random() < 0.7,
                        "csat": rng.randint(1, 5),
                        "nps": rng.randint(0, 10) if rng.random() < 0.5 else None,
                        "corrected": None,
                        "created_at": at,
                        "updated_at": at,
                    }
                )
        with store.engine.begin() as conn:
            conn.execute(insert(assignments_table), rows)
            conn.execute(insert(feedback_table), outcomes)
    return time.perf_counter() - t


def bench(store: Any, cases: int, args: argparse.Namespace) -> dict[str, Any]:
    from serving.reports import assemble, gather

    now = datetime.now(UTC)
    fill_s = fill(store, cases, now, args.seed)
    start = now - timedelta(days=7)
    gathers, assembles = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        cells, answered = gather(store, start, now, now)
        t1 = time.perf_counter()
        rep = assemble(cells, answered, start, now, now)
        gathers.append((t1 - t) * 1000)
        assembles.append((time.perf_counter() - t1) * 1000)
    return {
        "cases": cases,
        "fill_s": fill_s,
        "cells": len(cells),
        "answered": len(answered),
        "gather_ms": statistics.median(gathers),
        "assemble_ms": statistics.median(assembles),
        "total_ms": statistics.median(g + a for g, a in zip(gathers, assembles, strict=True)),
        "p50_minutes": rep.first_response.p50,
        "breach_rate": rep.sla.rate,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results: dict[str, Any] = {
        "machine": report.machine_info(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.stores:
            for cases in args.cases:
                store, drop = make_store(kind, Path(tmp))
                try:
                    results["runs"].append({"store": kind, **bench(store, cases, args)})
                finally:
                    drop()
    rows = [
        [
            r["store"],
            r["cases"],
            r["cells"],
            r["answered"],
            r["gather_ms"],
            r["assemble_ms"],
            r["total_ms"],
        ]
        for r in results["runs"]
    ]
    headers = ["store", "cases/week", "cells", "answered", "gather ms", "assemble ms", "total ms"]
    print(report.table(headers, rows))
    print(f"\nmedian of {args.repeats}; {results['when']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
