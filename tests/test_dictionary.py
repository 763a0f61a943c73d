"""The live, versioned prioritization dictionary (serving/dictionary.py): its store on SQLite
and PostgreSQL, and the admin API that reads, validates and replaces it."""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert

from serving import dictionary as dic
from serving.app import create_app
from serving.priority import Policy, load_policy
from serving.settings import Settings
from serving.store import Store, dictionary_table
from tests.conftest import PG_URL

KEY = "test-key-0123456789abcdef"
ADMIN_KEY = "admin-key-0123456789abcdef-xyz"
AUTH = {"Authorization": f"Bearer {KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


# ------------------------------------------------------------------------------ the store


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request, tmp_path):
    """An upgraded, empty store on each back end (its own schema on PostgreSQL)."""
    if request.param == "sqlite":
        s = Store(f"sqlite:///{tmp_path / 'd.db'}")
    else:
        s = Store(PG_URL, schema=request.getfixturevalue("pg_schemas")())
    s.upgrade()
    yield s
    s.dispose()


def edited(**priority) -> Policy:
    raw = load_policy().model_dump(mode="json")
    raw["priority"].update(priority)
    return Policy.model_validate(raw)


def test_an_empty_store_is_seeded_once(store):
    assert dic.latest_version(store) is None and dic.load(store) is None
    seed = load_policy()
    first = dic.save(store, seed, "seed", only_if_empty=True)
    again = dic.save(store, edited(open_tickets_cap=9), "seed", only_if_empty=True)
    assert first.version == again.version == 1
    assert again.policy == seed, "a second seed does not overwrite"
    assert dic.latest_version(store) == 1


def test_versions_are_kept_and_the_newest_is_in_force(store):
    dic.save(store, load_policy(), "seed")
    hours = {"tz": "Europe/Paris", "open": "08:30", "close": "18:00", "holidays": ["2025-05-01"]}
    new = edited(business_hours=hours, customer_tiers={"tiers": {"Gold": {"points": 7}}})
    saved = dic.save(store, new, "alice", note="Paris team")
    assert saved.version == 2
    loaded = dic.load(store)
    assert loaded is not None
    assert (loaded.version, loaded.created_by, loaded.note) == (2, "alice", "Paris team")
    assert loaded.policy == new, "every rule survives the round trip"
    assert loaded.policy.priority.customer_tiers.tiers["gold"].points == 7
    assert loaded.created_at.tzinfo is not None
    assert dic.load(store, 1).policy == load_policy()
    assert [v for v, *_ in dic.history(store)] == [2, 1]


def test_a_stale_expected_version_is_refused(store):
    dic.save(store, load_policy(), "seed")
    dic.save(store, edited(open_tickets_cap=4), "alice", expected=1)
    with pytest.raises(dic.VersionConflict) as e:
        dic.save(store, edited(open_tickets_cap=5), "bob", expected=1)
    assert (e.value.expected, e.value.current) == (1, 2)
    assert dic.load(store).policy.priority.open_tickets_cap == 4


def test_a_version_this_code_cannot_read_is_skipped(store):
    dic.save(store, load_policy(), "seed")
    with store.engine.begin() as conn:
        conn.execute(
            insert(dictionary_table).values(
                version=2,
                body={"priority": {"weights": "nonsense"}},
                created_at=datetime.now(UTC),
                created_by="old code",
            )
        )
    assert dic.latest_version(store) == 2
    assert dic.load(store).version == 1
    with pytest.raises(dic.PolicyError):
        dic.load(store, 2)


def test_concurrent_writers_get_distinct_dense_versions(store):
    dic.save(store, load_policy(), "seed")
    policies = [edited(open_tickets_cap=k) for k in range(1, 17)]
    with ThreadPoolExecutor(8) as pool:
        saved = list(pool.map(lambda p: dic.save(store, p, "w"), policies))
    assert sorted(d.version for d in saved) == list(range(2, 18))
    by_version = {d.version: d.policy.priority.open_tickets_cap for d in saved}
    for v, cap in by_version.items():
        assert dic.load(store, v).policy.priority.open_tickets_cap == cap


def test_concurrent_seeds_write_one_version(store):
    with ThreadPoolExecutor(8) as pool:
        seeded = list(
            pool.map(
                lambda k: dic.save(store, edited(open_tickets_cap=k), "seed", only_if_empty=True),
                range(1, 9),
            )
        )
    assert {d.version for d in seeded} == {1}
    assert len({d.policy.priority.open_tickets_cap for d in seeded}) == 1
    assert [v for v, *_ in dic.history(store)] == [1]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"priority": {}}, "dictionary.priority.weights"),
        ("not a mapping", "dictionary"),
        ({**load_policy().model_dump(mode="json"), "extra": 1}, "dictionary.extra"),
    ],
)
def test_parse_names_the_field(body, field):
    with pytest.raises(dic.PolicyError) as e:
        dic.parse(body, prefix="dictionary.")
    assert field in e.value.fields
    assert field in str(e.value)


def test_non_finite_numbers_are_refused_wherever_they_are():
    raw = load_policy().model_dump(mode="json")
    raw["routing"]["weights"]["speed"] = float("inf")
    raw["priority"]["weights"]["reach"] = float("nan")
    with pytest.raises(dic.PolicyError) as e:
        dic.parse(raw, prefix="dictionary.")
    assert set(e.value.fields) == {
        "dictionary.routing.weights.speed",
        "dictionary.priority.weights.reach",
    }


# ------------------------------------------------------------------------------ the API


def settings(bundle: Path, db: Path, **kw) -> Settings:
    return Settings(
        api_keys=[KEY],
        admin_keys=[ADMIN_KEY],
        model_dir=bundle,
        database_url=f"sqlite:///{db}",
        rate_limit_enabled=False,
        **kw,
    )


@pytest.fixture
def client(onnx_bundle, tmp_path):
    with TestClient(create_app(settings(onnx_bundle, tmp_path / "api.db"))) as c:
        yield c


POST = {"id": "p", "text": "my bag never arrived and nobody answers", "channel": "twitter"}


def score(c: TestClient, *posts: dict, **extra) -> dict:
    r = c.post("/v1/score", headers=AUTH, json={"posts": list(posts or [POST]), **extra})
    assert r.status_code == 200, r.text
    return r.json()


def current(c: TestClient) -> dict:
    r = c.get("/v1/admin/dictionary", headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == f'"{r.json()["version"]}"'
    return r.json()


def put(c: TestClient, dictionary: dict, **extra):
    return c.put("/v1/admin/dictionary", headers=ADMIN, json={"dictionary": dictionary, **extra})


def assert_422(r, field: str) -> None:
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "validation_failed"
    assert field in body["fields"], body
    assert field in body["message"]


def test_admins_only(client):
    assert client.get("/v1/admin/dictionary").status_code == 401
    assert client.get("/v1/admin/dictionary", headers=AUTH).status_code == 403
    r = client.put("/v1/admin/dictionary", headers=AUTH, json={"dictionary": {}})
    assert r.status_code == 403
    assert client.get("/v1/admin/dictionary/versions", headers=AUTH).status_code == 403


def test_the_policy_file_seeds_version_1_and_scores_name_it(client):
    d = current(client)
    assert (d["version"], d["created_by"]) == (1, "seed")
    assert Policy.model_validate(d["dictionary"]) == load_policy()
    out = score(client)
    assert out["dictionary_version"] == 1
    assert out["results"][0]["priority"]["dictionary_version"] == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (("weights", "actionability", -1), "dictionary.priority.weights.actionability"),
        (("levels", "P1", 10), "dictionary.priority.levels"),
        (("business_hours", "tz", "Mars/Olympus"), "dictionary.priority.business_hours.tz"),
        (
            ("business_hours", "holidays", ["2025-02-30"]),
            "dictionary.priority.business_hours.holidays.0",
        ),
        (
            ("customer_tiers", "tiers", {"gold": {"multiplier": 9}}),
            "dictionary.priority.customer_tiers.tiers.gold.multiplier",
        ),
        (("influencer", "min_followers", 0), "dictionary.priority.influencer.min_followers"),
        (("sla", "twitter", {"promise": 60, "internal": 90}), "dictionary.priority.sla.twitter"),
        (
            ("sla", "twitter", {"promise": 10**9, "internal": 30}),
            "dictionary.priority.sla.twitter.promise.minutes",
        ),
    ],
)
def test_a_bad_dictionary_is_refused_naming_the_field_and_the_old_stays(client, change, field):
    before = current(client)
    baseline = score(client)["results"][0]["priority"]
    d = json.loads(json.dumps(before["dictionary"]))
    section, key, value = change
    if isinstance(d["priority"].get(section), dict):
        d["priority"][section][key] = value
    else:
        d["priority"][section] = {"always_open": False, key: value}
    assert_422(put(client, d), field)
    assert current(client) == before
    again = score(client)
    assert again["dictionary_version"] == before["version"]
    assert again["results"][0]["priority"]["score"] == baseline["score"]


def test_topic_labels_the_model_lacks_are_refused(client):
    d = current(client)["dictionary"]
    d["priority"]["topic_severity"]["labels"]["lost_lugage"] = 0.9
    assert_422(put(client, d), "dictionary.priority.topic_severity.labels.lost_lugage")
    assert current(client)["version"] == 1


def test_nan_is_refused(client):
    d = current(client)["dictionary"]
    d["priority"]["weights"]["reach"] = float("nan")
    r = client.put(
        "/v1/admin/dictionary",
        headers={**ADMIN, "Content-Type": "application/json"},
        content=json.dumps({"dictionary": d}),  # json.dumps writes NaN
    )
    assert_422(r, "dictionary.priority.weights.reach")


def test_a_replacement_is_in_force_from_the_next_request(client):
    d = current(client)["dictionary"]
    plain = score(client)["results"][0]["priority"]["score"]
    d["priority"]["weights"]["actionability"] = 0
    d["priority"]["weights"]["negative_sentiment"] = 0
    r = put(client, d, note="calm week", expected_version=1)
    assert r.status_code == 200, r.text
    assert (r.json()["version"], r.json()["created_by"], r.json()["note"]) == (
        2,
        "admin-key",
        "calm week",
    )
    assert r.headers["etag"] == '"2"'
    out = score(client)
    assert out["dictionary_version"] == 2
    assert out["results"][0]["priority"]["score"] < plain
    versions = client.get("/v1/admin/dictionary/versions", headers=ADMIN).json()["versions"]
    assert [v["version"] for v in versions] == [2, 1]
    old = client.get("/v1/admin/dictionary/versions/1", headers=ADMIN).json()
    assert Policy.model_validate(old["dictionary"]) == load_policy()
    r = client.get("/v1/admin/dictionary/versions/99", headers=ADMIN)
    assert r.status_code == 404 and r.json()["fields"] == ["version"]


def test_a_stale_edit_is_refused_with_409(client):
    d = current(client)["dictionary"]
    assert put(client, d, expected_version=1).status_code == 200
    r = put(client, d, expected_version=1)
    assert r.status_code == 409 and r.json()["fields"] == ["expected_version"]
    assert current(client)["version"] == 2


def test_the_customer_tier_and_business_hours_come_from_the_dictionary(client):
    d = current(client)["dictionary"]
    d["priority"]["customer_tiers"] = {"tiers": {"diamond": {"points": 30}}}
    d["priority"]["business_hours"] = {"tz": "UTC", "open": "09:00", "close": "17:00"}
    assert put(client, d).status_code == 200
    tuesday_night = "2024-03-05T23:00:00Z"
    plain = {**POST, "created_at": tuesday_night}
    vip = {**plain, "id": "v", "customer": {"tier": "Diamond"}}
    a, b = score(client, plain, vip)["results"]
    assert b["priority"]["score"] >= a["priority"]["score"] + 20
    assert "customer_tier" in {r["factor"] for r in b["priority"]["reasons"]}
    # 23:00 to a 9-17 team: due the next working morning, whatever the level.
    for res in (a, b):
        due = datetime.fromisoformat(res["priority"]["respond_by"])
        assert due.date().isoformat() == "2024-03-06" and 9 <= due.hour <= 10


def test_as_of_judges_breach_risk(client):
    created = datetime(2024, 3, 5, 12, tzinfo=UTC)
    old = {**POST, "created_at": created.isoformat()}
    fresh = score(client, old, as_of=created.isoformat())["results"][0]["priority"]
    late = score(client, old, as_of=(created + timedelta(hours=5)).isoformat())
    late = late["results"][0]["priority"]
    assert "breach_risk" not in {r["factor"] for r in fresh["reasons"]}
    assert "breach_risk" in {r["factor"] for r in late["reasons"]}
    assert late["score"] > fresh["score"] and late["respond_by"] == fresh["respond_by"]
    r = client.post(
        "/v1/score", headers=AUTH, json={"posts": [POST], "as_of": "9999-01-01T00:00:00Z"}
    )
    assert r.status_code == 422 and "as_of" in r.json()["fields"]


def test_a_restart_keeps_the_latest_version(onnx_bundle, tmp_path):
    db = tmp_path / "keep.db"
    with TestClient(create_app(settings(onnx_bundle, db))) as c:
        d = current(c)["dictionary"]
        d["priority"]["open_tickets_cap"] = 7
        assert put(c, d).status_code == 200
    with TestClient(create_app(settings(onnx_bundle, db))) as c:
        after = current(c)
        assert after["version"] == 2
        assert after["dictionary"]["priority"]["open_tickets_cap"] == 7
        assert score(c)["dictionary_version"] == 2


def test_a_version_stored_by_another_process_is_picked_up(onnx_bundle, tmp_path):
    db = tmp_path / "shared.db"
    a_app = create_app(settings(onnx_bundle, db))
    b_app = create_app(settings(onnx_bundle, db, dictionary_poll_seconds=3600))
    with TestClient(a_app) as a, TestClient(b_app) as b:
        d = current(a)["dictionary"]
        d["priority"]["open_tickets_cap"] = 6
        assert put(a, d).status_code == 200
        assert score(b)["dictionary_version"] == 1, "not polled yet"
        assert b.portal.call(b_app.state.dictionary_slot.refresh) is True
        assert score(b)["dictionary_version"] == 2
        assert b.portal.call(b_app.state.dictionary_slot.refresh) is False


def test_a_request_scores_with_one_dictionary_from_start_to_end(client):
    """A replacement landing while a request waits for the model does not reach it: it
    answers with the version it started with, and its scores are that version's."""
    baseline = score(client)["results"][0]["priority"]["score"]
    batcher = client.app.state.served.batcher
    entered, release = threading.Event(), threading.Event()
    original = batcher.submit

    async def slow_submit(texts):
        entered.set()
        while not release.is_set():
            await asyncio.sleep(0.01)
        return await original(texts)

    batcher.submit = slow_submit
    try:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(score, client)
            assert entered.wait(10)
            d = current(client)["dictionary"]
            d["priority"]["weights"]["actionability"] = 0
            d["priority"]["weights"]["negative_sentiment"] = 0
            assert put(client, d).status_code == 200
            release.set()
            out = pending.result(30)
    finally:
        del batcher.submit
    assert out["dictionary_version"] == 1
    assert out["results"][0]["priority"]["dictionary_version"] == 1
    assert out["results"][0]["priority"]["score"] == baseline
    after = score(client)
    assert after["dictionary_version"] == 2
    assert after["results"][0]["priority"]["score"] < baseline


def test_the_policy_file_seeds_again_only_when_it_changed(onnx_bundle, tmp_path):
    """An admin edit survives a restart; an edited policy file is the operator's word and
    becomes the next version; an unchanged file adds nothing."""
    import yaml

    db, path = tmp_path / "api.db", tmp_path / "policy.yaml"
    raw = load_policy().model_dump(mode="json")
    path.write_text(yaml.safe_dump(raw))

    def restart() -> dict:
        s = settings(onnx_bundle, db).model_copy(update={"policy_file": path})
        with TestClient(create_app(s)) as c:
            return current(c)

    assert restart()["version"] == 1
    s = settings(onnx_bundle, db).model_copy(update={"policy_file": path})
    with TestClient(create_app(s)) as c:
        assert put(c, edited(open_tickets_cap=7).model_dump(mode="json")).status_code == 200
    assert restart()["version"] == 2, "the admin's edit stays in force"
    raw["priority"]["open_tickets_cap"] = 4
    path.write_text(yaml.safe_dump(raw))
    d = restart()
    assert (d["version"], d["created_by"]) == (3, "seed")
    assert d["dictionary"]["priority"]["open_tickets_cap"] == 4
    assert restart()["version"] == 3


def test_a_bundle_brings_its_own_policy(onnx_bundle, tmp_path):
    """Without CARETRIAGE_POLICY_FILE the served bundle's policy.yaml is the policy."""
    import shutil

    import yaml

    bundle = tmp_path / "bundle"
    shutil.copytree(onnx_bundle, bundle)
    raw = load_policy().model_dump(mode="json")
    raw["priority"]["open_tickets_cap"] = 6
    (bundle / "policy.yaml").write_text(yaml.safe_dump(raw))
    s = settings(bundle, tmp_path / "api.db")
    assert s.policy_file is None and s.policy_path() == bundle / "policy.yaml"
    with TestClient(create_app(s)) as c:
        assert current(c)["dictionary"]["priority"]["open_tickets_cap"] == 6
