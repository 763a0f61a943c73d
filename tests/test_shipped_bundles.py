"""The bundles the repository ships (models/*), as a fresh clone serves them: each loads in
ONNX Runtime alone, passes its own self-check here, carries its deployment's label schema,
meets its deployment's quality floors on the figures it records, and stays within the size
budget; the Banking77 bundle is served with nothing but CARETRIAGE_MODEL_DIR and answers
with intents."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from features.bundle import read_bundle
from features.schema import LabelSchema
from serving.app import create_app
from serving.inference import Scorer
from serving.settings import Settings

REPO = Path(__file__).resolve().parent.parent
# bundle folder -> its deployment
SHIPPED = {"caretriage-minilm": "airline", "caretriage-banking77": "banking77"}
MAX_MB = 25.0
KEY = "test-key-0123456789abcdef"


def size_mb(folder: Path) -> float:
    """What the export gate measures (training.export.dir_mb), without importing training."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


@pytest.mark.parametrize(("folder", "deployment"), SHIPPED.items())
def test_a_shipped_bundle_serves_as_its_deployment_promised(folder, deployment):
    path = REPO / "models" / folder
    bundle = read_bundle(path)
    dep = REPO / "deployments" / deployment
    assert bundle.schema_ == LabelSchema.load(dep / "label_schema.yaml")
    assert size_mb(path) <= MAX_MB
    floors = yaml.safe_load((dep / "train.yaml").read_text())["gate"]["floors"]
    for key, floor in floors.items():
        task, metric = key.split(".")
        assert bundle.meta.metrics[task][metric] >= floor, (key, bundle.meta.metrics[task])
    scorer = Scorer(bundle)
    scorer.warmup()
    # Exported on another host (AMX, VNNI, AVX2 int8 kernels round differently), the logits
    # may move by a few thousandths; the labels must not.
    check = scorer.self_check
    assert check is not None, "a shipped bundle records its self-check"
    assert min(check["agreement"].values()) >= 99.0, check


def test_banking77_is_served_with_its_own_policy_and_answers_with_intents(tmp_path):
    path = REPO / "models" / "caretriage-banking77"
    settings = Settings(
        api_keys=[KEY], model_dir=path, database_url=f"sqlite:///{tmp_path / 'b.db'}"
    )
    intents = LabelSchema.load(path / "label_schema.json").task("topic").labels
    with TestClient(create_app(settings)) as c:
        r = c.post(
            "/v1/score",
            headers={"Authorization": f"Bearer {KEY}"},
            json={"posts": [{"id": "a", "text": "my card payment was declined twice today"}]},
        )
    assert r.status_code == 200, r.text
    topic = r.json()["results"][0]["topic"]
    assert topic["label"] in intents and set(topic["scores"]) == set(intents)
