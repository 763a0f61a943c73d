"""The retraining loop, end to end, on one running server that is never restarted: a
deployment gains a topic (``baggage_fees``), people label, the labels leave as an export,
a model is trained on them with the grown head, promoted, and the server swaps to it.

How the new label gets labeled. The server runs with ``CARETRIAGE_LABEL_SCHEMA`` naming the
deployment's ``label_schema.yaml`` (the taxonomy's source of truth: training reads it too).
The workspace offers the served model's schema united with that file's, re-read when the
file changes. So: an evaluator's answer naming ``baggage_fees`` is refused (422,
``labels.topic``) until the lead appends the label to the file; then the running workspace
offers it (no suggestion: the served model lacks it) and the same answer goes in.
``caretriage labels export --label-schema`` writes its columns from the same united schema.
(A Label Studio round trip is the other path; tests/test_labeling_export.py covers it.)

``--add-labels`` is passed to ``caretriage train`` as a team would for an export that may
hold labels the schema lacks; here the deployment's schema already has ``baggage_fees``, so
it adds nothing and the label's id comes from the schema file (appended: old ids kept).

Two random tiny models have noise for metrics, so the deployment's quality-gate floors are
empty and ``caretriage promote`` runs with a wide ``--margin`` and ``--human-tolerance``: the
comparison is made and logged against the real champion (the first model), but cannot refuse
on noise. Its decisions are tested in ``tests/test_promote.py``.

The CLI steps run in-process (``caretriage_cli.main``; a subprocess would pay the imports
again per command); every HTTP call and wait has a timeout, and a watchdog dumps the stacks
and ends the run if the whole test hangs past ``WATCHDOG_SECONDS``.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import re
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

pytest.importorskip("torch")
pytest.importorskip("mlflow")
yaml = pytest.importorskip("yaml")

from features.bundle import read_bundle  # noqa: E402
from features.labels_export import read_export  # noqa: E402
from features.schema import LabelSchema  # noqa: E402
from tests.live import LiveServer  # noqa: E402
from tests.synthetic import write_data_dir  # noqa: E402
from training.config import DEPLOYMENTS_DIR  # noqa: E402

NEW = "baggage_fees"
PASSWORD = "retrain-loop-password"
SESSION_SECRET = "retrain-loop-session-secret-0123456789abcdef"
WATCHDOG_SECONDS = 300
HTTP_TIMEOUT = 30.0
SWAP_TIMEOUT = 30.0

CITIES = ["Denver", "Boston", "Austin", "Newark", "Dallas", "Chicago"]
# text -> the labels a person gives it (every task of the schema).
OLD_TOPIC_POSTS = {
    **{
        f"@airline my bag never showed up in {c}, nobody answers the phone": {
            "topic": "lost_luggage", "sentiment": "negative", "actionability": "complaint",
        }
        for c in CITIES
    },
    **{
        f"@airline flight to {c} delayed three hours again, I missed my meeting": {
            "topic": "late_flight", "sentiment": "negative", "actionability": "complaint",
        }
        for c in CITIES
    },
}  # fmt: skip
FEE_POSTS = {
    f"@airline you charged me ${fee} to check one bag to {c}?? that is robbery": {
        "topic": NEW, "sentiment": "negative", "actionability": "complaint",
    }
    for fee, c in zip((30, 35, 40, 45, 50, 55, 60, 65), [*CITIES, "Miami", "Seattle"], strict=True)
}  # fmt: skip
GOLD = {**OLD_TOPIC_POSTS, **FEE_POSTS}


# -- helpers ---------------------------------------------------------------------------------


def cli(capsys, *argv: str) -> tuple[int, dict]:
    """Run ``caretriage ARGV`` in-process; its exit code and the JSON it printed last."""
    from caretriage_cli import main

    capsys.readouterr()
    rc = main(list(argv))
    out = capsys.readouterr().out
    found = re.search(r"^\{.*\}\s*\Z", out, re.S | re.M)
    return rc, json.loads(found.group(0)) if found else {}


def make_deployment(root: Path, data_dir: Path) -> Path:
    """deployments/airline copied: its schema as shipped (no ``baggage_fees`` yet), its
    train.yaml with this test's data folder and output folder and no quality-gate floors
    (a random tiny model cannot reach the real ones); small tensors for speed."""
    dep = root / "deployment"
    dep.mkdir()
    shutil.copy(DEPLOYMENTS_DIR / "airline" / "label_schema.yaml", dep / "label_schema.yaml")
    cfg = yaml.safe_load((DEPLOYMENTS_DIR / "airline" / "train.yaml").read_text())
    cfg["name"] = "caretriage-retrain-loop"
    cfg["data"]["data_dir"] = str(data_dir)
    cfg["output_dir"] = str(root / "train")
    cfg["gate"]["floors"] = {}
    cfg.update(max_length=32, batch_size=16)
    (dep / "train.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dep


def add_topic(dep: Path, label: str) -> None:
    """What the lead does: append the label to the deployment's topic labels."""
    path = dep / "label_schema.yaml"
    data = yaml.safe_load(path.read_text())
    topic = next(t for t in data["tasks"] if t["name"] == "topic")
    topic["labels"].append(label)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def sign_in(server: LiveServer, name: str) -> tuple[httpx.Client, dict[str, str]]:
    """A client signed in through the /login form (no API key), and its CSRF header."""
    c = server.client(auth=False, timeout=HTTP_TIMEOUT, follow_redirects=False)
    page = c.get("/login", params={"next": "/label"})
    assert page.status_code == 200, page.text[:300]
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf, page.text[:300]
    r = c.post(
        "/login",
        data={"name": name, "password": PASSWORD, "csrf": csrf.group(1), "next": "/label"},
    )
    assert r.status_code == 303, r.text[:300]
    me = c.get("/v1/labeling/me")
    assert me.status_code == 200 and me.json()["name"] == name, me.text
    return c, {"X-CSRF-Token": me.json()["csrf_token"]}


def offered(c: httpx.Client) -> list[str]:
    """The topic labels the workspace offers the signed-in evaluator."""
    return c.get("/v1/labeling/me").json()["tasks"]["topic"]


def wait_for(ready, timeout: float = SWAP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail(f"not ready within {timeout:g}s")
        time.sleep(0.2)


class Scorer(threading.Thread):
    """One helpdesk client scoring posts back to back (briefly pausing, the cores are shared)
    while the model is promoted and swapped: each response's model version, every failure."""

    POSTS: ClassVar[dict] = {
        "posts": [{"id": f"h{i}", "text": t} for i, t in enumerate(list(GOLD)[::5])]
    }

    def __init__(self, server: LiveServer) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.stop = threading.Event()
        self.versions: list[str] = []
        self.errors: list[str] = []

    def run(self) -> None:
        with self.server.client(timeout=HTTP_TIMEOUT) as c:
            while not self.stop.is_set():
                try:
                    r = c.post("/v1/score", json=self.POSTS)
                except httpx.HTTPError as e:
                    self.errors.append(f"{type(e).__name__}: {e}")
                else:
                    if r.status_code == 200:
                        self.versions.append(r.json()["model_version"])
                    else:
                        self.errors.append(f"{r.status_code} {r.text[:200]}")
                self.stop.wait(0.1)


@pytest.fixture
def watchdog():
    """A hang anywhere (an in-process CLI step has no timeout of its own) dumps every
    thread's stack and ends the run instead of holding the machine."""
    faulthandler.dump_traceback_later(WATCHDOG_SECONDS, exit=True, file=sys.__stderr__)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


# -- the loop ----------------------------------------------------------------------------------


def test_a_new_label_goes_from_labeling_to_the_running_server_without_a_restart(
    tmp_path, capsys, monkeypatch, watchdog
):
    from serving.labeling.accounts import hash_password
    from serving.labeling.store import LabelingStore
    from serving.store import Store
    from training.promote import write_pointer

    # MLflow puts a new experiment's artifacts under ./mlruns: keep them in tmp_path, not in
    # the repository (every path below is absolute; the server runs from the repository).
    monkeypatch.chdir(tmp_path)
    data_dir = write_data_dir(tmp_path / "data", n=60)
    dep = make_deployment(tmp_path, data_dir)
    config = str(dep / "train.yaml")
    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    pointer = tmp_path / "serving" / "champion.json"
    small = ["--tiny", "--epochs", "1", "--threads", "1", "--max-rows", "60"]

    # 1. The first model, from the deployment as it is (no baggage_fees): it passes the
    #    (floor-less) gate and becomes the registry's champion; the pointer names it.
    rc, first = cli(capsys, "train", "--config", config, *small, "--tracking-uri", tracking)
    assert rc == 0 and first["registry"]["champion"], first
    v1 = Path(first["bundle"])
    v1_meta = read_bundle(v1)
    old_topics = v1_meta.schema_.task("topic").labels
    assert NEW not in old_topics
    write_pointer(pointer, v1, v1_meta.meta.version)

    env = {
        "CARETRIAGE_MODEL_POINTER": str(pointer),
        "CARETRIAGE_MODEL_POLL_SECONDS": "0.2",
        "CARETRIAGE_SESSION_SECRET": SESSION_SECRET,
        "CARETRIAGE_LABEL_SCHEMA": str(dep / "label_schema.yaml"),
    }
    with LiveServer(v1, tmp_path / "srv", env=env) as server:
        pid = server.proc.pid
        db = server.database_url
        with server.client(timeout=HTTP_TIMEOUT) as api:
            info = api.get("/v1/model").json()
            assert info["version"] == v1_meta.meta.version and NEW not in info["tasks"]["topic"]

            # 2. Accounts, made in the server's store as `caretriage users add` makes them.
            store = Store(db)
            try:
                accounts = LabelingStore(store)
                for name, role in (("eva", "evaluator"), ("bo", "evaluator"), ("lee", "lead")):
                    accounts.add_user(name, role, hash_password(PASSWORD))
            finally:
                store.dispose()

            # 3. Posts into the pool with the API key; the served model suggests labels.
            r = api.post("/v1/labeling/items", json={"items": [{"text": t} for t in GOLD]})
            assert r.status_code == 200, r.text
            assert (r.json()["added"], r.json()["errors"]) == (len(GOLD), [])

        # 4. Evaluators work the queue. The workspace offers the served schema united with
        #    the deployment's (CARETRIAGE_LABEL_SCHEMA): until the lead adds the new label
        #    there, an answer naming it is refused by field; once added, the running
        #    workspace offers it (the file is re-read when it changes) and the same answer
        #    goes in. Two evaluators, so items drawn for agreement are finished too.
        refused = 0
        for name in ("eva", "bo"):
            c, csrf = sign_in(server, name)
            with contextlib.closing(c):
                for step in range(3 * len(GOLD)):
                    r = c.get("/v1/labeling/next", params={"n": 1})
                    assert r.status_code == 200, r.text
                    if not r.json()["items"]:
                        break
                    item = r.json()["items"][0]
                    gold = GOLD[item["text"]]
                    url = f"/v1/labeling/items/{item['id']}/answer"
                    body = {
                        "kind": "label",
                        "labels": gold,
                        "idempotency_key": f"{name}-answer-{step}",
                    }
                    r = c.post(url, headers=csrf, json=body)
                    if gold["topic"] == NEW and not refused:
                        assert r.status_code == 422, r.text
                        assert r.json()["fields"] == ["labels.topic"], r.json()
                        assert NEW in r.json()["message"]
                        refused += 1
                        # 5. The lead adds the label to the deployment's schema file.
                        add_topic(dep, NEW)
                        wait_for(
                            lambda c=c: NEW in c.get("/v1/labeling/me").json()["tasks"]["topic"]
                        )
                        r = c.post(url, headers=csrf, json=body)
                    assert r.status_code == 200, r.text
                else:
                    pytest.fail(f"{name}'s queue did not run dry")
        assert refused == 1

        # 6. The export carries every post's final labels, the new topic included; its columns
        #    come from the same united schema (--label-schema).
        export = tmp_path / "labels.jsonl"
        rc, out = cli(capsys, "labels", "export", "--format", "jsonl", "--out", str(export),
                      "--database-url", db, "--model-dir", str(v1),
                      "--label-schema", str(dep / "label_schema.yaml"))  # fmt: skip
        assert rc == 0, out
        final = {r["text"]: r for r in read_export(export) if r["final"]}
        assert {t: r["labels"] for t, r in final.items()} == GOLD
        assert {r["evaluator"] for r in final.values()} <= {"eva", "bo"}
        grown = LabelSchema.load(dep / "label_schema.yaml")
        assert grown.task("topic").labels == [*old_topics, NEW]

        # 7. Train on it: the topic head grows by the new label, old ids kept. Not registered
        #    here: `promote` makes the comparison and registers the candidate.
        rc, second = cli(capsys, "train", "--config", config, *small, "--tracking-uri", tracking,
                         "--with-labels", str(export), "--add-labels", "--no-register")  # fmt: skip
        assert rc == 0, second
        v2 = Path(second["bundle"])
        v2_meta = read_bundle(v2)
        assert v2_meta.schema_.task("topic").labels == [*old_topics, NEW]
        v2_version = v2_meta.meta.version
        assert v2_version != v1_meta.meta.version

        # 8. Promote it while a helpdesk client keeps scoring; the server follows the pointer.
        scorer = Scorer(server)
        scorer.start()
        try:
            rc, decision = cli(capsys, "promote", str(v2), "--config", config,
                               "--tracking-uri", tracking, "--pointer", str(pointer),
                               "--with-labels", str(export),
                               "--margin", "100", "--human-tolerance", "100")  # fmt: skip
            assert rc == 0 and decision["promoted"], decision
            assert decision["champion"]["version"] == v1_meta.meta.version  # judged against v1
            assert decision["candidate"]["human"], decision  # on the held-out human slice
            assert json.loads(pointer.read_text())["bundle"] == str(v2.resolve())

            deadline = time.monotonic() + SWAP_TIMEOUT
            with server.client(timeout=HTTP_TIMEOUT) as api:
                while True:
                    info = api.get("/v1/model")
                    assert info.status_code == 200, info.text
                    if NEW in info.json()["tasks"]["topic"]:
                        break
                    if time.monotonic() > deadline:
                        pytest.fail(
                            f"the server did not follow the pointer in {SWAP_TIMEOUT:g}s;"
                            f" log tail:\n{server.log_text()[-3000:]}"
                        )
                    time.sleep(0.2)
                assert info.json()["version"] == v2_version
                r = api.post(
                    "/v1/score", json={"posts": [{"id": "n1", "text": next(iter(FEE_POSTS))}]}
                )
                assert r.status_code == 200, r.text
                result = r.json()
                assert result["model_version"] == v2_version
                scores = result["results"][0]["topic"]["scores"]
                assert set(scores) == {*old_topics, NEW}
            time.sleep(0.5)  # a few more scored requests on the new model
        finally:
            scorer.stop.set()
            scorer.join(HTTP_TIMEOUT)
        assert not scorer.is_alive()
        assert scorer.errors == [], scorer.errors[:5]
        v = scorer.versions
        assert v and v[0] == v1_meta.meta.version and v[-1] == v2_version, v
        switch = v.index(v2_version)
        assert set(v[:switch]) == {v1_meta.meta.version} and set(v[switch:]) == {v2_version}

        # 9. The same process all along.
        assert server.running and server.proc.pid == pid and server.starts == 1
