"""features/: the contracts both sides share."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from features.bundle import BundleError, read_bundle
from features.context import reach, repeat_contacts, value
from features.schema import LabelSchema, default_schema_path
from features.text import DEFAULT_NORMALIZER, NORMALIZERS, normalize_text, normalizer


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("@united my bag!", "@user my bag!"),
        ("see https://t.co/abc and www.x.com/y now", "see http and http now"),
        ("a &amp; b", "a & b"),
        ("  lots \n of\tspace ", "lots of space"),
        ("mail me at a@b.com", "mail me at a@b.com"),
        ("@A @B_c hi", "@user @user hi"),
        ("link http:// 6052", "link http 6052"),
    ],
)
def test_normalize_text(raw, expected):
    assert normalize_text(raw) == expected


@pytest.mark.parametrize("version", sorted(NORMALIZERS))
@pytest.mark.parametrize("s", ["@x see http://y.z &amp;  more", "ok 😡😡 ✈️ 👍🏽 🇺🇸 &amp; done"])
def test_normalize_is_idempotent(version, s):
    once = normalize_text(s, version)
    assert normalize_text(once, version) == once


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("@united 😡😡😡 my bag", "@user :pouting face: my bag"),  # a run counts once
        ("thanks 🙏🏽✈️", "thanks :person with folded hands: :airplane:"),  # tone, selector dropped
        ("😂👍😂", ":face with tears of joy: :thumbs up sign: :face with tears of joy:"),
        ("go 🇺🇸 team", "go :flag: team"),
        ("👨‍👩‍👧", ":man: :woman: :girl:"),  # joiners dropped
        ("30° © it's “fine”…", "30° © it's “fine”…"),  # symbols below U+2190 and punctuation kept
        ("&#128545;", ":pouting face:"),  # an escaped emoji is an emoji
    ],
)
def test_tweet_v2_spells_emoji(raw, expected):
    assert normalize_text(raw, "tweet-v2") == expected


def test_tweet_v1_is_unchanged_for_bundles_trained_with_it():
    assert normalize_text("@a 😡 &amp; http://x", "tweet-v1") == "@user 😡 & http"


def test_unknown_normalizer_is_named():
    with pytest.raises(KeyError, match="tweet-v9"):
        normalizer("tweet-v9")
    assert DEFAULT_NORMALIZER in NORMALIZERS


def test_default_schema_has_the_api_tasks():
    s = LabelSchema.load(default_schema_path())
    assert s.names == ["topic", "sentiment", "actionability"]
    assert set(s.task("actionability").positive_labels) <= set(s.task("actionability").labels)


def _schema(**over):
    tasks = [
        {"name": "topic", "labels": ["a", "b"]},
        {"name": "sentiment", "labels": ["negative", "positive"], "positive_labels": ["negative"]},
        {"name": "actionability", "labels": ["yes", "no"], "positive_labels": ["yes"]},
    ]
    for t in tasks:
        t.update(over.get(t["name"], {}))
    return {"tasks": tasks}


@pytest.mark.parametrize(
    "over,message",
    [
        ({"topic": {"labels": ["a", "a"]}}, "duplicate"),
        ({"actionability": {"positive_labels": []}}, "positive_labels"),
        ({"sentiment": {"positive_labels": ["angry"]}}, "not in labels"),
        ({"topic": {"labels": ["only"]}}, "at least 2"),
    ],
)
def test_schema_rejects_bad_files(over, message):
    with pytest.raises(ValidationError, match=message):
        LabelSchema.model_validate(_schema(**over))


def test_schema_requires_the_three_tasks():
    d = _schema()
    d["tasks"] = d["tasks"][:2]
    with pytest.raises(ValidationError, match="actionability"):
        LabelSchema.model_validate(d)


def test_schema_round_trip(tmp_path):
    s = LabelSchema.model_validate(_schema())
    s.save(tmp_path / "s.json")
    assert LabelSchema.load(tmp_path / "s.json") == s


@pytest.mark.parametrize("lo,hi", [(0, 10), (10, 1000), (1000, 10**6)])
def test_reach_is_monotone_and_bounded(lo, hi):
    assert 0.0 <= reach(lo) < reach(hi) <= 1.0
    assert reach(10**9) == 1.0 and reach(None) == 0.0


def test_value_log_scale():
    assert value(0) == 0.0 and value(10_000) == pytest.approx(1.0) and 0 < value(100) < value(1000)


def test_repeat_contacts_counts_other_channels_in_window():
    now = datetime(2026, 11, 23, 12, tzinfo=UTC)
    contacts = [
        ("phone", now - timedelta(hours=2)),
        ("twitter", now - timedelta(hours=1)),  # same channel: not a repeat elsewhere
        ("email", now - timedelta(hours=30)),  # outside 24 h
        ("chat", now + timedelta(hours=1)),  # in the future: ignored
    ]
    assert repeat_contacts(contacts, now, "twitter") == 1


def test_read_bundle_names_what_is_missing(tmp_path):
    with pytest.raises(BundleError, match=r"bundle\.json"):
        read_bundle(tmp_path)


def _with_normalizer(src, dst, version):
    import json
    import shutil

    shutil.copytree(src, dst)
    meta = json.loads((dst / "bundle.json").read_text())
    meta["normalizer"] = version
    (dst / "bundle.json").write_text(json.dumps(meta))
    return dst


def test_read_bundle_accepts_any_known_normalizer(tiny_bundle, tmp_path):
    for version in NORMALIZERS:
        b = read_bundle(_with_normalizer(tiny_bundle, tmp_path / version, version))
        assert b.meta.normalizer == version


def test_read_bundle_refuses_an_unknown_normalizer(tiny_bundle, tmp_path):
    with pytest.raises(BundleError, match="tweet-v9"):
        read_bundle(_with_normalizer(tiny_bundle, tmp_path / "b", "tweet-v9"))


def test_read_bundle_of_the_fixture(tiny_bundle, schema):
    b = read_bundle(tiny_bundle)
    assert b.schema_ == schema
    assert set(b.meta.outputs) == set(schema.names)
    assert b.onnx_path.is_file() and b.tokenizer_path.is_file()


_REF = {"sentiment": [[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]], "topic": [[0.1, 0.3]]}


@pytest.mark.parametrize(
    ("shift", "passed", "sentiment_agreement"),
    [
        ({}, True, 100.0),  # the same logits
        ({("sentiment", 1, 2): 1e-4}, True, 100.0),  # within tolerance, labels kept
        ({("sentiment", 0, 0): -0.5}, False, 100.0),  # labels kept but a logit moved too far
        ({("sentiment", 1, 2): 0.6}, False, 50.0),  # the second post's label flips
    ],
)
def test_compare_self_check(shift, passed, sentiment_agreement):
    import numpy as np

    from features.bundle import SelfCheck, compare_self_check

    check = SelfCheck(texts=["a", "b"], logits=_REF)
    got = {t: np.array(v) for t, v in _REF.items()}
    for (task, row, col), d in shift.items():
        got[task][row, col] += d
    res = compare_self_check(check, got)
    assert res["passed"] is passed
    assert res["agreement"]["sentiment"] == sentiment_agreement
    assert res["agreement"]["topic"] == 100.0
    assert res["max_abs_diff"] == pytest.approx(max([abs(d) for d in shift.values()] or [0.0]))
    with pytest.raises(ValueError, match="topic"):
        compare_self_check(check, {**got, "topic": np.zeros((2, 2))})


@pytest.mark.parametrize(
    ("isa", "exact_switch"),
    [
        ("amx_int8", False),
        ("avx512_vnni", False),
        ("avx_vnni", False),
        ("avx2", True),
        ("none", True),
        ("unknown", True),
    ],
)
def test_int8_kernels_are_made_exact_only_where_they_can_saturate(isa, exact_switch):
    from features.bundle import int8_session_config

    got = int8_session_config(isa)
    assert (got.get("session.x64quantprecision") == "1") is exact_switch
