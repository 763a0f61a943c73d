"""Admission control (serving/admission.py): the policy, the service-time estimate, the shed
log's rate, the batcher's refusals, and the app refusing /v1/score before reading its body."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient

from serving.admission import RETRY_AFTER_MAX_S, RateLog, ServiceTime, decide, retry_after
from serving.app import create_app
from serving.batcher import Batcher
from serving.errors import Overloaded
from serving.settings import Settings
from tests.test_batcher import FakeScorer

KEY = "admission-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}


def posts(*texts: str) -> dict:
    return {"posts": [{"id": f"p{i}", "text": t} for i, t in enumerate(texts)]}


@pytest.mark.parametrize(
    ("pending", "posts", "per_post_s", "deadline_s", "max_queue", "admit", "retry"),
    [
        # an empty queue admits anything, even on a slow model
        (0, 256, 0.5, 1.0, 2048, True, 0),
        # within the deadline: 100 posts x 5 ms = 0.5 s < 1 s
        (100, 32, 0.005, 1.0, 2048, True, 0),
        # exactly at the deadline is still admitted
        (200, 1, 0.005, 1.0, 2048, True, 0),
        # over it: 2048 posts x 5 ms = 10.2 s (the old queue at 64 clients x 32 posts)
        (2048 - 32, 32, 0.005, 1.0, 2048, False, 10),
        (201, 1, 0.005, 1.0, 2048, False, 1),
        # nothing measured yet: only the bound in posts applies
        (2000, 48, None, 1.0, 2048, True, 0),
        (2000, 49, None, 1.0, 2048, False, 1),
        # deadline 0: off, the bound in posts alone (the old behaviour)
        (2000, 48, 0.005, 0.0, 2048, True, 0),
        (2000, 49, 0.005, 0.0, 2048, False, 10),
        # the bound in posts holds even within the deadline
        (300, 1, 0.0001, 1.0, 300, False, 1),
        # Retry-After is capped
        (2000, 1, 1.0, 1.0, 4096, False, RETRY_AFTER_MAX_S),
    ],
)
def test_decide(pending, posts, per_post_s, deadline_s, max_queue, admit, retry):
    v = decide(
        pending=pending,
        posts=posts,
        per_post_s=per_post_s,
        deadline_s=deadline_s,
        max_queue=max_queue,
    )
    assert v.admit is admit
    assert v.retry_after_s == retry
    assert v.wait_s == pytest.approx(pending * (per_post_s or 0.0))
    assert bool(v.reason) is not admit


@pytest.mark.parametrize(
    ("wait", "deadline", "expected"),
    [(0.0, 1.0, 1), (1.5, 1.0, 1), (2.1, 1.0, 2), (10.2, 1.0, 10), (999.0, 1.0, 30)],
)
def test_retry_after_is_the_excess_wait_rounded_up(wait, deadline, expected):
    assert retry_after(wait, deadline) == expected


def test_service_time_weights_runs_by_their_posts_and_forgets_old_ones():
    s = ServiceTime(alpha=0.5)
    assert s.per_post_s is None
    s.observe(0.010, 1)  # a lone post: 10 ms
    s.observe(0.064, 32)  # a batch: 2 ms a post, and 32 times the weight
    assert s.per_post_s == pytest.approx((0.005 + 0.064) / (0.5 + 32))
    for _ in range(20):
        s.observe(0.128, 32)  # the model slowed down: 4 ms a post
    assert s.per_post_s == pytest.approx(0.004, rel=1e-3)
    s.observe(0.0, 0)  # an empty run changes nothing
    assert s.per_post_s == pytest.approx(0.004, rel=1e-3)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rate_log_logs_100_events_in_two_lines(caplog):
    clock = Clock()
    logger = logging.getLogger("caretriage.test.ratelog")
    rate = RateLog(logger, "shed %d requests in the last %.0f s", interval_s=10, clock=clock)
    with caplog.at_level(logging.WARNING, logger=logger.name):
        for _ in range(100):  # no event loop: the next record past the interval flushes
            rate.record("over deadline")
            clock.now += 0.05
        assert len(caplog.records) == 1  # the first, at once
        clock.now += 10
        rate.record("over deadline")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "shed 1 requests in the last 0 s (over deadline)",
        "shed 100 requests in the last 15 s (over deadline)",
    ]
    assert rate.total == 101


def test_rate_log_flushes_a_tail_from_a_timer(caplog):
    logger = logging.getLogger("caretriage.test.ratelog")

    async def main() -> None:
        rate = RateLog(logger, "shed %d requests in the last %.0f s", interval_s=0.2)
        for _ in range(50):
            rate.record()
        await asyncio.sleep(0.5)  # no further event: the timer logs the 49 left over

    with caplog.at_level(logging.WARNING, logger=logger.name):
        asyncio.run(main())
    counts = [r.getMessage().split()[1] for r in caplog.records]
    assert counts == ["1", "49"]


def test_batcher_refuses_past_its_deadline_with_retry_after():
    async def main() -> tuple[Overloaded, int]:
        s = FakeScorer()
        b = Batcher(s, max_queue=10_000, max_batch_tokens=10_000, deadline_s=0.05)
        b.start()
        b.service.observe(0.01, 1)  # as if the model had taken 10 ms a post
        s.gate.clear()  # hold the next run: its posts stay pending
        held = asyncio.create_task(b.submit(["x"] * 20))  # 20 posts x ~10 ms > 50 ms
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded) as refused:
            await b.submit(["y"])
        sheds = b.sheds.total
        s.gate.set()
        await held
        await b.submit(["z"])  # drained: admitted again
        await b.stop()
        return refused.value, sheds

    exc, sheds = asyncio.run(asyncio.wait_for(main(), 10))
    assert exc.status_code == 503 and exc.error == "overloaded"
    assert "deadline" in exc.message
    assert int(exc.headers["Retry-After"]) >= 1
    assert sheds == 1


def test_batcher_measures_service_time_on_its_runs():
    async def main() -> float | None:
        b = Batcher(FakeScorer(), max_queue=100, max_batch_tokens=100)
        b.start()
        await b.submit(["ab", "cd"])
        await b.stop()
        return b.service.per_post_s

    per_post = asyncio.run(asyncio.wait_for(main(), 10))
    assert per_post is not None and per_post > 0


@pytest.fixture(scope="module")
def app_client(onnx_bundle, tmp_path_factory) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("admission")
    s = Settings(
        api_keys=[KEY],
        model_dir=onnx_bundle,
        database_url=f"sqlite:///{tmp / 'admission.db'}",
        max_queue=300,
        queue_deadline_ms=1000,  # the figures below assume a 1 s deadline, not the default
    )
    with TestClient(create_app(s)) as c:
        yield c


def recording_body(payload: bytes, reads: list[int]) -> Iterator[bytes]:
    """A streamed request body (the test client sends a generator's chunks only as the app
    asks for them) that records in ``reads`` each chunk the server read."""
    reads.append(len(payload))
    yield payload


@contextmanager
def overloaded(client: TestClient, pending: int, per_post_s: float) -> Iterator[Batcher]:
    """Pretend ``pending`` posts are queued on a model measured at ``per_post_s`` a post;
    the batcher is restored after."""
    batcher = client.app.state.served.batcher
    saved = batcher.service
    batcher.service = ServiceTime()
    batcher.service.observe(per_post_s, 1)
    batcher._pending += pending
    try:
        yield batcher
    finally:
        batcher._pending -= pending
        batcher.service = saved


def test_over_the_deadline_score_is_refused_before_its_body_is_read(app_client):
    payload = json.dumps(posts("my bag never arrived")).encode()
    headers = {**AUTH, "Content-Type": "application/json"}
    reads: list[int] = []
    with overloaded(app_client, pending=50, per_post_s=0.1):  # 5 s of work waiting
        r = app_client.post("/v1/score", content=recording_body(payload, reads), headers=headers)
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "overloaded"
    assert r.headers["Retry-After"] == "4"  # 5 s estimated, 1 s allowed
    assert r.headers.get("X-Request-ID")
    assert reads == []
    # Within the deadline the same request is read and scored.
    r = app_client.post("/v1/score", content=recording_body(payload, reads), headers=headers)
    assert r.status_code == 200, r.text
    assert reads == [len(payload)]


def test_other_routes_pass_while_overloaded(app_client):
    with overloaded(app_client, pending=50, per_post_s=0.1):
        assert app_client.get("/healthz").status_code == 200
        assert app_client.get("/v1/agents", headers=AUTH).status_code == 200


def test_100_sheds_are_logged_in_a_couple_of_lines(app_client, caplog):
    caplog.set_level(logging.INFO, logger="caretriage")
    batcher = app_client.app.state.served.batcher
    batcher.sheds = RateLog(batcher.sheds.logger, batcher.sheds.message)  # a quiet start
    big = posts(*["a post"] * 256)
    with overloaded(app_client, pending=50, per_post_s=0.1):
        statuses = [app_client.post("/v1/score", json=big, headers=AUTH).status_code]
        statuses += [app_client.post("/v1/score", json=big, headers=AUTH).status_code]
    # Past the header check (50 + 1 <= 300 posts, 50 x 1 us of wait) but not the queue bound
    # (50 + 256 > 300): refused by the batcher after parsing, counted in the same rate.
    with overloaded(app_client, pending=50, per_post_s=1e-6):
        for _ in range(98):
            statuses.append(app_client.post("/v1/score", json=big, headers=AUTH).status_code)
    assert statuses == [503] * 100
    batcher.sheds.flush()  # what the interval's timer (or shutdown) would log
    # The access log (serving/logs.py) has its line per request, whatever its status.
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("caretriage") and r.name != "caretriage.access"
    ]
    assert len(lines) == 2, lines  # the first shed at once, then one summary
    assert [line.split()[:2] for line in lines] == [["shed", "1"], ["shed", "99"]]
