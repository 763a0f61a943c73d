"""A bounded micro-batching queue in front of the scorer (after text-embeddings-inference).

Requests tokenize their posts, then wait on the queue. One worker takes whatever is waiting,
up to the token cap, and runs it through the scorer in a thread (ONNX Runtime releases the GIL,
so the event loop keeps serving). There is no artificial wait: a lone request runs at once,
while under concurrency the requests that arrived during the previous run share the next one.
The queue is bounded in posts, and a request that would overflow it is refused (503) instead of
queueing unbounded latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from starlette.concurrency import run_in_threadpool

from serving.errors import ModelNotReady, Overloaded
from serving.inference import Scorer

log = logging.getLogger("caretriage.serving")

# A request of at most this many posts is tokenized on the event loop: tokenizing a post takes
# tens of microseconds, less than a hop to the thread pool and back.
INLINE_ENCODE_POSTS = 4


@dataclass
class _Item:
    ids: list[list[int]]
    future: asyncio.Future[dict[str, np.ndarray]]
    tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = sum(len(x) for x in self.ids)


class Batcher:
    """Owns the queue and the worker task; ``submit`` is the only entry point for requests."""

    def __init__(self, scorer: Scorer, *, max_queue: int, max_batch_tokens: int) -> None:
        self.scorer = scorer
        self.max_queue = max_queue
        self.max_batch_tokens = max_batch_tokens
        self._items: deque[_Item] = deque()
        self._pending = 0  # posts queued or running
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._closing = False
        self.batches_run = 0  # for tests and metrics: how many worker runs so far

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done() and not self._closing

    @property
    def pending(self) -> int:
        return self._pending

    def start(self) -> None:
        if self._worker is None:
            self._closing = False
            self._worker = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    async def stop(self) -> None:
        """Stop taking work and fail whatever is still queued or running. Called at lifespan
        shutdown, after the server has drained in-flight requests, so normally nothing is."""
        self._closing = True
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        while self._items:
            item = self._items.popleft()
            self._pending -= len(item.ids)
            if not item.future.done():
                item.future.set_exception(ModelNotReady("the service is shutting down"))

    async def submit(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Probabilities per task for ``texts`` (input order). Raises Overloaded when the queue
        is full and ModelNotReady when the worker is not running."""
        if not self.running:
            raise ModelNotReady()
        n = len(texts)
        if self._pending + n > self.max_queue:
            raise Overloaded(
                f"{self._pending} posts are waiting (limit {self.max_queue}); retry shortly"
            )
        self._pending += n  # reserve before awaiting, so concurrent requests see it
        try:
            if n <= INLINE_ENCODE_POSTS:
                ids = self.scorer.encode(list(texts))
            else:
                ids = await run_in_threadpool(self.scorer.encode, list(texts))
            if not self.running:
                raise ModelNotReady("the service is shutting down")
            item = _Item(ids, asyncio.get_running_loop().create_future())
            self._items.append(item)
            self._wake.set()
        except BaseException:
            self._pending -= n
            raise
        # If the client goes away, the future is cancelled and the worker skips the item.
        return await item.future

    def _take(self) -> list[_Item]:
        """Everything waiting, in arrival order, up to the token cap (always at least one)."""
        taken: list[_Item] = []
        tokens = 0
        while self._items:
            item = self._items[0]
            if item.future.cancelled():
                self._items.popleft()
                self._pending -= len(item.ids)
                continue
            if taken and tokens + item.tokens > self.max_batch_tokens:
                break
            taken.append(self._items.popleft())
            tokens += item.tokens
        return taken

    async def _loop(self) -> None:
        while True:
            if not self._items:
                self._wake.clear()
                await self._wake.wait()
            taken = self._take()
            if not taken:
                continue
            ids = [x for item in taken for x in item.ids]
            try:
                probs = await run_in_threadpool(self.scorer.predict_encoded, ids)
            except asyncio.CancelledError:
                for item in taken:
                    self._pending -= len(item.ids)
                    if not item.future.done():
                        item.future.set_exception(ModelNotReady("the service is shutting down"))
                raise
            except Exception as exc:  # a model failure fails its requests, not the worker
                log.exception("inference failed for %d posts", len(ids))
                for item in taken:
                    self._pending -= len(item.ids)
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            self.batches_run += 1
            start = 0
            for item in taken:
                stop = start + len(item.ids)
                self._pending -= len(item.ids)
                if not item.future.done():
                    item.future.set_result({t: p[start:stop] for t, p in probs.items()})
                start = stop
