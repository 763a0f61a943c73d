"""Throughput, latency, padding and footprint of caretriage inference, every variant in one run
on the same posts, compared as ratios (targets are shown, never asserted).

In process: (a) the transformers pipeline in PyTorch fp32 (the baseline), (b) ONNX Runtime fp32
and (c) int8 behind the export checks' predictor, (d) the serving Scorer. Over HTTP: the real
server in a subprocess, 8 concurrent single-post clients, then batch-32 requests; last, the
pipeline's batch-32 calls and batch-32 requests taking turns on the same posts (a second
reading of the headline ratio, shielded from drift but pessimistic for the server).

    .venv/bin/python benchmarks/bench.py [--bundle models/caretriage-minilm] [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: import from the repo root, not benchmarks/
    sys.path[0] = str(REPO_ROOT)

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from typing import Any  # noqa: E402

from benchmarks import http_load, report, variants  # noqa: E402
from benchmarks.measure import (  # noqa: E402
    chunks,
    length_order,
    padding_ratios,
    summarize,
    time_interleaved,
    token_stats,
)
from benchmarks.workload import load_workload  # noqa: E402

log = logging.getLogger("caretriage.bench")
BATCH = 32


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--bundle", type=Path, default=REPO_ROOT / "models" / "caretriage-minilm")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "latest.json")
    p.add_argument("--quick", action="store_true", help="a few iterations (smoke test)")
    p.add_argument(
        "--skip-pytorch",
        action="store_true",
        help="skip what needs torch: the pipeline baseline and exporting the fp32 graph "
        "(fp32 still runs if the bundle ships one or --fp32-onnx is given)",
    )
    p.add_argument("--skip-http", action="store_true", help="in-process variants only")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="shared data (default: $CARETRIAGE_DATA_DIR or ../shared/data)",
    )
    p.add_argument(
        "--base-model",
        default=None,
        help="encoder folder for the baseline and fp32 export (default: the MiniLM package)",
    )
    p.add_argument(
        "--fp32-onnx", type=Path, default=None, help="an fp32 graph to time instead of exporting"
    )
    p.add_argument("--posts-b1", type=int, default=None, help="posts timed one at a time")
    p.add_argument("--posts-b32", type=int, default=None, help="posts timed in batches of 32")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per batch size")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="intra-op threads for torch, ORT and the server (0: each runtime's default)",
    )
    p.add_argument("--clients", type=int, default=8, help="concurrent single-post HTTP clients")
    p.add_argument(
        "--http-client",
        choices=["raw", "httpx"],
        default="raw",
        help="load generator: a raw keep-alive socket (about 0.07 ms of client CPU a request) "
        "or httpx (about 0.7 ms, taken from the cores the server shares)",
    )
    p.add_argument("--requests", type=int, default=None, help="single-post HTTP requests (max)")
    p.add_argument("--seconds", type=float, default=None, help="time cap per HTTP phase")
    a = p.parse_args(argv)
    defaults = {
        "posts_b1": (16, 400),
        "posts_b32": (64, 0),
        "rounds": (1, 3),
        "requests": (48, 2000),
        "seconds": (15.0, 60.0),
    }
    for key, (quick, full) in defaults.items():
        if getattr(a, key) is None:
            setattr(a, key, quick if a.quick else full)
    a.warmup = 1 if a.quick else 3
    a.requests_b32 = 4 if a.quick else 96
    return a


def build_variants(args: argparse.Namespace, bundle: Any, scorer: Any, workdir: Path) -> list[Any]:
    """(a)-(d), each either ready to call or marked skipped with the reason."""
    from serving.inference import Scorer
    from training.config import default_base_model

    out = []
    base = args.base_model
    if args.skip_pytorch:
        out.append(
            variants.skipped(
                "pytorch_pipeline", "PyTorch pipeline fp32", "arrival", "--skip-pytorch"
            )
        )
    else:
        base = base or default_base_model()
        out.append(variants.pipeline_variant(base, bundle.meta.max_length, args.threads))

    try:
        tokenizer = variants.bundle_hf_tokenizer(bundle)
        import training.export.runtime  # noqa: F401  (ort_predictor; the package imports torch)
    except ImportError as e:
        reason = f"training extras missing ({e.name})"
        out.append(variants.skipped("ort_fp32", "ONNX Runtime fp32", "sorted", reason))
        out.append(variants.skipped("ort_int8", "ONNX Runtime int8", "sorted", reason))
    else:
        fp32 = args.fp32_onnx or variants.bundled_fp32(bundle)
        source = "given" if args.fp32_onnx else "bundle"
        if fp32 is None and not args.skip_pytorch:
            base = base or default_base_model()
            log.warning("exporting the fp32 graph of %s (random heads)", base)
            fp32, source = variants.export_fp32(base, bundle, workdir), f"exported from {base}"
        if fp32 is None:
            out.append(
                variants.skipped(
                    "ort_fp32",
                    "ONNX Runtime fp32",
                    "sorted",
                    "no fp32 graph in the bundle and --skip-pytorch",
                )
            )
        else:
            v = variants.ort_variant(
                "ort_fp32", "ONNX Runtime fp32", fp32, bundle, tokenizer, args.threads
            )
            v.info["source"] = source
            if source.startswith("exported"):
                v.info["exported_from"] = base
            out.append(v)
        if bundle.meta.precision == "int8":
            out.append(
                variants.ort_variant(
                    "ort_int8",
                    "ONNX Runtime int8",
                    bundle.onnx_path,
                    bundle,
                    tokenizer,
                    args.threads,
                )
            )
        else:
            out.append(
                variants.skipped(
                    "ort_int8",
                    "ONNX Runtime int8",
                    "sorted",
                    f"bundle precision is {bundle.meta.precision}",
                )
            )
    out.append(variants.scorer_variant(scorer))
    if scorer.workers > 1:  # the same Scorer with one run at a time on every core, to compare
        one = Scorer(bundle, workers=1, intra_op_threads=args.threads)
        out.append(
            variants.scorer_variant(
                one, "scorer_one_run", f"serving Scorer, 1 run x {one.intra_op_threads} threads"
            )
        )
    return out


def measure_in_process(
    args: argparse.Namespace, vs: list[Any], texts: list[str], lengths: list[int]
) -> dict[str, Any]:
    live = [v for v in vs if v.predict is not None]
    sorted_order = length_order(lengths)
    b1 = {v.key: [[t] for t in texts[: args.posts_b1]] for v in live}
    b32 = {v.key: chunks(texts, BATCH, sorted_order if v.order == "sorted" else None) for v in live}
    runners = {v.key: v.predict for v in live}
    lat1 = time_interleaved(runners, b1, args.rounds, args.warmup, "batch 1")
    lat32 = time_interleaved(runners, b32, args.rounds, args.warmup, f"batch {BATCH}")
    out: dict[str, Any] = {}
    for v in vs:
        row: dict[str, Any] = {"label": v.label, "order": v.order, "info": v.info}
        if v.predict is None:
            row["skipped"] = v.skipped
        else:
            row["batch_1"] = summarize(lat1[v.key], sum(len(b) for b in b1[v.key]))
            row["batch_32"] = summarize(lat32[v.key], sum(len(b) for b in b32[v.key]))
        out[v.key] = row
    return out


def measure_http(
    args: argparse.Namespace,
    bundle: Any,
    texts: list[str],
    workdir: Path,
    baseline: variants.Variant | None = None,
) -> dict[str, Any]:
    """Start the real server, load it over loopback, read its memory; always stop it. With a
    ``baseline`` (the pipeline), also time it against the server request by request."""
    topics = bundle.schema_.task("topic").labels
    single_bodies = http_load.score_bodies(texts, 1)
    batch_bodies = http_load.score_bodies(texts, BATCH)
    errors: dict[str, Any] = {}
    with http_load.running_server(bundle.path, workdir, threads=args.threads) as server:
        out: dict[str, Any] = {
            "server_pid": server.proc.pid,
            "start_to_ready_s": round(server.start_to_ready_s, 3),
            "memory_mb": {"ready": server.memory_mb()},
        }
        http_load.put_roster(server, http_load.roster(topics))
        res = _single_post_load(args, server, single_bodies, f"{args.clients} clients")
        out["single"] = _load_summary(res)
        errors["single"] = _errors(res)
        out["batch_32"] = {}
        for clients in (1, 2):
            name = "1_client" if clients == 1 else f"{clients}_clients"
            res = http_load.closed_loop(
                server,
                batch_bodies,
                posts_per_request=BATCH,
                clients=clients,
                max_requests=args.requests_b32,
                max_seconds=args.seconds,
                desc=f"HTTP batch-{BATCH}, {name.replace('_', ' ')}",
                client=args.http_client,
            )
            out["batch_32"][name] = _load_summary(res)
            errors[f"batch_32_{name}"] = _errors(res)
        if baseline is not None and baseline.predict is not None:
            try:
                out["batch_32_paired"] = paired_batch_32(args, server, baseline, texts)
            except RuntimeError as e:
                errors["batch_32_paired"] = {"failed": str(e).splitlines()[0]}
        out["memory_mb"]["after_load"] = server.memory_mb()
    # Server settings worth comparing, each in a fresh server on the same single-post load.
    out["single_variants"] = {}
    for name, env in SERVER_VARIANTS.items():
        with http_load.running_server(
            bundle.path, workdir, threads=args.threads, env_extra=env
        ) as server:
            http_load.put_roster(server, http_load.roster(topics))
            res = _single_post_load(args, server, single_bodies, name)
            out["single_variants"][name] = {"env": env, **_load_summary(res)}
            errors[f"single_{name}"] = _errors(res)
    out["errors"] = {k: v for k, v in errors.items() if v}
    return out


def paired_batch_32(
    args: argparse.Namespace,
    server: http_load.Server,
    baseline: variants.Variant,
    texts: list[str],
) -> dict[str, Any]:
    """The baseline's batch-32 calls and one client's batch-32 requests on the same posts (in
    arrival order), taking turns call by call. Measured minutes apart, the two drift with the
    machine's load (posts/s swung 2x within a run on a shared host); taking turns, a slow spell
    is shared by both sides of the ratio. But on one AMD EPYC host taking turns cut the
    server's posts/s by a fifth against back-to-back requests while the pipeline's did not
    move (presumably each pipeline call streams 90 MB of fp32 weights through the caches the
    next request needs), so this reading is a lower bound, not the headline."""
    assert baseline.predict is not None
    calls = chunks(texts, BATCH)
    bodies = http_load.score_bodies(texts, BATCH)
    rounds = len(calls)  # one call each per round: turn about
    with http_load.poster(server, client=args.http_client) as post:
        lat = time_interleaved(
            {"pipeline": baseline.predict, "http": post},
            {"pipeline": calls, "http": bodies},
            rounds,
            args.warmup,
            f"paired batch-{BATCH}",
        )
    return {
        "rounds": rounds,
        "baseline": baseline.key,
        "pipeline": summarize(lat["pipeline"], len(texts)),
        "http_1_client": summarize(lat["http"], len(texts)),
    }


# Alternatives to the default server settings, measured on the single-post load.
SERVER_VARIANTS: dict[str, dict[str, str]] = {
    # One ONNX run at a time on every core (the default before parallel runs), spinning or not.
    "one_run_all_cores": {"CARETRIAGE_INFERENCE_WORKERS": "1"},
    "one_run_no_spinning": {
        "CARETRIAGE_INFERENCE_WORKERS": "1",
        "CARETRIAGE_INTRA_OP_SPINNING": "0",
    },
    "roster_read_per_request": {"CARETRIAGE_ROSTER_MAX_AGE": "0"},
}


def _single_post_load(
    args: argparse.Namespace, server: http_load.Server, bodies: list[bytes], desc: str
) -> http_load.LoadResult:
    """Warm up, then ``args.clients`` concurrent clients sending one post per request."""
    http_load.closed_loop(
        server,
        bodies,
        posts_per_request=1,
        clients=args.clients,
        max_requests=4 * args.clients,
        max_seconds=args.seconds,
        desc="HTTP warm-up",
        client=args.http_client,
    )
    return http_load.closed_loop(
        server,
        bodies,
        posts_per_request=1,
        clients=args.clients,
        max_requests=args.requests,
        max_seconds=args.seconds,
        desc=f"HTTP single, {desc}",
        client=args.http_client,
    )


def _load_summary(res: http_load.LoadResult) -> dict[str, Any]:
    if not res.latencies_s:
        raise RuntimeError(
            f"no successful requests: statuses {dict(res.statuses)}, failures {res.failures}"
        )
    posts = res.ok * res.posts_per_request
    n = res.ok + sum(n for s, n in res.statuses.items() if s != 200) + res.failures
    return {
        "clients": res.clients,
        "posts_per_request": res.posts_per_request,
        "requests": res.ok,
        **summarize(res.latencies_s, posts, wall_s=res.wall_s),
        "server_cpu_ms_per_request": round(1000 * res.server_cpu_s / n, 2),
        "client_cpu_ms_per_request": round(1000 * res.client_cpu_s / n, 2),
    }


def _errors(res: http_load.LoadResult) -> dict[str, int]:
    out = {str(s): n for s, n in res.statuses.items() if s != 200}
    if res.failures:
        out["transport"] = res.failures
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(k, "1")
    from features.bundle import read_bundle
    from serving.inference import Scorer
    from training.config import default_data_dir

    t_start = time.perf_counter()
    result: dict[str, Any] = {
        "format": 1,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": report.machine_info(),
        "notes": [],
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    bundle = read_bundle(args.bundle)
    result["bundle"] = {
        "path": str(bundle.path.resolve()),
        "name": bundle.meta.name,
        "version": bundle.meta.version,
        "precision": bundle.meta.precision,
        "base_model": bundle.meta.base_model,
        "max_length": bundle.meta.max_length,
        "onnx_mb": round(bundle.onnx_path.stat().st_size / 1e6, 1),
    }
    workload = load_workload(
        args.data_dir or default_data_dir(),
        args.posts_b32 or None,
        normalizer=bundle.meta.normalizer,
    )
    scorer = Scorer(bundle, intra_op_threads=args.threads)
    lengths = [len(ids) for ids in scorer.encode(workload.texts)]
    result["workload"] = {
        "source": workload.source,
        "path": workload.path,
        "note": workload.note,
        "n_texts": len(workload.texts),
        "tokens": token_stats(lengths),
    }
    if workload.note:
        result["notes"].append(workload.note)
    load, cores = result["machine"]["loadavg_start"][0], result["machine"]["usable_cores"] or 1
    if load > 0.5 * cores:
        result["notes"].append(
            f"machine busy at start (load average {load} on {cores} cores): absolute numbers are "
            f"pessimistic and noisy; multi-threaded runtimes suffer most (try --threads 1)"
        )
    result["padding"] = {
        **padding_ratios(lengths, BATCH, bundle.meta.max_length),
        "fixed_length": bundle.meta.max_length,
    }

    rc = 0
    with tempfile.TemporaryDirectory(prefix="ct-bench-") as tmp:
        workdir = Path(tmp)
        vs = build_variants(args, bundle, scorer, workdir)
        fp32 = next(v for v in vs if v.key == "ort_fp32")
        if fp32.info.get("exported_from"):
            result["notes"].append(
                f"ONNX Runtime fp32 is {fp32.info['exported_from']} exported with random heads "
                f"(the bundle says it was trained from {bundle.meta.base_model!r}): the same "
                "network, and cost, as the int8 bundle only if that is the same encoder"
            )
        result["variants"] = measure_in_process(args, vs, workload.texts, lengths)
        # Free the in-process models before the server needs the cores; the pipeline stays for
        # the paired comparison (it idles while the server runs).
        baseline = next((v for v in vs if v.key == "pytorch_pipeline" and v.predict), None)
        del vs, scorer, fp32
        gc.collect()
        if args.skip_http:
            result["http"] = {"skipped": "--skip-http"}
        else:
            try:
                result["http"] = measure_http(args, bundle, workload.texts, workdir, baseline)
            except (RuntimeError, TimeoutError, OSError) as e:
                log.error("HTTP benchmark failed: %s", e)
                result["http"] = {"skipped": f"failed: {str(e).splitlines()[0]}"}
                rc = 1
    result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result["ratios"] = report.ratios(result)
    result["targets"] = report.targets(result)
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(report.render(result))
    print(f"\nwrote {args.out} ({result['seconds']:.0f} s)")
    return rc


if __name__ == "__main__":
    sys.exit(main())
