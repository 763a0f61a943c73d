"""``caretriage promote``: a candidate bundle replaces the champion only if it is no worse.

Both bundles are scored here, by the same code, on the same rows: the fixed public test
splits of the candidate's training config and, given the labeling export, the same held-out
slice of human labels the training run kept out (``training.human_labels``: the slice is a
function of each item's text_key, so the same export yields the same slice). The champion is
the bundle the registry's ``champion`` alias points at (its registered name is the config's
``name``). Stored metrics are not reused: a bundle registered before the slice existed, or
scored on other rows, would not be comparable.

The alias moves only if the candidate meets the gate's floors, no task's compared test metric
falls more than ``promotion.max_drop`` points below the champion's, and the human slice's mean
macro-F1 holds (within ``promotion.human_tolerance``). Then the serving pointer file is
rewritten atomically, so a server started with ``CARETRIAGE_MODEL_POINTER`` swaps to the
candidate by itself. Scoring uses ONNX Runtime directly (``training.export.runtime``): training
never imports serving.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from datasets import DatasetDict

from features.bundle import Bundle, read_bundle
from features.schema import LabelSchema
from training.config import REPO_ROOT, HumanLabelsConfig, PromotionConfig, TrainConfig
from training.data import load_corpus
from training.evaluate import Predictor, evaluate
from training.human_labels import HOLDOUT, UnknownLabels, load_human
from training.tracking import (
    BUNDLE_PATH_TAG,
    BUNDLE_VERSION_TAG,
    CHAMPION,
    flatten,
    register_version,
    setup,
)

log = logging.getLogger(__name__)

DEFAULT_POINTER = REPO_ROOT / "models" / "champion.json"
Metrics = dict[str, dict[str, float]]


class PromotionError(RuntimeError):
    """The comparison cannot be made (a bundle or the human slice is unusable)."""


@dataclass
class Scores:
    bundle: str
    version: str
    test: Metrics
    human: Metrics | None = None


@dataclass
class Decision:
    promoted: bool
    reasons: list[str]
    candidate: Scores
    champion: Scores | None
    candidate_registry_version: str | None = None
    champion_registry_version: str | None = None
    pointer: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def bundle_predictor(bundle: Bundle) -> Predictor:
    """texts (normalized as the bundle was trained) -> logits per task, from its ONNX graph."""
    from transformers import PreTrainedTokenizerFast

    from training.export.runtime import ort_predictor, session

    tok = PreTrainedTokenizerFast(tokenizer_file=str(bundle.tokenizer_path))
    tok.pad_token = tok.convert_ids_to_tokens(bundle.meta.pad_token_id)
    sess = session(bundle.onnx_path, config=bundle.meta.ort_session_config or None)
    return ort_predictor(sess, tok, bundle.schema_, bundle.meta.max_length)


def reindexed(predict: Predictor, own: LabelSchema, target: LabelSchema) -> Predictor:
    """``predict``'s logits laid out in ``target``'s labels (matched by name), so a bundle
    with other or fewer labels is scored against the same gold ids: a label it lacks gets
    -1e9 (never predicted), a label only it has is dropped."""
    maps: dict[str, list[int]] = {}
    for task in target.tasks:
        if task.name in own.names:
            mine = own.task(task.name).labels
            maps[task.name] = [mine.index(lab) if lab in mine else -1 for lab in task.labels]
    if all(m == list(range(len(m))) and len(m) == len(own.task(t).labels) for t, m in maps.items()):
        return predict

    def out(texts):
        raw = predict(texts)
        res = {}
        for t, cols in maps.items():
            z = raw[t]
            r = np.full((len(z), len(cols)), -1e9, dtype=z.dtype)
            for i, j in enumerate(cols):
                if j >= 0:
                    r[:, i] = z[:, j]
            res[t] = r
        return res

    return out


def score_bundle(
    path: Path, corpus_for: Callable[[str], DatasetDict], schema: LabelSchema, tasks: list[str]
) -> Scores:
    """A bundle's metrics on the test tables and the human slice of the corpus built with its
    own text normalizer (``corpus_for``), gold labels in ``schema``'s ids."""
    b = read_bundle(path)
    corpus = corpus_for(b.meta.normalizer)
    predict = reindexed(bundle_predictor(b), b.schema_, schema)
    mine = [t for t in tasks if t in b.schema_.names]
    test, _ = evaluate(predict, schema, corpus, "test", tasks=mine)
    human = None
    if HOLDOUT in corpus and len(corpus[HOLDOUT]):
        human, _ = evaluate(predict, schema, corpus, HOLDOUT, tasks=mine)
    return Scores(str(Path(path).resolve()), b.meta.version, test, human)


def decide(
    cand: Scores, champ: Scores | None, rule: PromotionConfig, floors: dict[str, float]
) -> list[str]:
    """Why the candidate may not replace the champion (empty: it may), each reason naming the
    task, the metric and both figures."""
    reasons: list[str] = []
    mine = flatten(cand.test)
    for key, floor in floors.items():
        task, metric = key.split(".", 1)
        v = mine.get(key)
        if v is None:
            reasons.append(f"{task} {metric}: missing from the candidate's test metrics")
        elif v < floor:
            reasons.append(f"{task} {metric}: candidate {v:.2f} is below the floor {floor:g}")
    if champ is None:
        return reasons
    theirs = flatten(champ.test)
    keys = {f"{t}.{m}" for t in cand.test for m in rule.metrics} | set(floors)
    for key in sorted(keys):
        c, p = mine.get(key), theirs.get(key)
        if c is not None and p is not None and c < p - rule.max_drop:
            task, metric = key.split(".", 1)
            reasons.append(
                f"{task} {metric} drops {p - c:.2f} points: candidate {c:.2f}, champion"
                f" {p:.2f} (allowed drop {rule.max_drop:g})"
            )
    if cand.human and champ.human:
        common = [t for t in cand.human if t in champ.human]
        if common:
            c = float(np.mean([cand.human[t]["macro_f1"] for t in common]))
            p = float(np.mean([champ.human[t]["macro_f1"] for t in common]))
            if c < p - rule.human_tolerance:
                fell = ", ".join(
                    f"{t} {cand.human[t]['macro_f1']:.2f} vs {champ.human[t]['macro_f1']:.2f}"
                    for t in common
                    if cand.human[t]["macro_f1"] < champ.human[t]["macro_f1"]
                )
                n = int(max(cand.human[t]["n"] for t in common))
                reasons.append(
                    f"human slice macro-F1 (mean over {', '.join(common)}) falls: candidate"
                    f" {c:.2f}, champion {p:.2f} on up to {n} held-out labels; fell: {fell}"
                )
    return reasons


def write_pointer(path: Path, bundle: Path, version: str) -> Path:
    """Write the serving pointer {"bundle", "version"} atomically (a temporary file in the same
    folder, then rename), so a server polling it never reads half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"bundle": str(Path(bundle).resolve()), "version": version}, indent=2)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(body + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def registered_version(client, name: str, bundle_version: str) -> str | None:
    """The registry version registered from the bundle of that version string, if any."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    for mv in versions:
        if (mv.tags or {}).get(BUNDLE_VERSION_TAG) == bundle_version:
            return str(mv.version)
    return None


def champion_bundle(client, name: str, override: Path | None) -> tuple[str | None, Path | None]:
    """(registry version, bundle folder) of the current champion; (None, None) without one.
    The folder is ``override``, else the one the version was registered from, else the
    bundle logged in its run, downloaded."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None, override
    if override is not None:
        return str(mv.version), override
    local = (mv.tags or {}).get(BUNDLE_PATH_TAG)
    if local and (Path(local) / "bundle.json").is_file():
        return str(mv.version), Path(local)
    try:
        import mlflow

        got = mlflow.artifacts.download_artifacts(
            run_id=mv.run_id, artifact_path="bundle", dst_path=tempfile.mkdtemp(prefix="champ-")
        )
    except MlflowException as e:
        raise PromotionError(
            f"champion {name} v{mv.version}: its bundle is not on this machine and its run"
            f" holds none ({e}); pass --champion-bundle"
        ) from e
    return str(mv.version), Path(got)


def promote(
    candidate: Path,
    cfg: TrainConfig,
    *,
    human: HumanLabelsConfig | None = None,
    pointer: Path | None = DEFAULT_POINTER,
    champion: Path | None = None,
    rule: PromotionConfig | None = None,
    corpus: DatasetDict | None = None,
) -> Decision:
    """Score ``candidate`` and the champion, log the comparison to MLflow, and move the alias
    (registering the candidate first if it is not yet) and write ``pointer`` only when
    ``decide`` finds nothing against it. ``corpus`` replaces the configured data (tests)."""
    from mlflow import MlflowClient

    from training.pipeline import offline

    offline()
    rule = rule or cfg.promotion
    cand = read_bundle(candidate)
    schema = cand.schema_
    cache: dict[str, DatasetDict] = {}

    def corpus_for(normalizer: str) -> DatasetDict:
        if normalizer not in cache:
            base = corpus
            if base is None:
                data = cfg.data.model_copy(update={"normalizer": normalizer, "human": None})
                base = load_corpus(data, schema)
            if human is not None:
                fixed = human.model_copy(update={"add_labels": False})
                try:
                    snap = load_human(fixed, schema, normalizer)
                except UnknownLabels as e:
                    raise PromotionError(
                        f"the candidate cannot be judged on labels it does not predict: {e}"
                    ) from e
                base = DatasetDict({**base, HOLDOUT: snap.holdout})
            cache[normalizer] = base
        return cache[normalizer]

    mlflow = setup(cfg.tracking_uri, cfg.experiment)
    client = MlflowClient()
    name = cfg.name
    champ_version, champ_path = champion_bundle(client, name, champion)
    cand_version = registered_version(client, name, cand.meta.version)
    tasks = list(cfg.data.tasks)
    with mlflow.start_run(run_name=f"{name}-promote"):
        mlflow.set_tags({"job": "promote", "candidate": cand.meta.version})
        c_scores = score_bundle(candidate, corpus_for, schema, tasks)
        p_scores = score_bundle(champ_path, corpus_for, schema, tasks) if champ_path else None
        notes = []
        if champ_version is not None and champ_version == cand_version:
            notes.append(f"the candidate is already the champion ({name} v{champ_version})")
            reasons: list[str] = []
        else:
            reasons = decide(c_scores, p_scores, rule, cfg.gate.floors)
        if human is not None:
            notes.append(f"human slice: {human.path} ({human.holdout:.0%}, seed {human.seed})")
        decision = Decision(
            not reasons, reasons, c_scores, p_scores, cand_version, champ_version, notes=notes
        )
        _log(mlflow, decision, rule)
        if reasons:
            log.warning("promotion refused: %s", "; ".join(reasons))
            return decision
        if cand_version is None:
            cand_version = register_version(mlflow, candidate, name, c_scores.test)
            decision.candidate_registry_version = cand_version
        client.set_registered_model_alias(name, CHAMPION, cand_version)
        mlflow.set_tags({"promoted": "true", "champion_version": cand_version})
        if pointer is not None:
            decision.pointer = str(write_pointer(pointer, candidate, cand.meta.version))
        log.info("%s v%s is the champion; pointer %s", name, cand_version, decision.pointer)
        return decision


def _log(mlflow, d: Decision, rule: PromotionConfig) -> None:
    """The comparison as params, metrics (``candidate.test.topic.macro_f1`` ...) and a file."""
    mlflow.log_params(
        {
            "candidate.bundle": d.candidate.bundle,
            "candidate.version": d.candidate.version,
            "champion.bundle": d.champion.bundle if d.champion else "none",
            "champion.version": d.champion.version if d.champion else "none",
            "max_drop": rule.max_drop,
            "human_tolerance": rule.human_tolerance,
        }
    )
    for who, s in (("candidate", d.candidate), ("champion", d.champion)):
        if s is not None:
            mlflow.log_metrics(flatten(s.test, f"{who}.test."))
            if s.human:
                mlflow.log_metrics(flatten(s.human, f"{who}.human."))
    mlflow.log_dict(d.to_dict(), "promotion.json")
    mlflow.set_tags({"promoted": str(d.promoted).lower(), "refusal": "; ".join(d.reasons)[:5000]})
