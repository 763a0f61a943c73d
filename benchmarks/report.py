"""The machine description, the derived ratios, the targets and the printed tables.

Targets are displayed, never asserted: on a shared 2-core machine a number below target is a
finding to look at, not a failure.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any

PACKAGES = (
    "onnxruntime",
    "tokenizers",
    "numpy",
    "fastapi",
    "uvicorn",
    "httpx",
    "pydantic",
    "torch",
    "transformers",
)
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")

# (key, description, op, threshold)
TARGETS: tuple[tuple[str, str, str, float], ...] = (
    ("http_b32_vs_pipeline_b32", "HTTP batch-32 posts/s ÷ pipeline batch-32 posts/s", ">=", 4.0),
    ("http_single_p99_ms", "8-client single-post p99 (ms)", "<=", 30.0),
    ("serving_peak_rss_mb", "serving peak RSS, VmHWM (MiB)", "<=", 350.0),
    ("start_to_ready_s", "spawn to /readyz 200 (s)", "<=", 5.0),
)


def _cpuinfo() -> dict[str, Any]:
    model, flags, cores = platform.processor() or "unknown", set(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            phys = ""
            for line in f:
                key, _, value = (s.strip() for s in line.partition(":"))
                if key == "model name":
                    model = value
                elif key == "flags":
                    flags = set(value.split())
                elif key == "physical id":
                    phys = value
                elif key == "core id":
                    cores.add((phys, value))
    except OSError:
        pass
    return {
        "cpu_model": model,
        "physical_cores": len(cores) or None,
        "cpu_flags": [f for f in CPU_FLAGS if f in flags],
    }


def _mem_total_mb() -> float | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024)
    except OSError:
        pass
    return None


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on; load average says how shared the machine was."""
    return {
        **_cpuinfo(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "mem_total_mb": _mem_total_mb(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "versions": {p: _version(p) for p in PACKAGES},
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def _get(d: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _ratio(a: Any, b: Any) -> float | None:
    return (
        round(a / b, 2) if isinstance(a, int | float) and isinstance(b, int | float) and b else None
    )


def ratios(result: dict[str, Any]) -> dict[str, float | None]:
    """The comparisons that matter, as ratios of posts/s (higher is better)."""
    v, h = result["variants"], result.get("http") or {}

    def pps(key: str, batch: str) -> Any:
        return _get(v, key, batch, "posts_per_s")

    out: dict[str, float | None] = {}
    for key in ("ort_fp32", "ort_int8", "scorer"):
        for batch in ("batch_1", "batch_32"):
            out[f"{key}_{batch}_vs_pipeline"] = _ratio(
                pps(key, batch), pps("pytorch_pipeline", batch)
            )
    for batch in ("batch_1", "batch_32"):
        out[f"int8_vs_fp32_{batch}"] = _ratio(pps("ort_int8", batch), pps("ort_fp32", batch))
        out[f"scorer_vs_int8_{batch}"] = _ratio(pps("scorer", batch), pps("ort_int8", batch))
    http_b32 = _get(h, "batch_32", "1_client", "posts_per_s")
    out["http_b32_vs_pipeline_b32"] = _ratio(http_b32, pps("pytorch_pipeline", "batch_32"))
    out["http_b32_2clients_vs_pipeline_b32"] = _ratio(
        _get(h, "batch_32", "2_clients", "posts_per_s"), pps("pytorch_pipeline", "batch_32")
    )
    out["http_b32_vs_scorer_b32"] = _ratio(http_b32, pps("scorer", "batch_32"))
    # The same comparison with both sides taking turns (bench.paired_batch_32): shielded from
    # drift, but pessimistic for the server, whose caches the pipeline flushes between requests.
    out["http_b32_vs_pipeline_b32_paired"] = _ratio(
        _get(h, "batch_32_paired", "http_1_client", "posts_per_s"),
        _get(h, "batch_32_paired", "pipeline", "posts_per_s"),
    )
    # Server variants against the default, on single-post p99 latency (above 1: the default
    # is faster).
    for name, r in (h.get("single_variants") or {}).items():
        out[f"http_single_p99_{name}_vs_default"] = _ratio(
            r.get("p99_ms"), _get(h, "single", "p99_ms")
        )
    return out


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    h = result.get("http") or {}
    values = {
        "http_b32_vs_pipeline_b32": result["ratios"].get("http_b32_vs_pipeline_b32"),
        "http_single_p99_ms": _get(h, "single", "p99_ms"),
        "serving_peak_rss_mb": _get(h, "memory_mb", "after_load", "VmHWM"),
        "start_to_ready_s": h.get("start_to_ready_s"),
    }
    out = []
    for key, desc, op, threshold in TARGETS:
        value = values[key]
        met = None if value is None else (value >= threshold if op == ">=" else value <= threshold)
        out.append(
            {
                "name": key,
                "description": desc,
                "value": value,
                "op": op,
                "target": threshold,
                "met": met,
            }
        )
    return out


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain fixed-width table; numbers right-aligned, None as a dash."""

    def cell(x: Any) -> str:
        if x is None:
            return "-"
        if isinstance(x, float):
            return f"{x:,.1f}" if abs(x) >= 100 else f"{x:.2f}"
        return str(x)

    cells = [[cell(x) for x in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    numeric = [
        all(isinstance(r[i], int | float) or r[i] is None for r in rows)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def render(result: dict[str, Any]) -> str:
    """The human-readable report: variants, HTTP, padding, targets."""
    v, h = result["variants"], result.get("http") or {}
    base = _get(v, "pytorch_pipeline", "batch_32", "posts_per_s")
    rows = []
    for r in v.values():
        if r.get("skipped"):
            rows.append([r["label"], r["order"], None, None, None, None, None, None, None])
            continue
        b1, b32 = r["batch_1"], r["batch_32"]
        rows.append(
            [
                r["label"],
                r["order"],
                b1["posts_per_s"],
                b1["p50_ms"],
                b1["p99_ms"],
                b32["posts_per_s"],
                b32["p50_ms"],
                b32["p99_ms"],
                _ratio(b32["posts_per_s"], base),
            ]
        )

    def b1_row(label: str, r: dict[str, Any]) -> list[Any]:
        return [
            label,
            "arrival",
            r["posts_per_s"],
            r["p50_ms"],
            r["p99_ms"],
            None,
            None,
            None,
            None,
        ]

    def b32_row(label: str, r: dict[str, Any], against: Any) -> list[Any]:
        pps = r["posts_per_s"]
        return [
            label,
            "arrival",
            None,
            None,
            None,
            pps,
            r["p50_ms"],
            r["p99_ms"],
            _ratio(pps, against),
        ]

    single = h.get("single")
    if single:
        rows.append(b1_row(f"HTTP single post, {single['clients']} clients", single))
    for name, r in (h.get("single_variants") or {}).items():
        rows.append(
            b1_row(f"HTTP single post, {r['clients']} clients, {name.replace('_', ' ')}", r)
        )
    for name, r in (h.get("batch_32") or {}).items():
        rows.append(b32_row(f"HTTP batch-32, {name.replace('_', ' ')}", r, base))
    paired = h.get("batch_32_paired")
    if paired:  # its ratios are against the pipeline timed alongside, not the one above
        pipe = paired["pipeline"]
        turns = f"taking turns ({paired['rounds']} turns)"
        rows.append(b32_row(f"PyTorch pipeline fp32, {turns}", pipe, pipe["posts_per_s"]))
        rows.append(
            b32_row(
                f"HTTP batch-32, 1 client, {turns}", paired["http_1_client"], pipe["posts_per_s"]
            )
        )
    out = [
        table(
            [
                "variant",
                "order",
                "b1 posts/s",
                "b1 p50 ms",
                "b1 p99 ms",
                "b32 posts/s",
                "b32 p50 ms",
                "b32 p99 ms",
                "b32 × pipeline",
            ],
            rows,
        )
    ]
    skipped = [f"  {r['label']}: skipped ({r['skipped']})" for r in v.values() if r.get("skipped")]
    if h.get("skipped"):
        skipped.append(f"  HTTP: skipped ({h['skipped']})")
    if skipped:
        out += ["", *skipped]
    if h and not h.get("skipped"):
        mem = h["memory_mb"]
        out += [
            "",
            f"server: start to ready {h['start_to_ready_s']:.2f} s; RSS at ready "
            f"{mem['ready']['VmRSS']:.0f} MiB, after load {mem['after_load']['VmRSS']:.0f} MiB, "
            f"peak {mem['after_load']['VmHWM']:.0f} MiB; non-200: {h['errors'] or 'none'}",
        ]
    p = result["padding"]
    out += [
        "",
        f"padding at batch {p['batch_size']} (tokens processed / useful tokens):",
        table(
            ["policy", "ratio"],
            [
                [f"fixed {p['fixed_length']}", p["fixed"]],
                ["arrival order, pad to longest", p["arrival_order"]],
                ["length-sorted, pad to longest", p["length_sorted"]],
            ],
        ),
    ]
    trows = [
        [
            t["description"],
            t["value"],
            f"{t['op']} {t['target']:g}",
            {True: "yes", False: "NO", None: "n/a"}[t["met"]],
        ]
        for t in result["targets"]
    ]
    out += [
        "",
        "targets (shown, not asserted):",
        table(["target", "measured", "goal", "met"], trows),
    ]
    w = result["workload"]
    m = result["machine"]
    out += [
        "",
        f"workload: {w['n_texts']} posts from {w['source']}"
        + (f" (NOTE: {w['note']})" if w.get("note") else "")
        + f"; tokens mean {w['tokens']['mean']}, p95 {w['tokens']['p95']:.0f}",
        f"machine: {m['cpu_model']}, {m['usable_cores']} usable cores, load average "
        f"{m['loadavg_start']} -> {m.get('loadavg_end')}; client "
        f"({result.get('args', {}).get('http_client', 'httpx')}) and server share it",
        f"intra-op threads: {result.get('args', {}).get('threads') or 'each runtime default'}"
        f" (torch {_get(result['variants'], 'pytorch_pipeline', 'info', 'torch_threads') or '-'})",
    ]
    out += [f"NOTE: {n}" for n in result.get("notes", [])]
    return "\n".join(out)
