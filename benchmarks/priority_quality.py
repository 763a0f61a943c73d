"""Priority quality on gold labels: the airline test split and the complaints corpus's test
fold (fold 0), scored by the shipped bundle (ONNX Runtime, ``serving.inference.Scorer``) and
prioritized by the triage core with the shipped policy, as ``POST /v1/score`` does for a post
with no customer context. How well does the priority order put actionable, negative posts
first (NDCG@100, graded gold: 2 actionable and negative, 1 either, 0 neither), and how precise
are P1/P2, beside arrival order (``tweet_created``; the file order for complaints) and random
orders? The metrics and gold definitions are ``serving/evaluation/ranking.py``.

    .venv/bin/python -m benchmarks.priority_quality [--k 100] [--bundle models/caretriage-minilm]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from benchmarks import care_data, report

REPO_ROOT = Path(__file__).resolve().parent.parent
TARGET_NDCG = 0.9


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--bundle", type=Path, default=REPO_ROOT / "models" / "caretriage-minilm")
    p.add_argument("--policy", type=Path, default=None, help="default: the shipped policy")
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--random-rounds", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--complaints-fold", type=int, default=0)
    p.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "benchmarks" / "results" / "priority_quality.json",
    )
    return p.parse_args(argv)


def render(results: dict[str, Any], k: int) -> str:
    """Two tables: the orders (NDCG, precision of the head), then the levels."""
    rows = []
    for name, r in results.items():
        top = r["levels"]["P1+P2"]["posts"]
        for order in ("priority", "arrival", "random"):
            o = r["orders"][order]
            if order == "random":
                ndcg_k = f"{o[f'ndcg@{k}']['mean']:.3f} ± {o[f'ndcg@{k}']['sd']:.3f}"
                ndcg = f"{o['ndcg']['mean']:.3f} ± {o['ndcg']['sd']:.3f}"
            else:
                ndcg_k, ndcg = f"{o[f'ndcg@{k}']:.3f}", f"{o['ndcg']:.3f}"
            head = o["head"] or {}
            rows.append(
                [
                    name,
                    order,
                    ndcg_k,
                    ndcg,
                    top,
                    head.get("precision_actionable"),
                    head.get("precision_negative"),
                ]
            )
    orders = report.table(
        [
            "data",
            "order",
            f"NDCG@{k}",
            "NDCG (all)",
            "head n",
            "head prec. actionable",
            "head prec. negative",
        ],
        rows,
    )
    level_rows = []
    for name, r in results.items():
        for lv, x in r["levels"].items():
            level_rows.append(
                [
                    name,
                    lv,
                    x["posts"],
                    x["precision_actionable"],
                    x["precision_negative"],
                    x["precision_both"],
                    x["recall_both"],
                ]
            )
    levels = report.table(
        [
            "data",
            "level",
            "posts",
            "prec. actionable",
            "prec. negative",
            "prec. both",
            "recall both",
        ],
        level_rows,
    )
    return f"{orders}\n\n{levels}"


def main(argv: list[str] | None = None) -> int:
    from serving.evaluation import offline, ranking
    from serving.inference import Scorer
    from serving.priority import load_policy
    from serving.schemas import Channel, Post

    args = parse_args(argv)
    machine = report.machine_info()
    policy = load_policy(args.policy)
    scorer = Scorer.from_dir(args.bundle)
    scorer.warmup()

    air = care_data.airline(("test",))
    comp = care_data.complaints(args.complaints_fold)
    sets: dict[str, tuple[list[Post], list[Any], list[ranking.Gold]]] = {
        "airline test": (
            [
                Post(id=t.tweet_id, text=t.text, channel=Channel.twitter, created_at=t.created_at)
                for t in air
            ],
            [t.created_at for t in air],
            [ranking.airline_gold(t.sentiment, t.negativereason) for t in air],
        ),
        f"complaints fold {args.complaints_fold}": (
            [
                Post(
                    id=f"{i}-{t.tweet_id}",
                    text=t.text,
                    channel=Channel.twitter,
                    created_at=care_data.UNDATED + i * care_data.ONE_SECOND,
                )
                for i, t in enumerate(comp)
            ],
            list(range(len(comp))),
            [ranking.complaints_gold(t.complaint, t.domain, t.kind) for t in comp],
        ),
    }
    results: dict[str, Any] = {}
    timings: dict[str, Any] = {}
    for name, (posts, arrival, gold) in sets.items():
        t0 = time.perf_counter()
        probs = offline.predict(scorer, [p.text for p in posts])
        t1 = time.perf_counter()
        scored = offline.prioritize(posts, probs, scorer.bundle.schema_, policy)
        t2 = time.perf_counter()
        results[name] = ranking.evaluate(
            [r.priority.score for r in scored],
            [r.priority.level for r in scored],
            arrival,
            gold,
            k=args.k,
            random_rounds=args.random_rounds,
            seed=args.seed,
        )
        timings[name] = {
            "posts": len(posts),
            "model_s": round(t1 - t0, 3),
            "triage_s": round(t2 - t1, 3),
        }
    scorer.close()

    print(render(results, args.k))
    targets = {
        name: {
            "ndcg@k": r["orders"]["priority"][f"ndcg@{args.k}"],
            "target": TARGET_NDCG,
            "met": r["orders"]["priority"][f"ndcg@{args.k}"] >= TARGET_NDCG,
        }
        for name, r in results.items()
    }
    for name, t in targets.items():
        print(
            f"target NDCG@{args.k} >= {TARGET_NDCG}: {name} {t['ndcg@k']:.3f} "
            f"({'met' if t['met'] else 'missed'})"
        )
    out = {
        "bundle": str(args.bundle),
        "model_version": scorer.meta.version,
        "policy": str(args.policy or "shipped default"),
        "k": args.k,
        "results": results,
        "targets": targets,
        "timings": timings,
        "machine": machine,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
