"""Swapping the served model on a running server: requests keep firing during the switch,
none fails, every response names the model that scored it, and versions change once, never
back. A bundle that cannot serve is refused and the old one keeps serving."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests._tiny_onnx import build_onnx_bundle
from tests.live import DEFAULT_KEY, LiveServer

CLIENTS = 6  # with 16 posts a request the old batcher is never idle at the swap
ADMIN_KEY = "admin-key-0123456789abcdef-xyz"
POSTS = {
    "posts": [
        {"id": f"p{i}", "text": f"my bag {i} never arrived " * (1 + i % 5)} for i in range(16)
    ]
}


def bundle(tmp_path: Path, name: str, seed: int) -> Path:
    out = build_onnx_bundle(tmp_path / name, seed=seed)
    meta = json.loads((out / "bundle.json").read_text())
    meta["version"] = name
    (out / "bundle.json").write_text(json.dumps(meta))
    return out


@pytest.fixture
def two_bundles(tmp_path) -> tuple[Path, Path]:
    return bundle(tmp_path, "model-v1", 1), bundle(tmp_path, "model-v2", 2)


def hammer(url: str, stop: threading.Event, seen: list[tuple[float, str]], errors: list[str]):
    """One client scoring posts back to back, recording each response's model version."""
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {DEFAULT_KEY}"}, timeout=30
    ) as c:
        while not stop.is_set():
            try:
                r = c.post("/v1/score", json=POSTS)
            except httpx.HTTPError as e:
                errors.append(f"{type(e).__name__}: {e}")
                continue
            if r.status_code != 200:
                errors.append(f"{r.status_code} {r.text[:200]}")
                continue
            seen.append((time.monotonic(), r.json()["model_version"]))


def swap_under_load(server: LiveServer, swap) -> list[list[str]]:
    """Run CLIENTS clients, call ``swap()`` while they fire, keep firing a while; return each
    client's sequence of versions (asserting no request failed)."""
    stop = threading.Event()
    seen: list[list[tuple[float, str]]] = [[] for _ in range(CLIENTS)]
    errors: list[str] = []
    threads = [
        threading.Thread(target=hammer, args=(server.url, stop, seen[i], errors))
        for i in range(CLIENTS)
    ]
    for t in threads:
        t.start()
    time.sleep(0.5)
    swap()
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join(30)
    assert errors == [], errors[:5]
    return [[v for _, v in s] for s in seen]


def changed_once(versions: list[str], old: str, new: str) -> bool:
    """``old`` ... ``old`` then ``new`` ... ``new``, each at least once."""
    if not versions or versions[0] != old or versions[-1] != new:
        return False
    switch = versions.index(new)
    return all(v == old for v in versions[:switch]) and all(v == new for v in versions[switch:])


def test_reload_endpoint_swaps_without_a_failed_request(two_bundles, tmp_path):
    v1, v2 = two_bundles
    env = {"CARETRIAGE_ADMIN_KEYS": ADMIN_KEY}
    with LiveServer(v1, tmp_path / "srv", env=env) as server:
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        result: dict = {}

        def swap() -> None:
            r = httpx.post(
                f"{server.url}/v1/admin/model/reload",
                headers=admin,
                json={"bundle": str(v2)},
                timeout=60,
            )
            assert r.status_code == 200, r.text
            result.update(r.json())

        per_client = swap_under_load(server, swap)
        assert result == {"previous": "model-v1", "current": "model-v2", "swapped": True}
        for versions in per_client:
            assert changed_once(versions, "model-v1", "model-v2"), versions[:3] + versions[-3:]
        r = httpx.get(f"{server.url}/v1/model", headers=server.auth_headers)
        assert r.json()["version"] == "model-v2"
        # The same bundle again changes nothing.
        r = httpx.post(
            f"{server.url}/v1/admin/model/reload", headers=admin, json={"bundle": str(v2)}
        )
        assert r.json() == {"previous": "model-v2", "current": "model-v2", "swapped": False}


def test_the_server_follows_the_promotion_pointer(two_bundles, tmp_path):
    v1, v2 = two_bundles
    pointer = tmp_path / "champion.json"
    pointer.write_text(json.dumps({"bundle": str(v1), "version": "model-v1"}))
    env = {"CARETRIAGE_MODEL_POINTER": str(pointer), "CARETRIAGE_MODEL_POLL_SECONDS": "0.2"}
    with LiveServer(v1, tmp_path / "srv", env=env) as server:

        def promote() -> None:
            pointer.write_text(json.dumps({"bundle": str(v2), "version": "model-v2"}))
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                r = httpx.get(f"{server.url}/v1/model", headers=server.auth_headers)
                if r.json()["version"] == "model-v2":
                    return
                time.sleep(0.1)
            raise AssertionError("the server did not follow the pointer")

        for versions in swap_under_load(server, promote):
            assert changed_once(versions, "model-v1", "model-v2")


@pytest.mark.parametrize("fault", ["missing", "self_check", "policy_label"])
def test_a_bundle_that_cannot_serve_is_refused(two_bundles, tmp_path, fault):
    v1, v2 = two_bundles
    bad = tmp_path / "bad"
    shutil.copytree(v2, bad)
    if fault == "missing":
        (bad / "model.onnx").unlink()
    elif fault == "self_check":
        meta = json.loads((bad / "bundle.json").read_text())
        meta["self_check"] = {
            "texts": ["hello there"],
            "logits": {t: [[9.0] * len(v)] for t, v in _schema_labels(bad).items()},
        }
        (bad / "bundle.json").write_text(json.dumps(meta))
    else:  # a topic taxonomy without the labels the priority policy names
        schema = json.loads((bad / "label_schema.json").read_text())
        topic = next(t for t in schema["tasks"] if t["name"] == "topic")
        topic["labels"] = [f"intent_{i}" for i in range(len(topic["labels"]))]
        (bad / "label_schema.json").write_text(json.dumps(schema))
    env = {"CARETRIAGE_ADMIN_KEYS": ADMIN_KEY}
    with LiveServer(v1, tmp_path / "srv", env=env) as server:
        r = httpx.post(
            f"{server.url}/v1/admin/model/reload",
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            json={"bundle": str(bad)},
            timeout=60,
        )
        assert r.status_code == 409, r.text
        assert r.json()["error"] == "swap_refused" and r.json()["fields"] == ["bundle"]
        r = httpx.post(f"{server.url}/v1/score", headers=server.auth_headers, json=POSTS)
        assert r.status_code == 200 and r.json()["model_version"] == "model-v1"


def test_only_admins_reload(two_bundles, tmp_path):
    v1, _ = two_bundles
    with LiveServer(v1, tmp_path / "srv", env={"CARETRIAGE_ADMIN_KEYS": ADMIN_KEY}) as server:
        url = f"{server.url}/v1/admin/model/reload"
        assert httpx.post(url, headers=server.auth_headers).status_code == 403
        assert httpx.post(url).status_code == 401


def _schema_labels(bundle_dir: Path) -> dict[str, list[str]]:
    schema = json.loads((bundle_dir / "label_schema.json").read_text())
    return {t["name"]: t["labels"] for t in schema["tasks"]}
