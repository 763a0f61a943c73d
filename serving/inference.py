"""ONNX Runtime inference over a model bundle: text in, calibrated per-task probabilities out.

Everything model-specific (input/output names, max length, labels, temperatures, pad id) comes
from the bundle metadata. Batches are sorted by token length and capped by tokens rather than
by count, so short posts are not padded to the length of a long one and memory stays bounded.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from features.bundle import (
    Bundle,
    BundleError,
    compare_self_check,
    int8_session_config,
    read_bundle,
)
from features.calibration import softmax
from features.text import normalizer

log = logging.getLogger("caretriage.serving")

_INT_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}
_KNOWN_INPUTS = {"input_ids", "attention_mask", "token_type_ids"}


def cgroup_cpu_limit(path: str = "/sys/fs/cgroup/cpu.max") -> float | None:
    """The CPU quota of this process's cgroup (v2) in cores, e.g. 2.0 for ``docker --cpus 2``;
    None when there is none or it cannot be read."""
    try:
        with open(path, encoding="ascii") as f:
            quota, _, period = f.read().strip().partition(" ")
        return int(quota) / int(period or 100_000) if quota != "max" else None
    except (OSError, ValueError, ZeroDivisionError):
        return None


def usable_cores() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (a container
    on a big host sees every core in its mask but may only use its quota)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, math.ceil(limit))
    return max(1, cores)


def plan_batches(
    lengths: Sequence[int], max_batch_tokens: int, max_batch_size: int, min_batches: int = 1
) -> list[list[int]]:
    """Group item indices into batches, longest first, so that each batch's padded size
    (count x longest length) stays within ``max_batch_tokens`` and its count within
    ``max_batch_size``. An item longer than the cap still runs, alone. With ``min_batches``
    the items are spread over at least that many batches (as far as there are items), so that
    as many runs can go in parallel."""
    if min_batches > 1 and lengths:
        max_batch_size = min(max_batch_size, math.ceil(len(lengths) / min_batches))
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0
    for i in order:
        if current and (
            len(current) >= max_batch_size or (len(current) + 1) * width > max_batch_tokens
        ):
            batches.append(current)
            current = []
        if not current:
            width = lengths[i]  # longest of the batch: items arrive in decreasing length
        current.append(i)
    if current:
        batches.append(current)
    return batches


class Scorer:
    """One ONNX Runtime session and one tokenizer for one bundle. Thread-safe for ``predict``
    (ORT sessions allow concurrent ``run``); the batcher calls it from one worker thread.

    A call's posts are cut into length-sorted batches, and ``workers`` of them run at once, each
    on ``intra_op_threads`` threads (0: the usable cores shared out among the workers). On 2
    cores, two single-threaded runs side by side beat one run on two threads: small batches of
    tweets leave ONNX Runtime's intra-op threads waiting on each other (``benchmarks/``)."""

    def __init__(
        self,
        bundle: Bundle,
        *,
        max_batch_tokens: int = 8192,
        max_batch_size: int = 8,
        workers: int = 0,
        intra_op_threads: int = 0,
        intra_op_spinning: bool = True,
    ) -> None:
        self.bundle = bundle
        self.meta = bundle.meta
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        cores = usable_cores()
        self.workers = workers or cores
        self.intra_op_threads = intra_op_threads or max(1, cores // self.workers)
        self.tasks = [t.name for t in bundle.schema_.tasks]
        self.labels = {t.name: list(t.labels) for t in bundle.schema_.tasks}
        self.temperatures = {t: float(self.meta.temperatures.get(t, 1.0)) for t in self.tasks}
        bad = sorted(t for t, x in self.temperatures.items() if not x > 0)
        if bad:
            raise BundleError(f"{bundle.path}: temperatures must be > 0; not for {bad}")
        unknown = sorted(set(self.meta.inputs) - _KNOWN_INPUTS)
        if unknown:
            raise BundleError(f"{bundle.path}: cannot feed ONNX inputs {unknown}")

        # The normalizer the bundle was trained with (read_bundle has checked it is known).
        self.normalize = normalizer(self.meta.normalizer)
        self.tokenizer = Tokenizer.from_file(str(bundle.tokenizer_path))
        # The exported tokenizer may carry fixed padding (e.g. to 128); we pad per batch instead.
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.meta.max_length)

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = self.intra_op_threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if intra_op_spinning else "0"
        )
        # The bundle's own entries, plus what keeps int8 kernels exact on this CPU.
        for key, value in (self.meta.ort_session_config | int8_session_config()).items():
            opts.add_session_config_entry(key, value)
        self.session = ort.InferenceSession(
            str(bundle.onnx_path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self._check_graph()
        self._dtypes = {i.name: _INT_TYPES[i.type] for i in self.session.get_inputs()}
        self._output_names = [self.meta.outputs[t] for t in self.tasks]
        # The calling thread runs batches too, so a pool of workers - 1 threads suffices.
        self._pool = (
            ThreadPoolExecutor(self.workers - 1, thread_name_prefix="ort-run")
            if self.workers > 1
            else None
        )
        self._warm = threading.Event()
        # compare_self_check's result once warm; None for a bundle that records no self-check.
        self.self_check: dict[str, object] | None = None

    @classmethod
    def from_dir(cls, path: str | Path, **kwargs: int | bool) -> Scorer:
        return cls(read_bundle(path), **kwargs)

    def _check_graph(self) -> None:
        """Fail at load, naming the mismatch, rather than at the first request."""
        graph_inputs = {i.name: i.type for i in self.session.get_inputs()}
        missing = [n for n in self.meta.inputs if n not in graph_inputs]
        extra = [n for n in graph_inputs if n not in self.meta.inputs]
        if missing or extra:
            raise BundleError(
                f"{self.bundle.path}: bundle.json inputs {self.meta.inputs} do not match the "
                f"ONNX graph inputs {list(graph_inputs)}"
            )
        odd = {n: t for n, t in graph_inputs.items() if t not in _INT_TYPES}
        if odd:
            raise BundleError(f"{self.bundle.path}: ONNX inputs must be int32/int64, got {odd}")
        graph_outputs = {o.name for o in self.session.get_outputs()}
        wanted = dict(self.meta.outputs)
        if self.meta.embedding_output:
            wanted["embedding"] = self.meta.embedding_output
        absent = {t: o for t, o in wanted.items() if o not in graph_outputs}
        if absent:
            raise BundleError(f"{self.bundle.path}: ONNX graph lacks outputs {absent}")

    def close(self) -> None:
        """Stop the run threads (after the calls in flight finish)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    @property
    def warm(self) -> bool:
        return self._warm.is_set()

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Normalize (exactly as in training) and tokenize, truncated at the bundle's max length."""
        encodings = self.tokenizer.encode_batch([self.normalize(t) for t in texts])
        return [e.ids for e in encodings]

    def _run(
        self, ids: Sequence[Sequence[int]], outputs: Sequence[str] | None = None
    ) -> list[np.ndarray]:
        """One ONNX run over a batch, right-padded to its longest sequence."""
        width = max(len(x) for x in ids)
        input_ids = np.full((len(ids), width), self.meta.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        arrays = {
            "input_ids": input_ids,
            "attention_mask": mask,
            "token_type_ids": np.zeros_like(input_ids),
        }
        feed = {n: arrays[n].astype(self._dtypes[n], copy=False) for n in self.meta.inputs}
        return self.session.run(list(outputs or self._output_names), feed)

    def embed(self, texts: Sequence[str]) -> np.ndarray | None:
        """Sentence vectors (the pooled encoder output the heads read), one row per text, for
        the labeling queue's diversity; None when the bundle's graph does not export them.
        Not on the scoring path: a second run, paid only by posts entering the pool."""
        name = self.meta.embedding_output
        if not name or not texts:
            return None
        ids = self.encode(texts)
        rows: list[np.ndarray | None] = [None] * len(ids)
        for batch in plan_batches(
            [len(x) for x in ids], self.max_batch_tokens, self.max_batch_size
        ):
            (z,) = self._run([ids[i] for i in batch], [name])
            for row, i in enumerate(batch):
                rows[i] = np.asarray(z[row], dtype=np.float32)
        return np.stack(rows)  # type: ignore[arg-type]

    def logits_encoded(self, ids: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
        """Raw logits per task, shape (n, n_labels), in the order of ``ids``."""
        n = len(ids)
        out = {t: np.empty((n, len(self.labels[t])), dtype=np.float64) for t in self.tasks}
        if n == 0:
            return out
        batches = plan_batches(
            [len(x) for x in ids], self.max_batch_tokens, self.max_batch_size, self.workers
        )
        for batch, logits in zip(batches, self._run_all(ids, batches), strict=True):
            for task, z in zip(self.tasks, logits, strict=True):
                z = np.asarray(z)
                if z.shape != (len(batch), len(self.labels[task])):
                    raise BundleError(
                        f"{self.bundle.path}: output {self.meta.outputs[task]!r} has shape "
                        f"{z.shape}, expected ({len(batch)}, {len(self.labels[task])}) for the "
                        f"labels of task {task!r}"
                    )
                out[task][batch] = z
        return out

    def _run_all(
        self, ids: Sequence[Sequence[int]], batches: list[list[int]]
    ) -> list[list[np.ndarray]]:
        """Run every batch, up to ``workers`` at once: the caller and the pool's threads each
        take the next batch (longest first) until none is left."""
        helpers = min(self.workers, len(batches)) - 1
        if self._pool is None or helpers < 1:
            return [self._run([ids[i] for i in b]) for b in batches]
        results: list[list[np.ndarray] | None] = [None] * len(batches)
        lock = threading.Lock()
        todo = iter(range(len(batches)))

        def drain() -> None:
            while True:
                with lock:
                    k = next(todo, None)
                if k is None:
                    return
                results[k] = self._run([ids[i] for i in batches[k]])

        futures = [self._pool.submit(drain) for _ in range(helpers)]
        try:
            drain()
        finally:
            for f in futures:  # wait for every helper, and raise the first error
                f.result()
        return results  # type: ignore[return-value]

    def predict_encoded(self, ids: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
        """Probabilities per task, shape (n, n_labels), in the order of ``ids``."""
        return {
            t: softmax(z, self.temperatures[t]) if len(z) else z
            for t, z in self.logits_encoded(ids).items()
        }

    def predict(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Probabilities per task for raw post texts, shape (n, n_labels), in input order."""
        return self.predict_encoded(self.encode(texts))

    def warmup(self) -> None:
        """Run short and full-length batches once so the first request does not pay for ORT's
        lazy allocations, and so a bundle whose heads do not match its labels fails now; then
        re-run the bundle's self-check and warn if this machine scores its posts differently
        from the one that exported it."""
        t0 = time.perf_counter()
        self.predict(["warm up", "warm up " * self.meta.max_length])
        check = self.meta.self_check
        if check is not None:
            got = self.logits_encoded(self.encode(check.texts))
            self.self_check = compare_self_check(check, got)
            if not self.self_check["passed"]:
                log.warning(
                    "model %s scores its self-check posts differently here than where it was "
                    "exported (%s): label agreement %s, max |logit diff| %.2e > %.0e; its test "
                    "metrics may not hold on this machine (%s): re-export it here",
                    self.meta.version,
                    check.host,
                    self.self_check["agreement"],
                    self.self_check["max_abs_diff"],
                    check.max_abs_diff,
                    self.self_check["host"],
                )
        self._warm.set()
        log.info(
            "model %s %s warm in %.0f ms",
            self.meta.name,
            self.meta.version,
            1000 * (time.perf_counter() - t0),
        )
