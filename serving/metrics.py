"""Prometheus metrics: one ``CollectorRegistry`` per app, so several apps in one process (tests)
never collide, and nothing registers in the global one.

What is measured: HTTP requests by route template (never the raw path, whose ids would make a
series per agent) and status, with latencies; posts scored and posts per request; per model
run its posts and how long their requests waited in the queue for it (a hook the batcher calls
from its run thread); the queue's depth and the served model, read at scrape time; and, per
task, the distribution of the top label's probability and a count per predicted label, so that
drift shows as a shift in either. The score statistics are kept in NumPy arrays and updated a
whole batch at a time: per-value ``Histogram.observe`` calls cost ~0.35 ms for a request of 32
posts (3 tasks), the arrays ~20 µs.

``GET /metrics`` needs an admin key (or an admin session); ``CARETRIAGE_METRICS_PORT`` also
serves the registry, without auth, on a port of its own for a scraper inside the network.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client import generate_latest as render
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from starlette.routing import Match
from starlette.types import Scope

from features.schema import LabelSchema

log = logging.getLogger("caretriage.serving")

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Up to past the default queue deadline (3 s), so the wait's tail can be read against it.
WAIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10)
POST_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
CONFIDENCE_EDGES = np.round(np.arange(0.1, 1.01, 0.05), 2)  # top-label probability: 0.1 .. 1.0
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "<unmatched>"  # requests no route matched: one series, however many paths are tried


class ScoreStats:
    """Per task: a histogram of the top label's probability and a count per predicted label,
    accumulated from whole batches (a collector: exposed as of the scrape)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[str, np.ndarray] = {}  # per task: counts per bucket (not cumulative)
        self._sums: dict[str, float] = {}
        self._labels: dict[tuple[str, str], int] = {}

    def observe(self, schema: LabelSchema, probs: Mapping[str, np.ndarray]) -> None:
        """Count one batch: ``probs[task]`` is posts x labels, in the schema's label order."""
        names = set(schema.names)
        for task, p in probs.items():
            if task not in names or len(p) == 0:
                continue
            labels = schema.task(task).labels
            best = p.argmax(axis=1)
            top = p[np.arange(len(p)), best]
            # Bucket i holds values in (edge[i-1], edge[i]]; past the last edge: +Inf.
            idx = np.searchsorted(CONFIDENCE_EDGES, top, side="left")
            counts = np.bincount(idx, minlength=len(CONFIDENCE_EDGES) + 1)
            per_label = np.bincount(best, minlength=len(labels))
            total = float(top.sum())
            with self._lock:
                held = self._buckets.get(task)
                self._buckets[task] = counts if held is None else held + counts
                self._sums[task] = self._sums.get(task, 0.0) + total
                for label, n in zip(labels, per_label.tolist(), strict=False):
                    if n:
                        key = (task, label)
                        self._labels[key] = self._labels.get(key, 0) + n

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            buckets = {t: c.copy() for t, c in self._buckets.items()}
            sums = dict(self._sums)
            labels = dict(self._labels)
        hist = HistogramMetricFamily(
            "caretriage_prediction_confidence",
            "Probability of the predicted (top) label, per task.",
            labels=["task"],
        )
        les = [f"{e:g}" for e in CONFIDENCE_EDGES.tolist()] + ["+Inf"]
        for task in sorted(buckets):
            cumulative = np.cumsum(buckets[task]).tolist()
            hist.add_metric([task], list(zip(les, cumulative, strict=True)), sums[task])
        yield hist
        count = CounterMetricFamily(
            "caretriage_predictions",
            "Posts per task and predicted label.",
            labels=["task", "label"],
        )
        for (task, label), n in sorted(labels.items()):
            count.add_metric([task, label], n)
        yield count


class _StateCollector:
    """Read at scrape time from the app's state: the queue and the model serving now (both
    change with a model swap, which this module need not hear about)."""

    def __init__(self, state: Any) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        served = getattr(self._state, "served", None)
        depth = served.batcher.pending if served is not None else 0
        yield GaugeMetricFamily(
            "caretriage_queue_posts", "Posts waiting for the model or in it now.", value=depth
        )
        info = InfoMetricFamily("caretriage_model", "The model serving now.", labels=[])
        if served is not None:
            meta = served.bundle.meta
            info.add_metric([], {"name": meta.name, "version": meta.version})
        yield info
        slot = getattr(self._state, "slot", None)
        yield CounterMetricFamily(
            "caretriage_model_swaps",
            "Models swapped in since start.",
            value=getattr(slot, "swaps", 0),
        )


class Metrics:
    """One app's metrics. Every ``observe_*`` is thread-safe (the batcher's thread calls
    ``observe_batch``)."""

    def __init__(self, state: Any) -> None:
        self.registry = r = CollectorRegistry()
        self.http_requests = Counter(
            "caretriage_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_latency = Histogram(
            "caretriage_http_request_duration_seconds",
            "Time from a request's arrival to its response, by method and route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.posts_scored = Counter(
            "caretriage_posts_scored", "Posts scored by /v1/score.", registry=r
        )
        self.request_posts = Histogram(
            "caretriage_score_request_posts",
            "Posts per /v1/score request.",
            buckets=POST_BUCKETS,
            registry=r,
        )
        self.batch_posts = Histogram(
            "caretriage_batch_posts",
            "Posts per model run (the requests the batcher took together).",
            buckets=POST_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "caretriage_queue_wait_seconds",
            "How long each request's posts waited in the queue before their model run began.",
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.rate_limited = Counter(
            "caretriage_rate_limited",
            "Requests refused (429) by a rate limit, by budget and API key id.",
            ["kind", "key"],
            registry=r,
        )
        self.scores = ScoreStats()
        r.register(self.scores)
        r.register(_StateCollector(state))

    def observe_http(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in _METHODS else "OTHER"
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_latency.labels(method, route).observe(seconds)

    def observe_scored(self, schema: LabelSchema, probs: Mapping[str, np.ndarray]) -> None:
        """One /v1/score request's posts and their predictions."""
        n = len(next(iter(probs.values()))) if probs else 0
        self.posts_scored.inc(n)
        self.request_posts.observe(n)
        self.scores.observe(schema, probs)

    def observe_batch(self, posts: int, waits: Sequence[float]) -> None:
        """Called by the batcher as a run starts: its posts, and per request taken the seconds
        since it was queued."""
        self.batch_posts.observe(posts)
        for w in waits:
            self.queue_wait.observe(w)

    def rate_limited_by(self, kind: str, key: str) -> None:
        self.rate_limited.labels(kind, key).inc()

    def render(self) -> bytes:
        return render(self.registry)


def route_template(scope: Scope) -> str:
    """The path pattern the request matched (``/v1/agents/{agent_id}``), or one fixed name. A
    request answered before routing (refused by a middleware, e.g. admission's 503) is matched
    against the app's routes here."""
    route = scope.get("route")
    if route is None:
        routes = getattr(getattr(scope.get("app"), "router", None), "routes", ())
        route = next((r for r in routes if r.matches(scope)[0] is not Match.NONE), None)
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else UNMATCHED


def start_server(metrics: Metrics, host: str, port: int) -> Any:
    """Serve the registry on ``host:port`` from a daemon thread (prometheus_client's WSGI
    server); returns the server, whose ``shutdown()`` stops it."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    log.info("metrics on http://%s:%d/metrics", host, server.server_port)
    return server
