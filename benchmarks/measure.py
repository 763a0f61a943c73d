"""Timing, statistics and padding arithmetic. Pure functions (apart from the clock), so the
numbers in the report can be unit-tested without a model."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

Batch = list[str]


def percentile_ms(latencies_s: Sequence[float], q: float) -> float:
    """The q-th percentile of latencies given in seconds, in milliseconds."""
    return float(np.percentile(np.asarray(latencies_s, dtype=np.float64), q) * 1000.0)


def summarize(
    latencies_s: Sequence[float], posts: int, wall_s: float | None = None
) -> dict[str, float]:
    """posts/s and latency percentiles for one series of calls.

    Sequential in-process calls leave ``wall_s`` None: throughput is posts over the summed call
    time (harness overhead between calls is not charged to the model). Concurrent HTTP load
    passes its wall time, the only honest denominator when calls overlap.
    """
    if not latencies_s:
        raise ValueError("no timed calls")
    busy = float(wall_s if wall_s is not None else sum(latencies_s))
    return {
        "posts": int(posts),
        "calls": len(latencies_s),
        "seconds": round(busy, 4),
        "posts_per_s": round(posts / busy, 2),
        "calls_per_s": round(len(latencies_s) / busy, 2),
        "p50_ms": round(percentile_ms(latencies_s, 50), 3),
        "p99_ms": round(percentile_ms(latencies_s, 99), 3),
        "mean_ms": round(1000.0 * float(np.mean(latencies_s)), 3),
    }


def chunks(items: Sequence[Any], size: int, order: Sequence[int] | None = None) -> list[list[Any]]:
    """Consecutive groups of ``size`` items, in ``order`` (default: arrival order)."""
    idx = list(order) if order is not None else list(range(len(items)))
    return [[items[i] for i in idx[s : s + size]] for s in range(0, len(idx), size)]


def length_order(lengths: Sequence[int]) -> list[int]:
    """Indices sorted by token length (stable): what length-sorted batching feeds the model."""
    return sorted(range(len(lengths)), key=lambda i: lengths[i])


def padded_tokens(
    lengths: Sequence[int], batch_size: int, order: Sequence[int] | None = None
) -> int:
    """Tokens the model processes when each batch is padded to its longest member."""
    return sum(len(b) * max(b) for b in chunks(list(lengths), batch_size, order))


def padding_ratios(lengths: Sequence[int], batch_size: int, fixed: int) -> dict[str, float]:
    """Tokens processed per useful token for three policies: pad every post to ``fixed``
    (the max length, what a fixed-shape export does), pad each arrival-order batch to its
    longest post (the pipeline's default), pad each batch of length-sorted posts."""
    useful = sum(min(n, fixed) for n in lengths)
    if useful == 0:
        raise ValueError("no tokens")
    clipped = [min(n, fixed) for n in lengths]
    return {
        "batch_size": batch_size,
        "useful_tokens": useful,
        "fixed": round(len(clipped) * fixed / useful, 3),
        "arrival_order": round(padded_tokens(clipped, batch_size) / useful, 3),
        "length_sorted": round(
            padded_tokens(clipped, batch_size, length_order(clipped)) / useful, 3
        ),
    }


def token_stats(lengths: Sequence[int]) -> dict[str, float]:
    a = np.asarray(lengths)
    return {
        "mean": round(float(a.mean()), 1),
        "p50": float(np.percentile(a, 50)),
        "p95": float(np.percentile(a, 95)),
        "max": int(a.max()),
    }


def time_interleaved(
    runners: Mapping[str, Callable[[Batch], object]],
    batches: Mapping[str, Sequence[Batch]],
    rounds: int,
    warmup: int,
    desc: str,
) -> dict[str, list[float]]:
    """Per runner, the latency of each call on its batches (seconds).

    On a shared machine the load drifts, so instead of timing one runner after the other the
    batches are cut into ``rounds`` slices and every runner times slice r before any runner
    starts slice r+1 (the runner order rotates per round). Each runner first makes ``warmup``
    untimed calls.
    """
    names = list(runners)
    for name in names:
        for b in list(batches[name])[:warmup]:
            runners[name](b)
    out: dict[str, list[float]] = {n: [] for n in names}
    total = sum(len(batches[n]) for n in names)
    rounds = max(1, rounds)
    with tqdm(total=total, desc=desc, unit="call", leave=False) as bar:
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                todo = list(batches[name])
                lo, hi = len(todo) * r // rounds, len(todo) * (r + 1) // rounds
                fn = runners[name]
                for b in todo[lo:hi]:
                    t0 = time.perf_counter()
                    fn(b)
                    out[name].append(time.perf_counter() - t0)
                    bar.update()
    return out
