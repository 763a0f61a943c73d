"""The model being served, and swapping it for another without dropping a request.

``Served`` bundles what must change together (the bundle's metadata, its scorer and the
batcher in front of it); a request takes one ``Served`` at its start and keeps it to the end,
so it is tokenized, scored and labelled by one model and names that model's version.

A swap loads the new bundle beside the old one, warms it and checks it (its recorded
self-check must pass on this machine; the priority policy must not name labels it lacks),
then replaces the ``Served`` between requests. The old batcher finishes the requests that
took it, then stops, and the old session is freed. A bundle that fails any step is refused
and the old model keeps serving. ``ModelFollower`` polls a pointer file that
``caretriage promote`` writes, so a promoted model reaches a running server by itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from starlette.concurrency import run_in_threadpool

from features.bundle import Bundle, BundleError, read_bundle
from serving.batcher import Batcher
from serving.inference import Scorer
from serving.priority import Policy
from serving.settings import Settings

log = logging.getLogger("caretriage.serving")

# How long a retired batcher must stay idle before it is stopped: requests that took it just
# before the swap submit within microseconds; this is the margin.
RETIRE_IDLE_S = 0.5
RETIRE_TIMEOUT_S = 120.0


class SwapRefused(RuntimeError):
    """The candidate bundle cannot serve; the current one stays."""


@dataclass(frozen=True)
class Served:
    bundle: Bundle
    scorer: Scorer
    batcher: Batcher

    @property
    def version(self) -> str:
        return self.bundle.meta.version


def check_policy(bundle: Bundle, policy: Policy) -> None:
    """Refuse a bundle whose topics lack labels the priority policy names: the policy's
    severities would silently never apply."""
    unknown = policy.priority.unknown_topic_labels(bundle.schema_.task("topic").labels)
    if unknown:
        raise SwapRefused(
            f"{bundle.path}: the priority policy names topic labels this model lacks: {unknown}"
        )


async def load_served(
    path: str | Path, settings: Settings, policy: Policy, *, require_self_check: bool = True
) -> Served:
    """Read, load, warm and check a bundle, and start its batcher. Raises SwapRefused. At
    start-up (``require_self_check`` False) a failed self-check is only logged, as before:
    there is no other model to keep serving, and ``GET /v1/model`` reports it."""
    try:
        bundle = read_bundle(path)
    except (BundleError, OSError, ValueError) as e:
        raise SwapRefused(f"{path}: {e}") from e
    check_policy(bundle, policy)
    try:
        scorer = await run_in_threadpool(
            Scorer,
            bundle,
            max_batch_tokens=settings.max_batch_tokens,
            max_batch_size=settings.max_batch_size,
            workers=settings.inference_workers,
            intra_op_threads=settings.intra_op_threads,
            intra_op_spinning=settings.intra_op_spinning,
        )
        await run_in_threadpool(scorer.warmup)
    except Exception as e:
        raise SwapRefused(f"{path}: cannot load: {type(e).__name__}: {e}") from e
    check = scorer.self_check
    if require_self_check and check is not None and not check["passed"]:
        await run_in_threadpool(scorer.close)
        raise SwapRefused(
            f"{path}: self-check failed on this machine (agreement {check['agreement']}, "
            f"max |logit diff| {check['max_abs_diff']:.2e})"
        )
    batcher = Batcher(
        scorer,
        max_queue=settings.max_queue,
        max_batch_tokens=settings.max_batch_tokens,
        deadline_s=settings.queue_deadline_ms / 1000,
    )
    batcher.start()
    return Served(bundle, scorer, batcher)


async def retire(old: Served) -> None:
    """Let the requests that took ``old`` finish, then stop its batcher and free its model."""
    started = idle_since = time.monotonic()
    while time.monotonic() - started < RETIRE_TIMEOUT_S:
        await asyncio.sleep(0.02)
        if old.batcher.pending:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since >= RETIRE_IDLE_S:
            break
    else:
        log.warning(
            "model %s still busy %.0f s after the swap; stopping it", old.version, RETIRE_TIMEOUT_S
        )
    await old.batcher.stop()
    await run_in_threadpool(old.scorer.close)


class ModelSlot:
    """The app's current ``Served`` and the one way to change it (swaps take turns)."""

    def __init__(self, state: object, settings: Settings, policy: Policy) -> None:
        self._state = state
        self.settings = settings
        self.policy = policy
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self.swaps = 0

    @property
    def current(self) -> Served | None:
        return getattr(self._state, "served", None)

    def install(self, served: Served) -> None:
        state = self._state
        # The app's metrics hook (serving.metrics): each model's batcher reports its runs.
        served.batcher.observe = getattr(state, "batch_observer", None)
        state.served = served  # type: ignore[attr-defined]
        # The separate names stay for readers that need one piece (health, pages, sampling).
        state.bundle, state.scorer, state.batcher = served.bundle, served.scorer, served.batcher  # type: ignore[attr-defined]

    async def swap_to(self, path: str | Path) -> tuple[str | None, str]:
        """Serve the bundle at ``path`` from the next request on; returns (old, new) versions.
        The same bundle version again is a no-op. Raises SwapRefused, the old model staying."""
        async with self._lock:
            old = self.current
            try:
                meta_version = read_bundle(path).meta.version
            except (BundleError, OSError, ValueError) as e:
                raise SwapRefused(f"{path}: {e}") from e
            if old is not None and meta_version == old.version:
                return old.version, old.version
            new = await load_served(path, self.settings, self.policy)
            self.install(new)
            self.swaps += 1
            log.info("now serving %s (was %s)", new.version, old.version if old else None)
            if old is not None:
                task = asyncio.get_running_loop().create_task(retire(old))
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
            return (old.version if old else None), new.version

    async def close(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        current = self.current
        if current is not None:
            await current.batcher.stop()
            await run_in_threadpool(current.scorer.close)


def read_pointer(path: Path) -> Path | None:
    """The bundle folder a promotion pointer names (``{"bundle": ..., "version": ...}``,
    relative paths against the pointer's folder); None when absent or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    target = data.get("bundle") if isinstance(data, dict) else None
    if not isinstance(target, str) or not target:
        return None
    p = Path(target)
    return p if p.is_absolute() else (path.parent / p).resolve()


async def follow(slot: ModelSlot, pointer: Path, period: float) -> None:
    """Poll the promotion pointer and swap when it names another bundle. A refused bundle is
    logged once per change of the pointer, and the current model keeps serving."""
    refused: tuple[float, Path] | None = None
    while True:
        await asyncio.sleep(period)
        try:
            mtime = pointer.stat().st_mtime
        except OSError:
            continue
        target = read_pointer(pointer)
        if target is None or refused == (mtime, target):
            continue
        try:
            await slot.swap_to(target)
            refused = None
        except SwapRefused as e:
            refused = (mtime, target)
            log.error("not swapping to the promoted model: %s", e)
        except Exception:
            refused = (mtime, target)
            log.exception("swapping to %s failed; the current model keeps serving", target)
