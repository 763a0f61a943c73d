"""The training corpus loader as it was before data sources became configuration
(training/data.py at commit acc1976), frozen: tests check that the default sources still
build exactly this corpus. Not used by any code."""

from __future__ import annotations

import re
from pathlib import Path

import datasets
from datasets import Dataset, DatasetDict, concatenate_datasets

from features.schema import LabelSchema
from features.text import DEFAULT_NORMALIZER, normalize_text
from training.config import DataConfig

IGNORE = -100
COLUMNS = ("text", "topic", "sentiment", "actionability", "source", "weight")
# One column type per column for every source: text read from CSV is large_string, text built
# in memory is string, and ``concatenate_datasets`` refuses to mix them.
FEATURES = datasets.Features(
    {
        c: datasets.Value(
            "string" if c in ("text", "source") else "float32" if c == "weight" else "int64"
        )
        for c in COLUMNS
    }
)
_ALIASES = {"longlines": "long_lines"}


def snake(label: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "_", label.strip().lower()).strip("_")
    return _ALIASES.get(s, s)


def _ids(schema: LabelSchema, task: str, value: str | None) -> int:
    if value is None or value == "":
        return IGNORE
    labels = schema.task(task).labels
    v = snake(str(value))
    return labels.index(v) if v in labels else IGNORE


def _finish(ds: Dataset, schema: LabelSchema, source: str, fn, normalizer: str) -> Dataset:
    def row(ex):
        out = fn(ex)
        return {
            "text": normalize_text(ex["text"], normalizer),
            "topic": _ids(schema, "topic", out.get("topic")),
            "sentiment": _ids(schema, "sentiment", out.get("sentiment")),
            "actionability": _ids(schema, "actionability", out.get("actionability")),
            "source": source,
            # How much the row's labels count in the loss (1.0 unless the source knows better).
            "weight": float(out.get("weight", 1.0)),
        }

    # No map cache: a changed normalizer must never be served stale rows.
    return ds.map(
        row, remove_columns=ds.column_names, features=FEATURES, load_from_cache_file=False
    )


def _csv(path: Path) -> Dataset:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: set CARETRIAGE_DATA_DIR or --data-dir")
    return datasets.load_dataset("csv", data_files=str(path), split="train", keep_default_na=False)


def airline(cfg: DataConfig, schema: LabelSchema) -> DatasetDict:
    """Twitter US Airline Sentiment: sentiment for all rows, topic from ``negativereason``."""

    def fn(ex):
        out = {"sentiment": ex["airline_sentiment"], "topic": ex["negativereason"] or None}
        if cfg.weight_by_confidence:
            out["weight"] = float(ex["airline_sentiment_confidence"] or 1.0)
        return out

    d = cfg.data_dir / "airline"
    return DatasetDict(
        {
            s: _finish(_csv(d / f"{s}.csv"), schema, "airline", fn, cfg.normalizer)
            for s in ("train", "val", "test")
        }
    )


def complaints(cfg: DataConfig, schema: LabelSchema) -> Dataset:
    """Complaints corpus with actionability: complaint, else none for random tweets and
    replies, else the project's request/none annotation. Keeps ``fold``."""
    d = cfg.data_dir / "complaints"
    kinds = {str(r["tweet_id"]): r["kind"] for r in _csv(d / "actionability_labels.csv")}

    def label(ex) -> dict:
        if int(ex["complaint"]) == 1:
            a = "complaint"
        elif ex["domain"] in ("random_tweet", "random_reply"):
            a = "none"
        else:
            a = kinds.get(str(ex["tweet_id"]))
        return {"actionability": a}

    raw = _csv(d / "complaints.csv")
    folds = raw["fold"]
    domains = raw["domain"]
    out = _finish(raw, schema, "complaints", label, cfg.normalizer)
    return out.add_column("fold", [int(f) for f in folds]).add_column("domain", domains)


def tweeteval(cfg: DataConfig, schema: LabelSchema) -> Dataset:
    d = cfg.data_dir / "tweeteval_sentiment"
    names = {0: "negative", 1: "neutral", 2: "positive"}
    texts = (d / "val_text.txt").read_text(encoding="utf-8").splitlines()
    labels = [names[int(x)] for x in (d / "val_labels.txt").read_text().split()]
    ds = Dataset.from_dict({"text": texts, "label": labels})
    return _finish(ds, schema, "tweeteval", lambda ex: {"sentiment": ex["label"]}, cfg.normalizer)


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


def _only(ds: Dataset, tasks: list[str]) -> Dataset:
    """Blank the labels of tasks not trained in this run, then drop rows left with none."""
    drop = [t for t in ("topic", "sentiment", "actionability") if t not in tasks]
    if drop:
        ds = ds.map(lambda ex: {t: IGNORE for t in drop}, load_from_cache_file=False)
    return ds.filter(lambda ex: any(ex[t] != IGNORE for t in tasks))


def load_corpus(cfg: DataConfig, schema: LabelSchema) -> DatasetDict:
    """train / val / test, plus the per-task test tables, on the fixed splits."""
    air = airline(cfg, schema)
    comp = complaints(cfg, schema)
    test_fold, val_fold = cfg.complaints_test_fold, cfg.val_fold
    comp_train = comp.filter(lambda ex: ex["fold"] not in (test_fold, val_fold)).select_columns(
        list(COLUMNS)
    )
    comp_test = comp.filter(lambda ex: ex["fold"] == test_fold)
    parts = [air["train"], comp_train]
    if cfg.use_tweeteval:
        parts.append(tweeteval(cfg, schema))
    parts += [extra(s, schema, cfg.normalizer) for s in cfg.extra]
    train = _only(concatenate_datasets(parts), cfg.tasks)
    out = DatasetDict(
        {
            "train": train,
            "val": air["val"],
            "test": air["test"],
            "complaints_test": comp_test,
        }
    )
    if val_fold is not None and "actionability" in cfg.tasks:
        out["complaints_val"] = comp.filter(lambda ex: ex["fold"] == val_fold)
    if cfg.max_rows:
        out = DatasetDict({k: v.select(range(min(len(v), cfg.max_rows))) for k, v in out.items()})
    return out


def eval_sets(
    corpus: DatasetDict, split: str = "test"
) -> dict[str, tuple[list[str], list[int], list[str]]]:
    """Per task: (texts, gold label ids, domains) of the rows that carry that task's label."""
    air = corpus[split]
    out: dict[str, tuple[list[str], list[int], list[str]]] = {}
    for task in ("sentiment", "topic"):
        rows = [(t, y) for t, y in zip(air["text"], air[task], strict=True) if y >= 0]
        out[task] = ([t for t, _ in rows], [y for _, y in rows], [""] * len(rows))
    if f"complaints_{split}" in corpus:
        c = corpus[f"complaints_{split}"]
        out["actionability"] = (list(c["text"]), list(c["actionability"]), list(c["domain"]))
    return out
