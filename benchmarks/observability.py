"""What rate limits and metrics cost a request.

In process: microseconds per call of the rate limiter's checks (the per-request path: the
client's wrong-key budget, then the key's request budget; and a 32-post charge) on
``memory://`` and on Redis, and of the metrics' per-request and per-batch observations (the
batch statistics against prometheus_client's per-value ``observe``). Over HTTP: one client's
``GET /v1/model`` latency on three servers run side by side, limits off, on ``memory://`` and on
Redis, in interleaved rounds (so a busy neighbour on the machine hits all three alike).

    .venv/bin/python -m benchmarks.observability [--requests 400 --rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from benchmarks import report
from benchmarks.http_load import RawClient, running_server

REPO_ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-key-0123456789abcdef"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--calls", type=int, default=2000, help="calls per in-process measurement")
    p.add_argument("--requests", type=int, default=400, help="HTTP requests per server a round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    p.add_argument("--bundle", type=Path, default=REPO_ROOT / "models" / "caretriage-minilm")
    p.add_argument(
        "--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "observability.json"
    )
    return p.parse_args(argv)


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    for _ in range(min(100, calls)):
        fn()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def limiter_costs(storage: str, calls: int) -> dict[str, float]:
    from serving.ratelimit import POSTS, REQUESTS, RateLimiter, key_id
    from serving.settings import Settings

    s = Settings(
        api_keys=[KEY],
        rate_limit="100000000/minute",
        post_rate_limit="100000000/hour",
        rate_limit_storage=storage,
    )
    lim = RateLimiter(s)
    kid = key_id(KEY)
    conn = SimpleNamespace(state=SimpleNamespace())

    def request() -> None:
        lim.check_client("127.0.0.1")
        lim.charge(conn, kid, REQUESTS)  # type: ignore[arg-type]

    out = {
        "request_us": per_call_us(request, calls),
        "posts32_us": per_call_us(lambda: lim.charge(conn, kid, POSTS, 32), calls),  # type: ignore[arg-type]
    }
    lim.limiter.storage.reset()
    return out


def metrics_costs(calls: int) -> dict[str, float]:
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from features.schema import LabelSchema, default_schema_path
    from serving.metrics import CONFIDENCE_EDGES, Metrics

    schema = LabelSchema.load(default_schema_path())
    rng = np.random.default_rng(0)
    probs = {
        t.name: rng.dirichlet(np.ones(len(t.labels)), size=32).astype(np.float32)
        for t in schema.tasks
    }
    m = Metrics(SimpleNamespace(served=None, slot=None))
    # What per-value observations would cost for the same statistics.
    reg = CollectorRegistry()
    hist = Histogram("h", "h", ["task"], buckets=CONFIDENCE_EDGES.tolist(), registry=reg)
    count = Counter("c", "c", ["task", "label"], registry=reg)

    def per_value() -> None:
        for task, p in probs.items():
            labels = schema.task(task).labels
            h = hist.labels(task)
            for row in p:
                b = int(row.argmax())
                h.observe(float(row[b]))
                count.labels(task, labels[b]).inc()

    return {
        "observe_http_us": per_call_us(
            lambda: m.observe_http("GET", "/v1/model", 200, 0.002), calls
        ),
        "observe_scored_32_us": per_call_us(lambda: m.observe_scored(schema, probs), calls),
        "per_value_32_us": per_call_us(per_value, max(calls // 10, 10)),
        "observe_batch_us": per_call_us(lambda: m.observe_batch(32, [0.001] * 4), calls),
        "scrape_us": per_call_us(m.render, max(calls // 20, 10)),
    }


def http_latency(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    common = {
        "CARETRIAGE_INFERENCE_WORKERS": "1",
        "CARETRIAGE_RATE_LIMIT": "100000000/minute",
        "CARETRIAGE_LOG_LEVEL": "warning",
    }
    variants = {
        "off": {"CARETRIAGE_RATE_LIMIT_ENABLED": "false"},
        "memory": {"CARETRIAGE_RATE_LIMIT_ENABLED": "true"},
    }
    if args.redis:
        variants["redis"] = {
            "CARETRIAGE_RATE_LIMIT_ENABLED": "true",
            "CARETRIAGE_RATE_LIMIT_STORAGE": args.redis,
        }
    times: dict[str, list[float]] = {v: [] for v in variants}
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        clients = {}
        for name, env in variants.items():
            (work / name).mkdir()
            server = stack.enter_context(
                running_server(args.bundle, work / name, threads=1, env_extra=common | env)
            )
            clients[name] = stack.enter_context(RawClient(server.url, server.headers))
        for _ in range(args.rounds):
            for name, client in clients.items():
                for i in range(args.requests + 20):
                    t0 = time.perf_counter()
                    status, _ = client.request("GET", "/v1/model")
                    if status != 200:
                        raise RuntimeError(f"{name}: GET /v1/model answered {status}")
                    if i >= 20:  # the first of each round warm the connection back up
                        times[name].append(time.perf_counter() - t0)
    out = {}
    for name, t in times.items():
        t.sort()
        out[name] = {
            "p50_ms": round(statistics.median(t) * 1000, 3),
            "p99_ms": round(t[int(len(t) * 0.99)] * 1000, 3),
            "requests": len(t),
        }
    return out


def redis_up(url: str) -> bool:
    """Whether Redis answers: a limiter on an unreachable one lets everything pass, quickly."""
    try:
        import redis

        return bool(redis.Redis.from_url(url, socket_timeout=2).ping())
    except Exception:
        return False


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not redis_up(args.redis):
        print(f"no Redis at {args.redis}: its variants are left out")
        args.redis = None
    result: dict[str, Any] = {"machine": report.machine_info()}
    result["limiter"] = {"memory": limiter_costs("memory://", args.calls)}
    if args.redis:
        result["limiter"]["redis"] = limiter_costs(args.redis, args.calls // 4)
    result["metrics"] = metrics_costs(args.calls)
    result["http_get_model"] = http_latency(args)
    rows = [
        [f"limiter ({s}): one request's checks", f"{v['request_us']:.1f} µs"]
        for s, v in result["limiter"].items()
    ] + [
        [f"limiter ({s}): charge 32 posts", f"{v['posts32_us']:.1f} µs"]
        for s, v in result["limiter"].items()
    ]
    mm = result["metrics"]
    rows += [
        ["metrics: one HTTP request", f"{mm['observe_http_us']:.1f} µs"],
        ["metrics: one 32-post request's scores", f"{mm['observe_scored_32_us']:.1f} µs"],
        ["  the same, per-value observe()", f"{mm['per_value_32_us']:.1f} µs"],
        ["metrics: one model run", f"{mm['observe_batch_us']:.1f} µs"],
        ["metrics: one scrape", f"{mm['scrape_us']:.0f} µs"],
    ]
    rows += [
        [f"GET /v1/model, limits {n}: p50 / p99", f"{v['p50_ms']:.3f} / {v['p99_ms']:.3f} ms"]
        for n, v in result["http_get_model"].items()
    ]
    print(report.table(["what", "cost"], rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for v in result["limiter"].values():
        for k in v:
            v[k] = round(v[k], 2)
    result["metrics"] = {k: round(v, 2) for k, v in mm.items()}
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
