"""MLflow: the run, its whole config, metrics, figures and artifacts; the registry and the
``champion`` alias that moves only when the quality gate passes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pydantic import BaseModel, Field

log = logging.getLogger(__name__)

CHAMPION = "champion"
# Model-version tag holding the metrics the version was gated on (its bundle's test metrics).
METRICS_TAG = "metrics"
# Model-version tags naming the bundle a version was registered from: its version string and
# the folder it was exported to.
BUNDLE_VERSION_TAG = "bundle_version"
BUNDLE_PATH_TAG = "bundle_path"


class QualityGate(BaseModel):
    """Floors a model must meet, and how far below the current champion it may fall.

    The floors are the non-neural references on the same splits (TF-IDF + logistic regression
    for airline sentiment and topic; the 2019 feature-based complaint model): a transformer
    that cannot beat them is broken, whatever the champion does. Above the floors, the gate
    compares with the champion."""

    floors: dict[str, float] = Field(
        default_factory=lambda: {
            "sentiment.macro_f1": 76.9,
            "topic.macro_f1": 57.5,
            "actionability.complaint_vs_rest_macro_f1": 78.8,
        }
    )
    max_regression: float = 0.5

    def check(
        self, metrics: dict[str, dict[str, float]], champion: dict[str, float] | None
    ) -> list[str]:
        """The reasons the gate fails; empty when it passes."""
        flat = flatten(metrics)
        failures = []
        for key, floor in self.floors.items():
            v = flat.get(key)
            if v is None:
                failures.append(f"{key} missing")
            elif v < floor:
                failures.append(f"{key} {v} < floor {floor}")
            elif champion and key in champion and v < champion[key] - self.max_regression:
                failures.append(f"{key} {v} < champion {champion[key]} - {self.max_regression}")
        return failures


def flatten(metrics: dict[str, dict[str, float]], prefix: str = "") -> dict[str, float]:
    return {f"{prefix}{t}.{k}": float(v) for t, m in metrics.items() for k, v in m.items()}


def flat_params(obj: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_params(v, key + "."))
        else:
            out[key] = str(v)[:500]
    return out


def setup(tracking_uri: str, experiment: str):
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    return mlflow


def log_config(mlflow, config: BaseModel) -> None:
    """The whole typed config: as a JSON artifact and as flat params for search."""
    d = json.loads(config.model_dump_json())
    mlflow.log_dict(d, "config.json")
    mlflow.log_params(flat_params(d))


def champion_metrics(client, name: str) -> dict[str, float] | None:
    """The served (bundle) test metrics of the version the ``champion`` alias points at, if
    any: the same figures a candidate is gated on. A run can hold several exports, so they are
    read from the version's own tag; versions registered before the tag existed fall back to
    the run's PyTorch test metrics."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    if METRICS_TAG in (mv.tags or {}):
        return {k: float(v) for k, v in json.loads(mv.tags[METRICS_TAG]).items()}
    run = client.get_run(mv.run_id)
    return {
        k.removeprefix("test."): v for k, v in run.data.metrics.items() if k.startswith("test.")
    }


def register_version(mlflow, bundle: Path, name: str, metrics) -> str:
    """Log the bundle into the active run and register its ONNX graph as a new version of
    ``name``, tagged with the metrics it is judged on and where the bundle is (its version
    string and folder), so ``caretriage promote`` can find and score it later."""
    import onnx
    from mlflow import MlflowClient

    from features.bundle import read_bundle

    mlflow.log_artifacts(str(bundle), artifact_path="bundle")
    client = MlflowClient()
    info = mlflow.onnx.log_model(
        onnx.load(str(bundle / "model.onnx")), name="model", registered_model_name=name
    )
    version = str(info.registered_model_version)
    client.set_model_version_tag(name, version, METRICS_TAG, json.dumps(flatten(metrics)))
    tags = {BUNDLE_VERSION_TAG: read_bundle(bundle).meta.version}
    tags[BUNDLE_PATH_TAG] = str(Path(bundle).resolve())
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    return version


def register_bundle(mlflow, bundle: Path, name: str, metrics, gate: QualityGate) -> dict:
    """Log the bundle, register its ONNX graph as a new version of ``name``, and move the
    champion alias to it only when the gate passes against floors and the current champion."""
    from mlflow import MlflowClient

    client = MlflowClient()
    before = champion_metrics(client, name)
    version = register_version(mlflow, bundle, name, metrics)
    failures = gate.check(metrics, before)
    result = {"name": name, "version": version, "gate_failures": failures, "champion": False}
    if not failures:
        client.set_registered_model_alias(name, CHAMPION, version)
        result["champion"] = True
        log.info("%s v%s passed the quality gate: alias %r moved", name, version, CHAMPION)
    else:
        client.set_model_version_tag(name, version, "gate_failures", "; ".join(failures))
        log.warning("%s v%s failed the quality gate: %s", name, version, failures)
    mlflow.set_tags({"registered_version": version, "champion": str(result["champion"])})
    return result
