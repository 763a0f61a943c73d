"""Which bundle to serve: speed beside recorded accuracy, for every bundle given, in one run on
the same posts and the same host. A helpdesk choosing between the fast shipped student (MiniLM
int8) and a slower, more accurate teacher (all-mpnet-base-v2) needs both sides of the trade in
one table; speeds from different runs or hosts do not compare (see benchmarks/README.md).

Each bundle is loaded through serving's ``Scorer`` with the server's settings (``CARETRIAGE_*``
from the environment, defaults otherwise: the same thread layout for all), warmed up, then
timed at batch 32 (posts/s) and on single posts (p50/p95), the bundles taking turns round by
round so that drift on a shared machine hits each alike. The accuracy columns are what each
bundle records (``bundle.json`` metrics, on its own test splits): comparable only between
bundles with the same labels, which the ``labels`` column says.

    .venv/bin/python -m benchmarks.choose --bundle models/caretriage-minilm \
        --bundle artifacts/teacher/bundle [--quick]
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks import report
from benchmarks.http_load import proc_memory_mb
from benchmarks.measure import chunks, percentile_ms, summarize, time_interleaved, token_stats
from benchmarks.workload import airline_texts, synthetic_texts

if TYPE_CHECKING:
    from features.bundle import Bundle
    from serving.inference import Scorer

REPO_ROOT = Path(__file__).resolve().parent.parent
BATCH = 32
# (JSON key, column, task, metric in bundle.json): the three a helpdesk weighs.
METRICS = (
    ("sentiment_macro_f1", "sentiment F1", "sentiment", "macro_f1"),
    ("topic_macro_f1", "topic F1", "topic", "macro_f1"),
    ("complaint_vs_rest_macro_f1", "complaint F1", "actionability", "complaint_vs_rest_macro_f1"),
)
log = logging.getLogger("caretriage.bench")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--bundle",
        type=Path,
        action="append",
        required=True,
        help="a bundle folder; repeat for each (the first is the 1.00x reference)",
    )
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "choose.json")
    p.add_argument("--quick", action="store_true", help="a few posts (smoke test)")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="shared data (default: $CARETRIAGE_DATA_DIR or ../shared/data)",
    )
    p.add_argument("--posts-b1", type=int, default=None, help="posts timed one at a time")
    p.add_argument("--posts-b32", type=int, default=None, help="posts timed in batches of 32")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per batch size")
    a = p.parse_args(argv)
    # rounds: enough turns that a slow spell is shared, few enough that each turn runs a
    # model several calls in a row, as a server does (switching models flushes the caches).
    defaults = {"posts_b1": (16, 400), "posts_b32": (64, 0), "rounds": (1, 6)}
    for key, (quick, full) in defaults.items():
        if getattr(a, key) is None:
            setattr(a, key, quick if a.quick else full)
    a.warmup = 1 if a.quick else 3
    return a


def scorer_kwargs() -> dict[str, Any]:
    """The Scorer settings ``serving.served.load_served`` passes, read as the server reads them
    (environment, else defaults); the placeholder key only satisfies the settings' check."""
    from serving.settings import Settings

    s = Settings(api_keys=["choose-benchmark-placeholder-key"])
    return {
        "max_batch_tokens": s.max_batch_tokens,
        "max_batch_size": s.max_batch_size,
        "workers": s.inference_workers,
        "intra_op_threads": s.intra_op_threads,
        "intra_op_spinning": s.intra_op_spinning,
    }


def workload_texts(data_dir: Path, limit: int | None) -> tuple[list[str], str, str | None]:
    """Raw airline test tweets (each Scorer normalizes them with its own bundle's normalizer,
    as the server does), else synthetic ones; with their source and a note when synthetic."""
    texts = airline_texts(data_dir)
    if texts:
        return (texts[:limit] if limit else texts), "airline/test.csv", None
    note = f"{data_dir}/airline/test.csv not found: synthetic tweets stand in for real ones"
    return synthetic_texts(limit or 1449), "synthetic", note


def _reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0), so the peak read after a
    load is that load's; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return False
    return True


def load(path: Path, kwargs: dict[str, Any]) -> tuple[Bundle, Scorer, dict[str, Any]]:
    """Read, load and warm one bundle as the server does; the RSS it added and its peak."""
    from features.bundle import read_bundle
    from serving.inference import Scorer

    gc.collect()
    peak_ok = _reset_peak_rss()
    before = proc_memory_mb(os.getpid())
    t0 = time.perf_counter()
    bundle = read_bundle(path)
    scorer = Scorer(bundle, **kwargs)
    scorer.warmup()
    load_s = time.perf_counter() - t0
    after = proc_memory_mb(os.getpid())
    mem = {
        "load_s": round(load_s, 2),
        "rss_growth_mb": round(after["VmRSS"] - before["VmRSS"], 1),
        "peak_rss_growth_mb": round(after["VmHWM"] - before["VmRSS"], 1) if peak_ok else None,
    }
    return bundle, scorer, mem


def bundle_info(bundle: Bundle, first: Bundle) -> dict[str, Any]:
    """What the bundle is, its size on disk, its recorded metrics and how its labels differ
    from the first bundle's (tasks missing or with other labels)."""
    files = [f for f in bundle.path.iterdir() if f.is_file()]
    ours = {t.name: list(t.labels) for t in bundle.schema_.tasks}
    ref = {t.name: list(t.labels) for t in first.schema_.tasks}
    return {
        "path": str(bundle.path),
        "name": bundle.meta.name,
        "version": bundle.meta.version,
        "base_model": bundle.meta.base_model,
        "precision": bundle.meta.precision,
        "max_length": bundle.meta.max_length,
        "size_mb": round(sum(f.stat().st_size for f in files) / 1e6, 1),
        "onnx_mb": round(bundle.onnx_path.stat().st_size / 1e6, 1),
        "metrics": {k: bundle.meta.metrics.get(task, {}).get(m) for k, _, task, m in METRICS},
        "labels_differ": sorted(t for t in ref.keys() | ours.keys() if ref.get(t) != ours.get(t)),
    }


def measure(
    args: argparse.Namespace, scorers: dict[str, Scorer], texts: list[str]
) -> dict[str, dict[str, Any]]:
    """Batch-32 calls (arrival order, as 32-post requests reach the Scorer) and single posts,
    every bundle on the same posts, taking turns in ``args.rounds`` rounds."""
    runners = {k: s.predict for k, s in scorers.items()}
    b1 = {k: [[t] for t in texts[: args.posts_b1]] for k in scorers}
    b32 = {k: chunks(texts, BATCH) for k in scorers}
    lat1 = time_interleaved(runners, b1, args.rounds, args.warmup, "batch 1")
    lat32 = time_interleaved(runners, b32, args.rounds, args.warmup, f"batch {BATCH}")
    out = {}
    for k in scorers:
        single = summarize(lat1[k], len(b1[k]))
        single["p95_ms"] = round(percentile_ms(lat1[k], 95), 3)
        out[k] = {"batch_1": single, "batch_32": summarize(lat32[k], len(texts))}
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def render(result: dict[str, Any]) -> str:
    """One row per bundle, then the caveats."""
    rows = []
    first = result["bundles"][0]["batch_32"]["posts_per_s"]
    for r in result["bundles"]:
        b1, b32 = r["batch_1"], r["batch_32"]
        differ = r["labels_differ"]
        rows.append(
            [
                r["path"],
                r["precision"],
                r["size_mb"],
                r["memory"]["peak_rss_growth_mb"],
                b32["posts_per_s"],
                b1["p50_ms"],
                b1["p95_ms"],
                *(r["metrics"][k] for k, _, _, _ in METRICS),
                "differ: " + ", ".join(differ) if differ else "same",
                _ratio(b32["posts_per_s"], first),
            ]
        )
    headers = [
        "bundle",
        "precision",
        "size MB",
        "load peak +MiB",
        "b32 posts/s",
        "b1 p50 ms",
        "b1 p95 ms",
        *(col for _, col, _, _ in METRICS),
        "labels",
        "b32 × first",
    ]
    w, m, s = result["workload"], result["machine"], result["scorer_settings"]
    out = [
        report.table(headers, rows),
        "",
        "metrics: percent, as each bundle records them on its own test splits (complaint F1: "
        "actionability, complaint vs rest); comparable only where the labels are the same",
        f"workload: {w['n_texts']} posts from {w['source']} ({w['posts_b1']} single, "
        f"{w['rounds']} interleaved rounds); tokens (first bundle) mean {w['tokens']['mean']}, "
        f"p95 {w['tokens']['p95']:.0f}",
        f"scorer: {s['workers']} runs x {s['intra_op_threads']} threads, batches of "
        f"<= {s['max_batch_size']} posts (the server's settings)",
        f"machine: {m['cpu_model']} ({', '.join(m['cpu_flags']) or 'no listed flags'}; int8 "
        f"{m['int8_isa']}), {m['usable_cores']} usable cores, load average "
        f"{m['loadavg_start']} -> {m.get('loadavg_end')}",
    ]
    out += [f"NOTE: {n}" for n in result["notes"]]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from features.bundle import host_summary
    from training.config import default_data_dir

    t_start = time.perf_counter()
    machine = report.machine_info() | {"int8_isa": host_summary()["int8_isa"]}
    kwargs = scorer_kwargs()
    texts, source, note = workload_texts(
        args.data_dir or default_data_dir(), args.posts_b32 or None
    )
    notes = [note] if note else []
    load_avg, cores = machine["loadavg_start"][0], machine["usable_cores"] or 1
    if load_avg > 0.5 * cores:
        notes.append(
            f"machine busy at start (load average {load_avg} on {cores} cores): absolute "
            "numbers are pessimistic and noisy; read the ratios"
        )

    rows: list[dict[str, Any]] = []
    scorers: dict[str, Scorer] = {}
    first: Bundle | None = None
    for i, path in enumerate(args.bundle):
        bundle, scorer, mem = load(path, kwargs)
        first = first or bundle
        row = {**bundle_info(bundle, first), "memory": mem}
        if scorer.self_check is not None:
            row["self_check_passed"] = scorer.self_check["passed"]
        rows.append(row)
        scorers[f"{i}:{bundle.meta.name}"] = scorer  # paths or names may repeat
    if any(r["labels_differ"] for r in rows):
        notes.append("labels differ from the first bundle's: those metrics are not comparable")
    first_scorer = next(iter(scorers.values()))
    # As resolved (0 in the settings: shared out among the usable cores), the same for all.
    settings = kwargs | {
        "workers": first_scorer.workers,
        "intra_op_threads": first_scorer.intra_op_threads,
    }
    lengths = [len(ids) for ids in first_scorer.encode(texts)]
    timings = measure(args, scorers, texts)
    for row, key in zip(rows, scorers, strict=True):
        row.update(timings[key])
        row["b32_vs_first"] = _ratio(
            row["batch_32"]["posts_per_s"], rows[0]["batch_32"]["posts_per_s"]
        )
    for s in scorers.values():
        s.close()

    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result = {
        "format": 1,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine,
        "scorer_settings": settings,
        "workload": {
            "source": source,
            "n_texts": len(texts),
            "posts_b1": min(args.posts_b1, len(texts)),
            "rounds": args.rounds,
            "tokens": token_stats(lengths),
        },
        "bundles": rows,
        "notes": notes,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        | {"bundle": [str(p) for p in args.bundle]},
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(render(result))
    print(f"\nwrote {args.out} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
