"""Routing cost against roster size, in one run: microseconds per post when the roster is
compiled for every post (``rank_agents``, what a one-off caller pays), when it is compiled once
and every post ranked against it (``Roster.rank``, what the scorer does per roster snapshot),
and the one-off compile itself. Posts carry realistic model outputs: a topic, its confidence
(some below the generalist threshold), a negative probability and a priority (some escalated).

    .venv/bin/python -m benchmarks.routing
"""

from __future__ import annotations

import argparse
import json
import random
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from benchmarks import report
from benchmarks.http_load import roster

REPO_ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[20, 200, 1000])
    p.add_argument("--posts", type=int, default=500, help="posts routed per roster size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "routing.json"
    )
    return p.parse_args(argv)


def posts(topics: list[str], n: int, seed: int) -> list[dict[str, Any]]:
    """Routing inputs as the scorer produces them."""
    from serving.schemas import Priority

    rng = random.Random(seed)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    out = []
    for _ in range(n):
        score = rng.randint(0, 100)
        level = "P1" if score >= 80 else "P2" if score >= 60 else "P3" if score >= 30 else "P4"
        prio = Priority(score=score, level=level, respond_by=t0, internal_target=t0, reasons=[])
        out.append(
            {
                "topic": rng.choice(topics),
                "topic_confidence": rng.uniform(0.2, 1.0),
                "p_negative": rng.random(),
                "priority": prio,
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    from features.schema import LabelSchema, default_schema_path
    from serving.priority import load_policy
    from serving.routing import Roster, rank_agents
    from serving.schemas import Agent

    args = parse_args(argv)
    policy = load_policy().routing
    topics = list(LabelSchema.load(default_schema_path()).task("topic").labels)
    work = posts(topics, args.posts, args.seed)
    rows, out = [], {}
    for size in tqdm(args.sizes, desc="roster sizes", unit="roster"):
        agents = tuple(Agent(**a) for a in roster(topics, n=size, seed=args.seed)["agents"])
        t0 = time.perf_counter()
        for post in work:
            rank_agents(agents=agents, policy=policy, **post)
        per_post = (time.perf_counter() - t0) / len(work)
        t0 = time.perf_counter()
        compiled = Roster(agents, policy)
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for post in work:
            compiled.rank(**post)
        reused = (time.perf_counter() - t0) / len(work)
        res = {
            "compiled_per_post_us": round(per_post * 1e6, 1),
            "compiled_once_us_per_post": round(reused * 1e6, 1),
            "compile_us": round(compile_s * 1e6, 1),
            "speedup": round(per_post / reused, 2),
        }
        out[str(size)] = res
        rows.append([size, *res.values()])
    headers = ["agents", "rank_agents µs/post", "Roster.rank µs/post", "compile µs", "ratio"]
    print(report.table(headers, rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"posts": args.posts, "results": out}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
