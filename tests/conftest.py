"""Shared fixtures. The model fixtures build a tiny randomly initialised multi-task BERT and
export it through the real export path, so serving tests run on a genuine bundle in seconds."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from features.schema import LabelSchema, default_schema_path


@pytest.fixture(scope="session")
def schema() -> LabelSchema:
    return LabelSchema.load(default_schema_path())


@pytest.fixture(scope="session")
def tiny_corpus(schema):
    from tests.synthetic import corpus

    return corpus(schema)


@pytest.fixture(scope="session")
def tiny_model(schema):
    pytest.importorskip("torch")
    from transformers import AutoTokenizer

    from training.config import default_base_model
    from training.model import MultiTaskModel

    tokenizer = AutoTokenizer.from_pretrained(default_base_model())
    return MultiTaskModel.tiny(schema, vocab_size=len(tokenizer)).eval(), tokenizer


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, schema, tiny_corpus, tiny_model) -> Path:
    """A real int8 bundle folder exported from the tiny random model (gate relaxed: a random
    model has no accuracy to preserve; parity is still checked)."""
    from training.export.bundle import build_bundle
    from training.export.config import ExportConfig
    from training.export.gate import ExportGate

    model, tokenizer = tiny_model
    out = tmp_path_factory.mktemp("bundle") / "tiny"
    config = ExportConfig(
        name="tiny",
        base_model="random-tiny-bert",
        max_length=64,
        temperatures={"topic": 1.0, "sentiment": 1.5, "actionability": 1.0},
        gate=ExportGate(int8_min_agreement=0.0, int8_max_metric_drop=100.0),
    )
    build_bundle(model, tokenizer, schema, tiny_corpus, out, config)
    return out


@pytest.fixture(scope="session")
def onnx_bundle(tmp_path_factory) -> Path:
    """A bundle built with the ``onnx`` package alone (no torch): a random embedding, masked
    mean-pooling and one linear head per task, with the real MiniLM tokenizer. Serving tests
    use it so they run in well under a second and without the training extras."""
    pytest.importorskip("onnx")
    from tests._tiny_onnx import build_onnx_bundle

    return build_onnx_bundle(tmp_path_factory.mktemp("onnx_bundle") / "tiny")


def migration_head() -> str:
    """The newest Alembic revision in serving/migrations (each issue may add one)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from serving.store import MIGRATIONS

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


# -- PostgreSQL ----------------------------------------------------------------------------------

PG_URL = os.environ.get(
    "CARETRIAGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _pg_engine():
    """An engine on the test server, or a skip; under CI (``CI=true``) a failure, since the
    CI machine starts PostgreSQL and a silent skip would hide the store tests."""
    from sqlalchemy import create_engine, text

    from serving.store import normalize_url

    engine = create_engine(normalize_url(PG_URL))
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
    except Exception as e:
        engine.dispose()
        msg = (
            f"PostgreSQL unreachable at {PG_URL} ({type(e).__name__}); start it (this machine: "
            "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start) or set "
            "CARETRIAGE_TEST_POSTGRES_URL"
        )
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(msg + "; under CI=true the PostgreSQL tests must run", pytrace=False)
        pytest.skip(msg)
    return engine


@pytest.fixture(scope="session")
def pg_schemas() -> Iterator[Callable[[], str]]:
    """Makes schemas unique to this test session (dropped at its end), so that concurrent
    runs and tests needing an empty database never collide."""
    pytest.importorskip("psycopg")
    from sqlalchemy import text

    engine = _pg_engine()
    made: list[str] = []

    def make() -> str:
        name = f"caretriage_test_{uuid.uuid4().hex[:12]}"
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{name}"'))
        made.append(name)
        return name

    yield make
    with engine.begin() as conn:
        for name in made:
            conn.execute(text(f'DROP SCHEMA "{name}" CASCADE'))
    engine.dispose()


@pytest.fixture(scope="session")
def pg_schema(pg_schemas) -> str:
    """One schema shared by the session's tests."""
    return pg_schemas()
