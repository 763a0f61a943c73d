"""Deployments bring their own taxonomy and data: config-driven sources, the shipped default
reproduced row for row, the Banking77 deployment's topics, and a schema's further tasks."""

from __future__ import annotations

import collections
import json

import pytest

from features.schema import LabelSchema, default_schema_path
from tests import legacy_data
from tests.synthetic import write_data_dir
from training.config import (
    DEPLOYMENTS_DIR,
    DataConfig,
    SourceConfig,
    TrainConfig,
    default_data_dir,
    deployment_config_path,
    load_train_config,
)
from training.data import IGNORE, load_corpus
from training.evaluate import eval_sets

REAL = (default_data_dir() / "complaints" / "complaints.csv").is_file()
BANKING = DEPLOYMENTS_DIR / "banking77"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_data_dir(tmp_path_factory.mktemp("shared") / "data")


def assert_same_corpus(new, old) -> None:
    assert list(new) == list(old)
    for name in old:
        assert new[name].features == old[name].features, name
        assert new[name].to_list() == old[name].to_list(), name
    for split in ("val", "test"):
        assert eval_sets(new, split) == legacy_data.eval_sets(old, split)


@pytest.mark.parametrize(
    "over",
    [
        {},
        {"use_tweeteval": False},
        {"complaints_val_fold": None, "complaints_test_fold": 3},
        {"tasks": ["sentiment"]},
        {"weight_by_confidence": True, "normalizer": "tweet-v2"},
        {"max_rows": 7},
    ],
)
def test_default_sources_build_the_legacy_corpus(data_dir, schema, over):
    cfg = DataConfig(data_dir=data_dir, **over)
    assert_same_corpus(load_corpus(cfg, schema), legacy_data.load_corpus(cfg, schema))


@pytest.mark.skipif(not REAL, reason=f"shared data not found at {default_data_dir()}")
def test_default_sources_build_the_legacy_corpus_on_the_real_data(schema):
    cfg = DataConfig()
    new = load_corpus(cfg, schema)
    assert_same_corpus(new, legacy_data.load_corpus(cfg, schema))
    assert len(new["train"]) == 16347


def test_the_airline_deployment_is_the_shipped_recipe():
    """Every setting of deployments/airline equals the default config's (sources compared as
    what they read), and its schema file is the shipped one, byte for byte."""
    dep, default = load_train_config(deployment_config_path("airline")), TrainConfig()
    a, d = dep.model_dump(exclude={"label_schema"}), default.model_dump(exclude={"label_schema"})
    a["data"].pop("sources"), d["data"].pop("sources")
    assert a == d
    assert [s.resolved() for s in dep.data.sources] == [s.resolved() for s in default.data.sources]
    assert dep.label_schema.read_bytes() == default_schema_path().read_bytes()


def test_an_unknown_deployment_is_named_with_the_known_ones():
    with pytest.raises(ValueError, match=r"'nope'.*airline.*banking77"):
        deployment_config_path("nope")


def test_banking77_deployment_reads_its_intents_and_keeps_the_shipped_tasks(data_dir):
    cfg = load_train_config(BANKING / "train.yaml")
    cfg.data.data_dir = data_dir
    schema = LabelSchema.load(cfg.label_schema)
    topics = schema.task("topic").labels
    assert len(topics) == 77 and "refund_not_showing_up" in topics
    assert "reverted_card_payment" in topics and all(t == t.lower() for t in topics)
    assert schema.task("sentiment") == LabelSchema.load(default_schema_path()).task("sentiment")
    c = load_corpus(cfg.data, schema)
    assert list(c) == [
        "train", "banking77_val", "banking77_test", "val", "test", "complaints_test",
        "complaints_val",
    ]  # fmt: skip
    # Airline rows label sentiment only: their reasons are not this taxonomy.
    assert set(c["test"]["topic"]) == {IGNORE} and set(c["train"].filter(
        lambda ex: ex["source"] == "airline")["topic"]) == {IGNORE}  # fmt: skip
    test = eval_sets(c, "test")
    assert len(test["topic"][0]) == 60  # the banking77 test file
    assert len(test["sentiment"][0]) == len(c["test"])
    # Raw categories are snake-cased onto the schema.
    names = {topics[y] for y in test["topic"][1]}
    assert names <= {
        "card_arrival", "refund_not_showing_up", "reverted_card_payment", "pin_blocked"
    }  # fmt: skip
    counts = collections.Counter(c["train"].filter(lambda ex: ex["source"] == "banking77")["topic"])
    val = collections.Counter(c["banking77_val"]["topic"])
    for label, n in counts.items():  # 10% of each intent, by a stable hash
        assert val[label] == round(0.1 * (n + val[label]))
    again = load_corpus(cfg.data, schema)
    assert again["banking77_val"]["text"] == c["banking77_val"]["text"]


@pytest.mark.skipif(not REAL, reason=f"shared data not found at {default_data_dir()}")
def test_banking77_deployment_on_the_real_data():
    cfg = load_train_config(BANKING / "train.yaml")
    schema = LabelSchema.load(cfg.label_schema)
    c = load_corpus(cfg.data, schema)
    assert len(c["banking77_test"]) == 3080 and min(c["banking77_test"]["topic"]) >= 0
    n_train = sum(s == "banking77" for s in c["train"]["source"])
    assert n_train + len(c["banking77_val"]) == 10003
    assert len(set(c["banking77_val"]["topic"])) == 77 == len(set(c["banking77_test"]["topic"]))
    assert len(eval_sets(c, "val")["topic"][0]) == len(c["banking77_val"])


def test_a_tabular_source_refuses_labels_the_schema_lacks(tmp_path, schema):
    path = tmp_path / "posts.jsonl"
    rows = [{"body": "bag lost", "t": "lost_luggage"}, {"body": "wifi!", "t": "Wifi Broken"}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    src = {"kind": "jsonl", "path": str(path), "text": "body", "tasks": {"topic": "t"}}
    with pytest.raises(ValueError, match=r"topic labels the schema lacks: 'Wifi Broken' \(1\)"):
        load_corpus(DataConfig(data_dir=tmp_path, sources=[src]), schema)
    ok = DataConfig(
        data_dir=tmp_path, sources=[src | {"label_map": {"topic": {"Wifi Broken": None}}}]
    )
    c = load_corpus(ok, schema)
    assert c["train"]["topic"] == [schema.task("topic").index("lost_luggage")]
    with pytest.raises(ValueError, match="no column"):
        load_corpus(DataConfig(data_dir=tmp_path, sources=[src | {"text": "nope"}]), schema)


def test_a_split_column_makes_the_sources_tables(tmp_path, schema):
    path = tmp_path / "mine.csv"
    lines = ["text,sent,split"] + [
        f"post {i},{['negative', 'positive'][i % 2]},{['train', 'dev', 'test'][i % 3]}"
        for i in range(12)
    ]
    path.write_text("\n".join(lines) + "\n")
    src = SourceConfig(kind="csv", path=path, tasks={"sentiment": "sent"}, split_column="split")
    c = load_corpus(DataConfig(data_dir=tmp_path, sources=[src]), schema)
    assert list(c) == ["train", "mine_val", "mine_test"]
    assert [len(c[k]) for k in c] == [4, 4, 4]
    assert c["mine_test"]["text"] == ["post 2", "post 5", "post 8", "post 11"]


def test_a_schema_may_add_a_task_and_the_model_grows_a_head_for_it(tmp_path, schema):
    """A further task (here ``urgency``) gets its column, its eval rows and its own head."""
    pytest.importorskip("torch")
    from training.train import train

    data = schema.model_dump()
    data["tasks"].append({"name": "urgency", "labels": ["now", "later"]})
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(data))
    grown = LabelSchema.load(path)
    rows = tmp_path / "urgency.csv"
    lines = ["text,u,split"] + [
        f"post {i} {'asap' if i % 2 else 'whenever'},{['later', 'now'][i % 2]},"
        f"{['train', 'train', 'val', 'test'][i % 4]}"
        for i in range(40)
    ]
    rows.write_text("\n".join(lines) + "\n")
    src = SourceConfig(kind="csv", path=rows, tasks={"urgency": "u"}, split_column="split")
    cfg = TrainConfig(
        tiny=True, epochs=1, batch_size=8, max_length=16, threads=1, label_schema=path,
        data=DataConfig(data_dir=tmp_path, sources=[src], tasks=["urgency"]), lexical=None,
    )  # fmt: skip
    corpus = load_corpus(cfg.data, grown)
    assert "urgency" in corpus["train"].column_names
    assert len(eval_sets(corpus, "val")["urgency"][0]) == 10
    trained = train(cfg, corpus)
    assert trained.model.heads["urgency"].out_features == 2
    assert "val_urgency_macro_f1" in trained.history[0]


def test_the_banking77_policy_names_only_its_topics():
    """The server refuses a model whose topics lack labels its policy names: Banking77
    bundles are served with the deployment's policy."""
    yaml = pytest.importorskip("yaml")
    from serving.priority import Policy, default_policy_path

    schema = LabelSchema.load(BANKING / "label_schema.yaml")
    topics = schema.task("topic").labels
    mine = Policy.model_validate(yaml.safe_load((BANKING / "policy.yaml").read_text()))
    assert mine.priority.unknown_topic_labels(topics) == []
    shipped = Policy.model_validate(yaml.safe_load(default_policy_path().read_text()))
    assert shipped.priority.unknown_topic_labels(topics)  # why the deployment ships its own


def test_the_cli_reads_a_deployment_and_its_overrides(tmp_path):
    from caretriage_cli import _train_config, parser

    args = parser().parse_args(
        ["train", "--deployment", "banking77", "--tiny", "--max-rows", "50", "--epochs", "1"]
    )
    cfg = _train_config(args)
    assert cfg.name == "caretriage-banking77" and cfg.tiny and cfg.epochs == 1
    assert cfg.data.max_rows == 50 and cfg.label_schema == BANKING / "label_schema.yaml"
    assert cfg.gate.floors["topic.macro_f1"] == 88.6
    with pytest.raises(SystemExit, match="not both"):
        _train_config(parser().parse_args(["train", "--deployment", "x", "--config", "y"]))


def test_the_banking77_deployment_trains_and_exports_end_to_end(data_dir, tmp_path):
    """`caretriage train --deployment banking77` on the synthetic data folder with the tiny
    random encoder: train, evaluate on the deployment's test tables, export, register."""
    pytest.importorskip("torch")
    pytest.importorskip("mlflow")
    from features.bundle import read_bundle
    from training.export.gate import ExportGate
    from training.pipeline import run

    cfg = load_train_config(BANKING / "train.yaml")
    cfg = cfg.model_copy(
        update={
            "tiny": True, "epochs": 1, "batch_size": 16, "max_length": 32, "threads": 1,
            "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "output_dir": tmp_path / "out",
        }
    )  # fmt: skip
    cfg.data.data_dir = data_dir
    relaxed = ExportGate(int8_min_agreement=0.0, int8_max_metric_drop=100.0)
    res = run(cfg, tmp_path / "served", export_gate=relaxed)
    assert res.metrics["topic"]["n"] == 60  # the banking77 test file, not airline tweets
    assert res.registry["name"] == "caretriage-banking77"
    assert any("topic.macro_f1" in f and "floor 88.6" in f for f in res.registry["gate_failures"])
    b = read_bundle(res.bundle)
    assert len(b.schema_.task("topic").labels) == 77 and b.meta.name == "caretriage-banking77"
    card = (res.bundle / "MODEL_CARD.md").read_text()
    assert "`banking77` (csv, `banking77`: train `train.csv`, test `test.csv`; 10%" in card
    assert "floor 88.6" in card
