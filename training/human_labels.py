"""Human labels from the labeling workspace, joined to a training run.

The export (``caretriage labels export``, read with ``features.labels_export.read_export``)
has one row per label given; the rows marked ``final`` hold each finished item's labels, and
only those are used. Three rules make them safe to train on:

- **Human labels win.** A base row whose normalized, case- and space-folded text equals a
  labeled post's is dropped from training: the same post must not be taught two answers, and
  a post someone bothered to label is the deployment's own reading of it.
- **The taxonomy is explicit.** A label the schema lacks is refused by name (a typo or an
  out-of-date export must not shift a head silently), unless ``add_labels``: then it is
  appended to its task's labels, so existing label ids, and any head rows initialized from a
  checkpoint, keep their place.
- **A fixed slice is held out.** An item is held out when a seeded hash of its ``text_key``
  falls under the holdout share. The draw depends on the item alone, so it never moves between
  runs, however the export grows or is reordered: an item a champion trained on never turns up
  in a later candidate's slice. Being independent of the labels, the draw holds out the same
  share of every label (stratified in expectation; quota-exact strata would need ranks inside
  each label, and ranks move items as a stratum grows). The run logs the counts per label.

Human rows whose text is in a public validation or test table are not trained on either: the
fixed public splits stay unseen, whatever the labelers were shown.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, concatenate_datasets

from features.labels_export import fold_text, read_export
from features.schema import LabelSchema
from features.text import normalize_text
from training.config import HumanLabelsConfig
from training.data import IGNORE, columns, features, only_tasks, stable_share
from training.evaluate import split_tables

log = logging.getLogger(__name__)

HOLDOUT = "human_holdout"  # the corpus table of held-out human labels
SOURCE = "human"


class UnknownLabels(ValueError):
    """The export holds labels (or tasks) the label schema lacks."""


@dataclass
class HumanSnapshot:
    """One export as a run used it: where it was, its hash, and what became of its rows."""

    path: Path
    sha256: str
    schema: LabelSchema
    train: Dataset
    holdout: Dataset
    final_rows: int
    added_labels: dict[str, list[str]] = field(default_factory=dict)
    holdout_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    holdout_share: float = 0.2
    seed: int = 0
    dropped_base_rows: int = 0  # set by merge_human
    kept_out_public: int = 0  # human rows not trained on: their text is a public val/test row

    def summary(self) -> dict[str, Any]:
        """What MLflow and the bundle record about the snapshot."""
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "final_rows": self.final_rows,
            "train_rows": len(self.train),
            "holdout_rows": len(self.holdout),
            "holdout_share": self.holdout_share,
            "seed": self.seed,
            "holdout_counts": self.holdout_counts,
            "added_labels": self.added_labels,
            "dropped_base_rows": self.dropped_base_rows,
            "not_trained_public_eval_rows": self.kept_out_public,
        }


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def held_out(text_key: str, share: float, seed: int) -> bool:
    """Whether the item is in the held-out slice: a function of its text_key alone."""
    return stable_share(text_key, f"{seed}:holdout") < share


def final_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows holding each item's final labels, one per item (by text_key, the last)."""
    by_key: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r.get("final") and r.get("labels"):
            by_key[r["text_key"]] = r
    return list(by_key.values())


def check_labels(
    rows: list[dict[str, Any]], schema: LabelSchema, add_labels: bool
) -> tuple[LabelSchema, dict[str, list[str]]]:
    """The schema the rows can train (grown when ``add_labels``) and the labels added; raises
    UnknownLabels naming each task or label the schema lacks, with its row count."""
    tasks = Counter(t for r in rows for t in r["labels"] if t not in schema.names)
    if tasks:
        shown = ", ".join(f"{t!r} ({n} rows)" for t, n in sorted(tasks.items()))
        raise UnknownLabels(
            f"the labels name tasks the label schema lacks: {shown}; add the task to the"
            " deployment's label_schema.yaml (its labels and description) to train it"
        )
    unknown: dict[str, Counter[str]] = {}
    for r in rows:
        for task, label in r["labels"].items():
            if label is not None and label not in schema.task(task).labels:
                unknown.setdefault(task, Counter())[label] += 1
    if not unknown:
        return schema, {}
    if not add_labels:
        shown = "; ".join(
            f"{task}: " + ", ".join(f"{lab!r} ({n} rows)" for lab, n in sorted(c.items()))
            for task, c in sorted(unknown.items())
        )
        raise UnknownLabels(
            f"labels the label schema lacks: {shown}. Fix them in the labeling workspace, or"
            " pass --add-labels to add them to the schema (the task's head grows)"
        )
    added = {task: sorted(c) for task, c in sorted(unknown.items())}
    data = schema.model_dump()
    for spec in data["tasks"]:
        spec["labels"] = spec["labels"] + added.get(spec["name"], [])
    log.warning("labels added to the schema: %s", added)
    return LabelSchema.model_validate(data), added


def load_human(cfg: HumanLabelsConfig, schema: LabelSchema, normalizer: str) -> HumanSnapshot:
    """Read the export's final labels, check them against the schema, split off the held-out
    slice; rows come out in the corpus layout (``training.data.columns``)."""
    path = Path(cfg.path)
    rows = final_rows(read_export(path))
    schema, added = check_labels(rows, schema, cfg.add_labels)
    tasks = [c for c in columns(schema) if c not in ("text", "source", "weight")]
    train_rows, hold_rows = [], []
    counts: dict[str, Counter[str]] = {}
    for r in rows:
        rec: dict[str, Any] = {"text": normalize_text(r["text"], normalizer)}
        for t in tasks:
            label = r["labels"].get(t)
            rec[t] = IGNORE if label is None else schema.task(t).labels.index(label)
        rec.update(source=SOURCE, weight=1.0)
        if held_out(r["text_key"], cfg.holdout, cfg.seed):
            hold_rows.append(rec)
            for t, label in r["labels"].items():
                if label is not None:
                    counts.setdefault(t, Counter())[label] += 1
        else:
            train_rows.append(rec)
    feats = features(schema)

    def table(recs: list[dict[str, Any]]) -> Dataset:
        return Dataset.from_dict({c: [r[c] for r in recs] for c in feats}, features=feats)

    snap = HumanSnapshot(
        path=path.resolve(),
        sha256=file_sha256(path),
        schema=schema,
        train=table(train_rows),
        holdout=table(hold_rows),
        final_rows=len(rows),
        added_labels=added,
        holdout_counts={t: dict(sorted(c.items())) for t, c in sorted(counts.items())},
        holdout_share=cfg.holdout,
        seed=cfg.seed,
    )
    log.info(
        "human labels %s: %d final rows, %d to train on, %d held out",
        path,
        len(rows),
        len(train_rows),
        len(hold_rows),
    )
    return snap


def merge_human(corpus: DatasetDict, snap: HumanSnapshot, tasks: list[str]) -> DatasetDict:
    """``corpus`` with the human rows in training (base rows of the same folded text dropped,
    human rows of public val/test texts left out) and the held-out slice as ``human_holdout``.
    Records the two counts on ``snap``."""
    labeled = {fold_text(t) for t in snap.train["text"]} | {
        fold_text(t) for t in snap.holdout["text"]
    }
    public = {
        fold_text(t)
        for split in ("val", "test")
        for name in split_tables(corpus, split)
        for t in corpus[name]["text"]
    }
    base = corpus["train"]
    keep = [i for i, t in enumerate(base["text"]) if fold_text(t) not in labeled]
    snap.dropped_base_rows = len(base) - len(keep)
    human = snap.train
    mine = [i for i, t in enumerate(human["text"]) if fold_text(t) not in public]
    snap.kept_out_public = len(human) - len(mine)
    human = only_tasks(_like(human.select(mine), base), tasks) if mine else None
    parts = [base.select(keep)] + ([human] if human is not None and len(human) else [])
    out = dict(corpus)
    out["train"] = concatenate_datasets(parts)
    out[HOLDOUT] = snap.holdout
    log.info(
        "human labels win over %d base rows; %d human rows of public val/test texts not trained",
        snap.dropped_base_rows,
        snap.kept_out_public,
    )
    return DatasetDict(out)


def _like(ds: Dataset, ref: Dataset) -> Dataset:
    """``ds`` with ``ref``'s columns and types, so the two concatenate."""
    return ds.select_columns([c for c in ref.column_names if c in ds.column_names]).cast(
        ref.features
    )
