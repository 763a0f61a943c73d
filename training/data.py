"""Loading labelled posts into one multi-task table with the `datasets` library.

Every row carries a text and one integer per task (-100 where the row has no label for that
task), so one shuffled stream feeds all heads and a missing label adds nothing to that loss.

Where the rows come from is configuration (``DataConfig.sources``), so a deployment brings its
own data and taxonomy without code: the built-in loaders read the shared data sets as the
shipped model always did, a ``csv``/``jsonl`` source reads any file with a text column and a
column per task. The corpus holds ``train`` (every source's training rows, in source order)
and each source's evaluation tables: the airline source's are ``val``/``test`` and the
complaints source's ``complaints_val``/``complaints_test`` (the shipped names), any other's
``<name>_val``/``<name>_test``. ``training.evaluate.eval_sets`` gathers a task's rows from
every table of a split, so a task is tested wherever a source labels it.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset, DatasetDict, concatenate_datasets

from features.labels_export import fold_text
from features.schema import TASK_NAMES, LabelSchema
from features.text import DEFAULT_NORMALIZER, normalize_text
from training.config import DataConfig, SourceConfig

log = logging.getLogger(__name__)

IGNORE = -100
COLUMNS = ("text", "topic", "sentiment", "actionability", "source", "weight")
# Columns of a corpus table that are not task labels.
NON_TASK_COLUMNS = ("text", "source", "weight", "fold", "domain")
_ALIASES = {"longlines": "long_lines"}
_SPLITS = {"train": "train", "val": "val", "validation": "val", "dev": "val", "test": "test"}


def columns(schema: LabelSchema) -> tuple[str, ...]:
    """The table's columns: the contract tasks, then the schema's further tasks."""
    extra = tuple(t for t in schema.names if t not in TASK_NAMES)
    return ("text", *TASK_NAMES, *extra, "source", "weight")


def _features(cols: tuple[str, ...]) -> datasets.Features:
    return datasets.Features(
        {
            c: datasets.Value(
                "string" if c in ("text", "source") else "float32" if c == "weight" else "int64"
            )
            for c in cols
        }
    )


def features(schema: LabelSchema) -> datasets.Features:
    """One column type per column for every source: text read from CSV is large_string, text
    built in memory is string, and ``concatenate_datasets`` refuses to mix them."""
    return _features(columns(schema))


FEATURES = _features(COLUMNS)


def snake(label: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "_", label.strip().lower()).strip("_")
    return _ALIASES.get(s, s)


def _ids(schema: LabelSchema, task: str, value: str | None) -> int:
    if value is None or value == "":
        return IGNORE
    labels = schema.task(task).labels
    v = snake(str(value))
    return labels.index(v) if v in labels else IGNORE


def _finish(
    ds: Dataset,
    schema: LabelSchema,
    source: str,
    fn: Callable[[dict], dict],
    normalizer: str,
    text: str = "text",
) -> Dataset:
    tasks = [c for c in columns(schema) if c not in NON_TASK_COLUMNS]

    def row(ex):
        out = fn(ex)
        r: dict[str, Any] = {"text": normalize_text(ex[text], normalizer)}
        r.update({t: _ids(schema, t, out.get(t)) for t in tasks})
        r["source"] = source
        # How much the row's labels count in the loss (1.0 unless the source knows better).
        r["weight"] = float(out.get("weight", 1.0))
        return r

    # No map cache: a changed normalizer must never be served stale rows.
    return ds.map(
        row, remove_columns=ds.column_names, features=features(schema), load_from_cache_file=False
    )


def _csv(path: Path) -> Dataset:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: set CARETRIAGE_DATA_DIR or --data-dir")
    return datasets.load_dataset("csv", data_files=str(path), split="train", keep_default_na=False)


def _mapped(src: SourceConfig, task: str, value: Any) -> str | None:
    """A raw cell as a label string (``label_map`` applied; empty means no label)."""
    if value is None or value == "":
        return None
    table = src.label_map.get(task)
    if table is not None and str(value) in table:
        return table[str(value)]
    return str(value)


def airline(
    cfg: DataConfig, schema: LabelSchema, source: SourceConfig | None = None
) -> DatasetDict:
    """Twitter US Airline Sentiment: sentiment for all rows, topic from ``negativereason``
    (or the columns ``source.tasks`` names)."""
    src = source or SourceConfig(kind="airline")
    cols = src.task_columns

    def fn(ex):
        out: dict[str, Any] = {t: _mapped(src, t, ex[c]) for t, c in cols.items()}
        if cfg.weight_by_confidence:
            out["weight"] = float(ex["airline_sentiment_confidence"] or 1.0)
        return out

    d = src.folder(cfg.data_dir)
    return DatasetDict(
        {
            s: _finish(_csv(d / f"{s}.csv"), schema, src.source_name, fn, cfg.normalizer)
            for s in ("train", "val", "test")
        }
    )


def complaints(cfg: DataConfig, schema: LabelSchema, source: SourceConfig | None = None) -> Dataset:
    """Complaints corpus with actionability: complaint, else none for random tweets and
    replies, else the project's request/none annotation. Keeps ``fold``."""
    src = source or SourceConfig(kind="complaints")
    d = src.folder(cfg.data_dir)
    kinds = {str(r["tweet_id"]): r["kind"] for r in _csv(d / "actionability_labels.csv")}
    labelled = "actionability" in src.task_columns

    def label(ex) -> dict:
        if not labelled:
            return {}
        if int(ex["complaint"]) == 1:
            a = "complaint"
        elif ex["domain"] in ("random_tweet", "random_reply"):
            a = "none"
        else:
            a = kinds.get(str(ex["tweet_id"]))
        return {"actionability": _mapped(src, "actionability", a)}

    raw = _csv(d / "complaints.csv")
    folds = raw["fold"]
    domains = raw["domain"]
    out = _finish(raw, schema, src.source_name, label, cfg.normalizer)
    return out.add_column("fold", [int(f) for f in folds]).add_column("domain", domains)


def tweeteval(cfg: DataConfig, schema: LabelSchema, source: SourceConfig | None = None) -> Dataset:
    src = source or SourceConfig(kind="tweeteval")
    d = src.folder(cfg.data_dir)
    names = {0: "negative", 1: "neutral", 2: "positive"}
    texts = (d / "val_text.txt").read_text(encoding="utf-8").splitlines()
    labels = [names[int(x)] for x in (d / "val_labels.txt").read_text().split()]
    ds = Dataset.from_dict({"text": texts, "label": labels})
    cols = src.task_columns
    return _finish(
        ds,
        schema,
        src.source_name,
        lambda ex: {t: _mapped(src, t, ex[c]) for t, c in cols.items()},
        cfg.normalizer,
    )


def _read(path: Path, kind: str) -> Dataset:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: set CARETRIAGE_DATA_DIR or --data-dir")
    if kind == "csv":
        sep = "\t" if path.suffix == ".tsv" else ","
        return datasets.load_dataset(
            "csv", data_files=str(path), split="train", keep_default_na=False, delimiter=sep
        )
    return datasets.load_dataset("json", data_files=str(path), split="train")


def _check_labels(src: SourceConfig, schema: LabelSchema, ds: Dataset) -> None:
    """Refuse, by name, columns that are missing and labels the schema lacks (unless the
    source says to ignore them): a typo in a mapping must not train a head on nothing."""
    missing = [c for c in (src.text, *src.task_columns.values()) if c not in ds.column_names]
    if missing:
        raise ValueError(
            f"source {src.source_name!r}: no column {missing}; it has {ds.column_names}"
        )
    for task, col in src.task_columns.items():
        if task not in schema.names:
            raise ValueError(f"source {src.source_name!r} labels {task!r}, not in the schema")
        labels = set(schema.task(task).labels)
        unknown = Counter(
            m
            for v in ds[col]
            if (m := _mapped(src, task, v)) is not None and snake(m) not in labels
        )
        if unknown and src.on_unknown == "error":
            shown = ", ".join(f"{k!r} ({n})" for k, n in unknown.most_common(10))
            raise ValueError(
                f"source {src.source_name!r}: {task} labels the schema lacks: {shown}; map them"
                " (label_map), add them to the schema, or set unknown_labels: ignore"
            )
        if unknown:
            log.info("source %s: %s labels ignored: %s", src.source_name, task, dict(unknown))


def stable_share(key: str, salt: str) -> float:
    """A pseudo-random number in [0, 1) fixed by ``key`` and ``salt``: row draws that do not
    move when the data is reloaded, reordered or grown."""
    h = hashlib.blake2b(f"{salt}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64


def carve_validation(ds: Dataset, task: str, fraction: float, salt: str) -> tuple[list, list]:
    """(train, val) row indices: per label of ``task``, the ``fraction`` of rows whose hashed
    folded text ranks lowest go to validation (stratified and reproducible); rows without a
    label stay in training. Indices keep the file's order."""
    by_label: dict[int, list[tuple[float, int]]] = {}
    for i, (text, y) in enumerate(zip(ds["text"], ds[task], strict=True)):
        if y != IGNORE:
            by_label.setdefault(y, []).append((stable_share(fold_text(text), salt), i))
    val: set[int] = set()
    for rows in by_label.values():
        val.update(i for _, i in sorted(rows)[: round(fraction * len(rows))])
    return [i for i in range(len(ds)) if i not in val], sorted(val)


def tabular(cfg: DataConfig, schema: LabelSchema, src: SourceConfig) -> dict[str, Dataset]:
    """A csv/jsonl source: ``train`` rows and its ``<name>_val`` / ``<name>_test`` tables, from
    split files, a split column, or one file of training rows (``val_fraction`` carved out)."""
    name, root = src.source_name, src.folder(cfg.data_dir)
    if src.splits:
        raw = {s: _read(root / f, src.kind) for s, f in src.splits.items()}
    else:
        table = _read(root, src.kind)
        if src.split_column:
            if src.split_column not in table.column_names:
                raise ValueError(f"source {name!r}: no split column {src.split_column!r}")
            values = [str(v).strip().lower() for v in table[src.split_column]]
            odd = sorted(set(values) - set(_SPLITS))
            if odd:
                raise ValueError(f"source {name!r}: unknown split values {odd}")
            raw = {}
            for s in ("train", "val", "test"):
                idx = [i for i, v in enumerate(values) if _SPLITS[v] == s]
                if idx:
                    raw[s] = table.select(idx)
        else:
            raw = {"train": table}
    if "train" not in raw:
        raise ValueError(f"source {name!r} has no training rows")
    cols = src.task_columns

    def fn(ex):
        return {t: _mapped(src, t, ex[c]) for t, c in cols.items()}

    out: dict[str, Dataset] = {}
    for split, ds in raw.items():
        _check_labels(src, schema, ds)
        out[split] = _finish(ds, schema, name, fn, cfg.normalizer, text=src.text)
    if "val" not in out and src.val_fraction > 0:
        first = next(iter(cols))
        keep, val = carve_validation(out["train"], first, src.val_fraction, f"val:{name}")
        out["val"] = out["train"].select(val)
        out["train"] = out["train"].select(keep)
    return {
        ("train" if s == "train" else f"{name}_{s}"): out[s]
        for s in ("train", "val", "test")
        if s in out
    }


def _builtin(kind: str) -> Callable[[DataConfig, LabelSchema, SourceConfig], dict[str, Dataset]]:
    def air(cfg: DataConfig, schema: LabelSchema, src: SourceConfig) -> dict[str, Dataset]:
        d = airline(cfg, schema, src)
        # The shipped airline tables keep their historical names, "val" and "test".
        pre = "" if src.source_name == "airline" else f"{src.source_name}_"
        return {"train": d["train"], f"{pre}val": d["val"], f"{pre}test": d["test"]}

    def comp(cfg: DataConfig, schema: LabelSchema, src: SourceConfig) -> dict[str, Dataset]:
        c = complaints(cfg, schema, src)
        test_fold, val_fold = cfg.complaints_test_fold, cfg.val_fold
        train = c.filter(lambda ex: ex["fold"] not in (test_fold, val_fold)).select_columns(
            list(columns(schema))
        )
        name = src.source_name
        out = {"train": train, f"{name}_test": c.filter(lambda ex: ex["fold"] == test_fold)}
        if val_fold is not None and "actionability" in cfg.tasks:
            out[f"{name}_val"] = c.filter(lambda ex: ex["fold"] == val_fold)
        return out

    def tweets(cfg: DataConfig, schema: LabelSchema, src: SourceConfig) -> dict[str, Dataset]:
        return {"train": tweeteval(cfg, schema, src)}

    return {"airline": air, "complaints": comp, "tweeteval": tweets}[kind]


def load_source(cfg: DataConfig, schema: LabelSchema, src: SourceConfig) -> dict[str, Dataset]:
    """One source's ``train`` rows and evaluation tables."""
    if src.kind in ("csv", "jsonl"):
        return tabular(cfg, schema, src)
    return _builtin(src.kind)(cfg, schema, src)


def extra(spec: str, schema: LabelSchema, normalizer: str = DEFAULT_NORMALIZER) -> Dataset:
    """A CSV/JSONL path or a public data set name with ``text`` and task-named columns."""
    p = Path(spec)
    if p.suffix in {".csv", ".tsv"}:
        ds = datasets.load_dataset("csv", data_files=str(p), split="train", keep_default_na=False)
    elif p.suffix in {".json", ".jsonl"}:
        ds = datasets.load_dataset("json", data_files=str(p), split="train")
    else:
        ds = datasets.load_dataset(spec, split="train")
    cols = set(ds.column_names)
    return _finish(
        ds,
        schema,
        p.stem or spec,
        lambda ex: {t: ex.get(t) for t in cols & set(schema.names)},
        normalizer,
    )


def task_columns(ds: Dataset) -> list[str]:
    return [c for c in ds.column_names if c not in NON_TASK_COLUMNS]


def only_tasks(ds: Dataset, tasks: list[str]) -> Dataset:
    """Blank the labels of tasks not trained in this run, then drop rows left with none."""
    drop = [t for t in task_columns(ds) if t not in tasks]
    if drop:
        ds = ds.map(lambda ex: {t: IGNORE for t in drop}, load_from_cache_file=False)
    return ds.filter(lambda ex: any(ex[t] != IGNORE for t in tasks))


def load_corpus(cfg: DataConfig, schema: LabelSchema) -> DatasetDict:
    """train plus every source's evaluation tables (see the module docstring), on the fixed
    splits. The default config reads exactly the shipped corpus, row for row."""
    unknown = [t for t in cfg.tasks if t not in schema.names]
    if unknown:
        raise ValueError(f"data.tasks names {unknown}, which the label schema lacks")
    parts: list[Dataset] = []
    tables: dict[str, Dataset] = {}
    for src in cfg.active_sources():
        got = load_source(cfg, schema, src)
        parts.append(got.pop("train"))
        clash = sorted(set(got) & set(tables))
        if clash:
            raise ValueError(f"source {src.source_name!r}: tables {clash} already exist")
        tables.update(got)
    parts += [extra(s, schema, cfg.normalizer) for s in cfg.extra]
    out = DatasetDict({"train": only_tasks(concatenate_datasets(parts), cfg.tasks), **tables})
    if cfg.max_rows:
        out = DatasetDict({k: v.select(range(min(len(v), cfg.max_rows))) for k, v in out.items()})
    return out
