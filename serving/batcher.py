"""A bounded micro-batching queue in front of the scorer (after text-embeddings-inference).

Requests tokenize their posts, then wait on the queue. A dedicated thread takes whatever is
waiting, up to the token cap, runs it through the scorer and hands each request its rows back
on the event loop. There is no artificial wait: a lone request runs at once, while under
concurrency the requests that arrived during the previous run share the next one. A request
whose posts would wait longer than the queue deadline (posts ahead x measured seconds per post,
``serving.admission``), or overflow the queue's bound in posts, is refused (503) instead of
queueing unbounded latency.

The runs are started by their own thread, not by a task on the event loop, because the loop is
busy answering and parsing requests exactly when a run ends: a task resuming there to start the
next run waited its turn behind them. Under 8 single-post clients (AMD EPYC, 2 cores) the model
then stood idle 2.5-3 ms between runs of about 9 ms; from a thread the gap is about 0.1 ms
(README, "Configuration").
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from starlette.concurrency import run_in_threadpool

from serving.admission import RateLog, ServiceTime, Verdict, decide
from serving.errors import ModelNotReady, Overloaded
from serving.inference import Scorer

log = logging.getLogger("caretriage.serving")

# A request of at most this many posts is tokenized on the event loop: tokenizing a post takes
# tens of microseconds, less than a hop to the thread pool and back.
INLINE_ENCODE_POSTS = 4
# How long stop() waits for a run in progress to end before leaving the thread behind.
STOP_JOIN_S = 30.0


@dataclass
class _Item:
    ids: list[list[int]]
    future: asyncio.Future[dict[str, np.ndarray]]
    tokens: int = field(init=False)
    released: bool = False  # its posts no longer count as pending (set on the loop only)
    queued_at: float = field(default_factory=time.perf_counter)  # for the queue-wait metric

    def __post_init__(self) -> None:
        self.tokens = sum(len(x) for x in self.ids)


class Batcher:
    """Owns the queue and the run thread; ``submit`` is the only entry point for requests.

    Threads: the queue is shared under ``_cond``; the pending count, the futures and
    ``batches_run`` are touched on the event loop only (the run thread hands results over with
    ``call_soon_threadsafe``)."""

    def __init__(
        self, scorer: Scorer, *, max_queue: int, max_batch_tokens: int, deadline_s: float = 0.0
    ) -> None:
        self.scorer = scorer
        self.max_queue = max_queue
        self.max_batch_tokens = max_batch_tokens
        self.deadline_s = deadline_s  # queue wait beyond which requests are refused; 0: none
        self.service = ServiceTime()  # seconds per post, measured on the runs
        self.sheds = RateLog(log, "shed %d requests in the last %.0f s")
        self._items: deque[_Item] = deque()
        self._running: list[_Item] = []  # the batch in the model now
        self._cond = threading.Condition()
        self._pending = 0  # posts queued or running
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closing = False
        self.batches_run = 0  # for tests and metrics: how many runs so far
        # Metrics hook (serving.metrics), called on the run thread as a run starts: its posts,
        # and the seconds each request taken waited. Set by ModelSlot.install; None: unobserved.
        self.observe: Callable[[int, list[float]], None] | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._closing

    @property
    def pending(self) -> int:
        return self._pending

    def verdict(self, posts: int = 1) -> Verdict:
        """Whether ``posts`` more posts would be admitted now."""
        return decide(
            pending=self._pending,
            posts=posts,
            per_post_s=self.service.per_post_s,
            deadline_s=self.deadline_s,
            max_queue=self.max_queue,
        )

    def refusal(self, posts: int = 1) -> Overloaded | None:
        """The 503 for a request of ``posts`` posts if it is not admitted now (counted in the
        shed rate), else None. Called on the event loop."""
        v = self.verdict(posts)
        if v.admit:
            return None
        self.sheds.record(v.reason)
        return Overloaded(f"{v.reason}; retry in {v.retry_after_s} s", v.retry_after_s)

    def start(self) -> None:
        """Start the run thread; call from the event loop that will submit."""
        if self._thread is None:
            self._closing = False
            self._loop = asyncio.get_running_loop()
            self._thread = threading.Thread(
                target=self._run_forever, name="caretriage-batcher", daemon=True
            )
            self._thread.start()

    async def stop(self) -> None:
        """Stop taking work and fail whatever is still queued or running, then wait for a run
        in progress to end. Called at lifespan shutdown, after the server has drained in-flight
        requests, so normally nothing is."""
        with self._cond:
            self._closing = True
            left = [*self._running, *self._items]
            self._items.clear()
            self._cond.notify_all()
        self._fail(left, ModelNotReady("the service is shutting down"))
        self.sheds.close()
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.join, STOP_JOIN_S)
            if thread.is_alive():
                log.warning("a model run still had not ended %.0f s after shutdown", STOP_JOIN_S)

    async def submit(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Probabilities per task for ``texts`` (input order). Raises Overloaded when the queue
        is full and ModelNotReady when the run thread is not running."""
        if not self.running:
            raise ModelNotReady()
        n = len(texts)
        refused = self.refusal(n)
        if refused is not None:
            raise refused
        self._pending += n  # reserve before awaiting, so concurrent requests see it
        try:
            if n <= INLINE_ENCODE_POSTS:
                ids = self.scorer.encode(list(texts))
            else:
                ids = await run_in_threadpool(self.scorer.encode, list(texts))
            item = _Item(ids, asyncio.get_running_loop().create_future())
            with self._cond:
                if not self.running:
                    raise ModelNotReady("the service is shutting down")
                self._items.append(item)
                self._cond.notify()
        except BaseException:
            self._pending -= n
            raise
        # If the client goes away, the future is cancelled and the run thread skips the item.
        return await item.future

    # -- on the event loop ------------------------------------------------------------------

    def _release(self, item: _Item) -> None:
        if not item.released:
            item.released = True
            self._pending -= len(item.ids)

    def _fail(self, items: Sequence[_Item], exc: BaseException) -> None:
        for item in items:
            self._release(item)
            if not item.future.done():
                item.future.set_exception(exc)

    def _deliver(self, taken: list[_Item], probs: dict[str, np.ndarray]) -> None:
        self.batches_run += 1
        start = 0
        for item in taken:
            stop = start + len(item.ids)
            self._release(item)
            if not item.future.done():
                item.future.set_result({t: p[start:stop] for t, p in probs.items()})
            start = stop

    # -- on the run thread ------------------------------------------------------------------

    def _take(self) -> tuple[list[_Item], list[_Item]]:
        """(to run, cancelled): everything waiting, in arrival order, up to the token cap
        (always at least one item to run while any is waiting). Called holding ``_cond``."""
        taken: list[_Item] = []
        skipped: list[_Item] = []
        tokens = 0
        while self._items:
            item = self._items[0]
            if item.future.cancelled():
                skipped.append(self._items.popleft())
                continue
            if taken and tokens + item.tokens > self.max_batch_tokens:
                break
            taken.append(self._items.popleft())
            tokens += item.tokens
        return taken, skipped

    def _hand_over(self, callback: Callable[..., None], *args: object) -> bool:
        """Schedule ``callback(*args)`` on the event loop; False once the loop is gone."""
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            return False
        return True

    def _run_forever(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                taken, skipped = self._take()
                self._running = taken
            if skipped and not self._hand_over(self._fail, skipped, ModelNotReady("cancelled")):
                return
            if not taken:
                continue
            ids = [x for item in taken for x in item.ids]
            if self.observe is not None:
                now = time.perf_counter()
                try:
                    self.observe(len(ids), [now - item.queued_at for item in taken])
                except Exception:  # metrics never stop the model
                    log.exception("batch metrics hook failed")
            try:
                t0 = time.perf_counter()
                result = (self._deliver, taken, self.scorer.predict_encoded(ids))
                self.service.observe(time.perf_counter() - t0, len(ids))
            except Exception as exc:  # a model failure fails its requests, not the thread
                log.exception("inference failed for %d posts", len(ids))
                result = (self._fail, taken, exc)
            with self._cond:
                self._running = []
            if not self._hand_over(*result):
                return
