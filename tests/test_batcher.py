"""The micro-batching queue, with a fake scorer so timing and batch composition are visible."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from serving.batcher import Batcher
from serving.errors import ModelNotReady, Overloaded


class FakeScorer:
    """Encodes a text as one token per character; 'predicts' the token count, so each caller
    can check it got its own rows back. ``gate`` holds a run until the test releases it."""

    def __init__(self, fail: bool = False) -> None:
        self.runs: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail = fail

    def encode(self, texts):
        return [[1] * len(t) for t in texts]

    def predict_encoded(self, ids):
        self.gate.wait(5)
        if self.fail:
            raise RuntimeError("model exploded")
        self.runs.append(len(ids))
        return {"n": np.array([[float(len(x))] for x in ids])}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


async def started(scorer, **kw) -> Batcher:
    b = Batcher(
        scorer,
        max_queue=kw.get("max_queue", 1000),
        max_batch_tokens=kw.get("max_batch_tokens", 10_000),
    )
    b.start()
    return b


async def one_running_one_queued(first: list[str], second: list[str]):
    """A started batcher whose first run (of ``first``) is held by the scorer's gate while
    ``second`` waits in the queue behind it: (scorer, batcher, first task, second task)."""
    s = FakeScorer()
    b = await started(s)
    s.gate.clear()
    running = asyncio.create_task(b.submit(first))
    await asyncio.sleep(0.05)
    queued = asyncio.create_task(b.submit(second))
    await asyncio.sleep(0.05)
    return s, b, running, queued


def test_lone_request_runs_at_once():
    async def main():
        b = await started(FakeScorer())
        t0 = time.perf_counter()
        out = await b.submit(["ab", "abcd"])
        elapsed = time.perf_counter() - t0
        await b.stop()
        return out, elapsed, b

    out, elapsed, b = run(main())
    assert out["n"].ravel().tolist() == [2, 4]
    assert elapsed < 0.5 and b.batches_run == 1 and b.pending == 0


def test_concurrent_requests_share_a_run_and_get_their_own_rows():
    async def main():
        s = FakeScorer()
        b = await started(s)
        s.gate.clear()  # the first run blocks; the others queue up behind it
        first = asyncio.create_task(b.submit(["x"]))
        await asyncio.sleep(0.05)
        rest = [asyncio.create_task(b.submit(["y" * k, "z" * (k + 10)])) for k in range(1, 6)]
        await asyncio.sleep(0.05)
        s.gate.set()
        outs = await asyncio.gather(first, *rest)
        await b.stop()
        return s, outs

    s, outs = run(main())
    assert s.runs == [1, 10]  # everything that waited went in one run
    assert outs[0]["n"].ravel().tolist() == [1]
    for k, out in enumerate(outs[1:], start=1):
        assert out["n"].ravel().tolist() == [k, k + 10]


def test_token_cap_splits_runs():
    async def main():
        s = FakeScorer()
        b = await started(s, max_batch_tokens=10)
        s.gate.clear()
        tasks = [asyncio.create_task(b.submit(["a" * 6])) for _ in range(4)]
        await asyncio.sleep(0.05)
        s.gate.set()
        await asyncio.gather(*tasks)
        await b.stop()
        return s

    assert run(main()).runs == [1, 1, 1, 1]  # 6 + 6 > 10: one request per run


def test_overloaded_beyond_max_queue():
    async def main():
        s = FakeScorer()
        b = await started(s, max_queue=10)
        s.gate.clear()
        held = asyncio.create_task(b.submit(["a"] * 8))
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded) as info:
            await b.submit(["b"] * 5)
        ok = asyncio.create_task(b.submit(["c"] * 2))  # 8 + 2 fits
        await asyncio.sleep(0.01)
        s.gate.set()
        await asyncio.gather(held, ok)
        await b.stop()
        return info.value, b

    err, b = run(main())
    assert err.status_code == 503 and err.error == "overloaded" and "Retry-After" in err.headers
    assert b.pending == 0


def test_cancelled_request_is_skipped_and_released():
    async def main():
        s, b, first, gone = await one_running_one_queued(["a"], ["b"] * 3)
        gone.cancel()
        s.gate.set()
        await first
        await asyncio.sleep(0.05)
        await b.stop()
        return s, b

    s, b = run(main())
    assert s.runs == [1] and b.pending == 0


def test_model_failure_fails_its_requests_not_the_worker():
    async def main():
        s = FakeScorer(fail=True)
        b = await started(s)
        with pytest.raises(RuntimeError, match="exploded"):
            await b.submit(["a"])
        s.fail = False
        out = await b.submit(["abc"])
        await b.stop()
        return out, b

    out, b = run(main())
    assert out["n"].ravel().tolist() == [3] and b.pending == 0


def test_stop_fails_waiting_requests_and_refuses_new_ones():
    async def main():
        s = FakeScorer()
        b = await started(s)
        s.gate.clear()
        running = asyncio.create_task(b.submit(["a"]))
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(b.submit(["b"]))
        await asyncio.sleep(0.05)
        stopping = asyncio.create_task(b.stop())
        await asyncio.sleep(0.05)
        s.gate.set()
        await stopping
        results = await asyncio.gather(running, waiting, return_exceptions=True)
        with pytest.raises(ModelNotReady):
            await b.submit(["c"])
        return results, b

    results, b = run(main())
    assert all(isinstance(r, ModelNotReady) for r in results)
    assert not b.running and b.pending == 0


def test_next_run_starts_while_the_event_loop_is_busy():
    """Runs are started by the batcher's own thread: a loop busy with other requests when a
    run ends does not hold back the next one."""

    async def main():
        s, b, first, second = await one_running_one_queued(["a"], ["bb", "ccc"])
        s.gate.set()
        time.sleep(0.3)  # the loop is blocked: nothing on it can start a run
        runs_while_busy = list(s.runs)
        outs = await asyncio.gather(first, second)
        await b.stop()
        return runs_while_busy, outs, b

    runs, outs, b = run(main())
    assert runs == [1, 2]
    assert outs[1]["n"].ravel().tolist() == [2, 3] and b.pending == 0 and b.batches_run == 2


def test_run_thread_exits_on_stop_and_the_batcher_can_start_again():
    async def main():
        s = FakeScorer()
        b = await started(s)
        await b.submit(["a"])
        thread = b._thread
        await b.stop()
        stopped = not b.running and thread is not None and not thread.is_alive()
        b.start()
        out = await b.submit(["abcd"])
        await b.stop()
        return stopped, out

    stopped, out = run(main())
    assert stopped and out["n"].ravel().tolist() == [4]
