"""The cross-validation study's bookkeeping: which folds run, what is saved after each, and
how an interrupted study resumes. Training itself is replaced by a stub that derives each
fold's metrics from the fold, so the test can check where every figure came from."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

pytest.importorskip("torch")

from training import studies
from training.config import TrainConfig


@pytest.fixture
def calls(monkeypatch):
    ran: list[tuple[int, int | None, bool]] = []

    def fake_run(cfg, export=True):
        k = cfg.data.complaints_test_fold
        ran.append((k, cfg.data.val_fold, cfg.register_model))
        return SimpleNamespace(metrics={"actionability": {"f1": 80.0 + k}}, selected=f"e{k}")

    monkeypatch.setattr(studies, "run", fake_run)
    return ran


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(tiny=True, base_model="unused", **kw)


def test_each_fold_is_tested_once_validated_on_the_next_and_never_registered(calls, tmp_path):
    res = studies.cross_validate(_cfg(), folds=[0, 9, 4])
    assert calls == [(0, 1, False), (9, 0, False), (4, 5, False)]
    assert res["mean"]["f1"] == pytest.approx(80 + (0 + 9 + 4) / 3, abs=0.01)
    assert res["weights_kept"] == {"0": "e0", "4": "e4", "9": "e9"}


def test_an_interrupted_study_resumes_from_its_file(calls, tmp_path, monkeypatch):
    out = tmp_path / "cv.json"
    studies.cross_validate(_cfg(), folds=[0, 1], out=out)
    saved = json.loads(out.read_text())
    assert sorted(saved["folds"]) == ["0", "1"]

    calls.clear()
    res = studies.cross_validate(_cfg(), folds=[0, 1, 2], out=out)
    assert [k for k, _, _ in calls] == [2]  # 0 and 1 came from the file
    assert res["folds"] == {"0": {"f1": 80.0}, "1": {"f1": 81.0}, "2": {"f1": 82.0}}
    assert sorted(json.loads(out.read_text())["folds"]) == ["0", "1", "2"]


def test_the_file_is_written_after_every_fold(calls, tmp_path, monkeypatch):
    out = tmp_path / "cv.json"
    seen: list[list[str]] = []
    inner = studies.run

    def watching_run(cfg, export=True):
        if out.is_file():
            seen.append(sorted(json.loads(out.read_text())["folds"]))
        return inner(cfg, export=export)

    monkeypatch.setattr(studies, "run", watching_run)
    studies.cross_validate(_cfg(), folds=[3, 4, 5], out=out)
    assert seen == [["3"], ["3", "4"]]


def test_folds_of_another_config_are_not_reused(calls, tmp_path):
    out = tmp_path / "cv.json"
    studies.cross_validate(_cfg(epochs=4), folds=[0], out=out)
    calls.clear()
    res = studies.cross_validate(_cfg(epochs=6), folds=[0], out=out)
    assert [k for k, _, _ in calls] == [0]
    assert json.loads(out.read_text())["config"]["epochs"] == 6
    assert res["folds"] == {"0": {"f1": 80.0}}


def test_export_only_settings_do_not_invalidate_saved_folds(calls, tmp_path):
    """A CV never exports, so lexical-expert settings leave its saved folds valid."""
    from training.config import LexicalConfig

    out = tmp_path / "cv.json"
    studies.cross_validate(_cfg(), folds=[0], out=out)
    calls.clear()
    studies.cross_validate(_cfg(lexical=LexicalConfig(tasks=["sentiment"])), folds=[0], out=out)
    assert calls == []
    studies.cross_validate(_cfg(lexical=None, seed=1), folds=[0], out=out)
    assert [k for k, _, _ in calls] == [0]  # the seed does change what a fold trains


def test_a_study_file_resumes_from_another_checkout(calls, tmp_path):
    """The same model, schema and data at other paths (another machine, a fresh clone) keep
    the saved folds; different content does not."""
    import shutil

    from features.schema import default_schema_path

    def layout(root):
        (root / "model").mkdir(parents=True)
        (root / "model" / "config.json").write_text('{"hidden_size": 384}')
        (root / "data" / "complaints").mkdir(parents=True)
        (root / "data" / "complaints" / "complaints.csv").write_text("id,text\n1,hi\n")
        shutil.copy(default_schema_path(), root / "schema.yaml")
        return root

    def cfg(root):
        return TrainConfig(
            tiny=True,
            base_model=str(root / "model"),
            label_schema=root / "schema.yaml",
            data={"data_dir": root / "data"},
        )

    a, b = layout(tmp_path / "a"), layout(tmp_path / "b")
    out = tmp_path / "cv.json"
    studies.cross_validate(cfg(a), folds=[0], out=out)
    calls.clear()
    studies.cross_validate(cfg(b), folds=[0], out=out)
    assert calls == []  # same content elsewhere: resumed

    (b / "data" / "complaints" / "complaints.csv").write_text("id,text\n1,hi\n2,yo\n")
    studies.cross_validate(cfg(b), folds=[0], out=out)
    assert [k for k, _, _ in calls] == [0]  # other data: run again
