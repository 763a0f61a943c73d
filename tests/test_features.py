"""features/: the contracts both sides share."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from features.bundle import BundleError, read_bundle
from features.context import reach, repeat_contacts, value
from features.schema import LabelSchema, default_schema_path
from features.text import normalize_text


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


def test_normalize_is_idempotent():
    s = "@x see http://y.z &amp;  more"
    assert normalize_text(normalize_text(s)) == normalize_text(s)


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


def test_read_bundle_of_the_fixture(tiny_bundle, schema):
    b = read_bundle(tiny_bundle)
    assert b.schema_ == schema
    assert set(b.meta.outputs) == set(schema.names)
    assert b.onnx_path.is_file() and b.tokenizer_path.is_file()
