"""Priority policy: loading/validation of the policy file, scoring, levels, SLA deadlines."""

from __future__ import annotations

import copy
import functools
import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from features.schema import LabelSchema, default_schema_path
from serving.priority import (
    LEVELS,
    Policy,
    PolicyError,
    PostSignals,
    PriorityPolicy,
    deadlines,
    default_policy_path,
    load_policy,
    prioritize,
    signals_from,
)
from serving.schemas import Author, Channel, Contact, Customer, Post, Prediction

# Tuesday 2024-03-05 14:00 UTC: a business day, before the 18:00 close.
TUE = datetime(2024, 3, 5, 14, 0, tzinfo=UTC)


# --------------------------------------------------------------------------- helpers


@functools.cache
def _raw_default() -> dict[str, Any]:
    return yaml.safe_load(default_policy_path().read_text(encoding="utf-8"))


def _raw(**changes: Any) -> dict[str, Any]:
    """The default policy as a dict, with dotted keys set (``...=DELETE`` removes a key)."""
    data = copy.deepcopy(_raw_default())
    for dotted, val in changes.items():
        *path, last = dotted.split("__")
        node = data
        for k in path:
            node = node[k]
        if val is DELETE:
            del node[last]
        else:
            node[last] = val
    return data


DELETE = object()


def _policy(**changes: Any) -> PriorityPolicy:
    return Policy.model_validate(_raw(**changes)).priority


@functools.cache
def _default() -> PriorityPolicy:
    return load_policy().priority


def _only(**weights: float) -> PriorityPolicy:
    """A policy where only the named weights are non-zero."""
    zero = dict.fromkeys(_raw_default()["priority"]["weights"], 0)
    return _policy(priority__weights={**zero, **weights})


def sig(**kw: Any) -> PostSignals:
    """A quiet baseline post: not actionable, not negative, topic fully known, no context."""
    base: dict[str, Any] = {
        "p_actionable": 0.0,
        "p_negative": 0.0,
        "topic": "late_flight",
        "topic_confidence": 1.0,
        "channel": Channel.twitter,
        "created_at": TUE,
    }
    return PostSignals(**{**base, **kw})


def _raw_points(p) -> float:
    return sum(r.points for r in p.reasons)


# --------------------------------------------------------------------------- loading


def test_default_policy_loads_and_covers_the_shipped_taxonomy() -> None:
    path = default_policy_path()
    assert path.name == "default.yaml" and path.parent.name == "policies" and path.is_file()
    policy = load_policy(path)
    assert policy == load_policy()
    for ch in Channel:
        assert policy.priority.channel_sla(ch) is policy.priority.sla[ch.value]
    topics = LabelSchema.load(default_schema_path()).task("topic").labels
    assert policy.priority.unknown_topic_labels(topics) == []
    assert set(policy.priority.topic_severity.labels) == set(topics)
    assert policy.routing.top_k == 3


@pytest.mark.parametrize(
    ("changes", "key", "words"),
    [
        (
            {"priority__weights__actionability": -1},
            "priority.weights.actionability",
            "greater than or equal to 0",
        ),
        ({"priority__weights__typo": 3}, "priority.weights.typo", "Extra inputs"),
        ({"priority__weights__reach": DELETE}, "priority.weights.reach", "required"),
        (
            {"priority__sla__twitter": {"promise": 30, "internal": 45}},
            "priority.sla.twitter",
            "internal (45 min) is looser than promise (30 min)",
        ),
        ({"priority__sla__chat": DELETE}, "priority.sla", "['chat']"),
        (
            {"priority__sla__tiktok": {"promise": 60, "internal": 30}},
            "priority.sla",
            "tiktok",
        ),
        (
            {"priority__sla__email": {"promise": 0, "internal": 0}},
            "priority.sla.email.promise.minutes",
            "greater than 0",
        ),
        (
            {
                "priority__sla__facebook": {
                    "promise": {"kind": "business_day_end", "hour": 18, "tz": "Mars/Olympus"},
                    "internal": 60,
                }
            },
            "priority.sla.facebook.promise.tz",
            "unknown time zone",
        ),
        (
            {"priority__levels": {"P1": 70, "P2": 80, "P3": 25}},
            "priority.levels",
            "descending",
        ),
        (
            {"priority__topic_severity__labels": {"late_flight": 1.5}},
            "priority.topic_severity.labels",
            "late_flight",
        ),
        (
            {"priority__level_sla__P4": {"factor": 2}},
            "priority.level_sla.P4.factor",
            "less than or equal to 1",
        ),
        (
            {"priority__level_sla__P1": {"factor": 0.9, "cap_minutes": 60}},
            "priority.level_sla",
            "P1.factor",
        ),
        (
            {"priority__level_sla__P1": {"factor": 0.25}},
            "priority.level_sla",
            "P1.cap_minutes must be set",
        ),
        (
            {
                "priority__level_sla__P2": {
                    "factor": 0.5,
                    "cap_minutes": 60,
                    "internal_cap_minutes": 90,
                }
            },
            "priority.level_sla.P2",
            "internal_cap_minutes (90) exceeds cap_minutes (60)",
        ),
        ({"routing__weights__skill": -0.5}, "routing.weights.skill", "greater than or equal to 0"),
        ({"routing__escalation__csat_weight": 0.5}, "routing", "escalation.csat_weight"),
        ({"routing": DELETE}, "routing", "required"),
    ],
)
def test_bad_policy_file_names_the_key(
    tmp_path: Path, changes: dict[str, Any], key: str, words: str
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(_raw(**changes)), encoding="utf-8")
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    assert key in err.value.fields
    assert f"{key}: " in str(err.value) and words in str(err.value)
    assert str(path) in str(err.value)


def test_a_default_window_covers_unlisted_channels(tmp_path: Path) -> None:
    data = _raw(priority__sla__chat=DELETE)
    data["priority"]["sla"]["default"] = {"promise": 600, "internal": 300}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    pol = load_policy(path).priority
    respond_by, internal = deadlines(TUE, Channel.chat, "P4", pol)
    assert (respond_by - TUE, internal - TUE) == (timedelta(minutes=600), timedelta(minutes=300))


@pytest.mark.parametrize(
    ("content", "words"),
    [(None, "cannot read"), ("a: [1, 2", "not valid YAML"), ("- 1\n- 2\n", "mapping")],
)
def test_unusable_file_is_a_policy_error(tmp_path: Path, content: str | None, words: str) -> None:
    path = tmp_path / "p.yaml"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(PolicyError, match=words):
        load_policy(path)


# --------------------------------------------------------------------------- levels


VIP = {
    "p_actionable": 0.95,
    "p_negative": 0.92,
    "topic": "late_flight",
    "topic_confidence": 0.8,
    "verified": True,
    "followers": 2_000,
    "lifetime_value": 5_000,
    "recent_contacts": ((Channel.phone, TUE - timedelta(hours=3)),),
}


@pytest.mark.parametrize(
    ("case", "kw", "level"),
    [
        (
            "non-actionable neutral post, unknown author",
            {"p_actionable": 0.05, "p_negative": 0.1, "topic_confidence": 0.4},
            "P4",
        ),
        (
            "influencer chatter is still not work",
            {
                "p_actionable": 0.05,
                "p_negative": 0.1,
                "topic_confidence": 0.4,
                "followers": 1_000_000,
                "verified": True,
            },
            "P4",
        ),
        (
            "calm booking request",
            {
                "p_actionable": 0.9,
                "p_negative": 0.1,
                "topic": "flight_booking_problems",
                "topic_confidence": 0.8,
            },
            "P3",
        ),
        (
            "angry complaint, ordinary customer",
            {"p_actionable": 0.95, "p_negative": 0.92, "topic_confidence": 0.8},
            "P2",
        ),
        (
            "angry complaint + repeat contact on another channel",
            {
                "p_actionable": 0.95,
                "p_negative": 0.92,
                "topic": "cancelled_flight",
                "topic_confidence": 0.9,
                "recent_contacts": ((Channel.email, TUE - timedelta(hours=20)),),
            },
            "P1",
        ),
        ("strongly negative actionable high-value verified repeat contact", VIP, "P1"),
    ],
)
def test_default_policy_levels(case: str, kw: dict[str, Any], level: str) -> None:
    assert prioritize(sig(**kw), _default()).level == level, case


@pytest.mark.parametrize(
    ("p_actionable", "score", "level"),
    [
        (1.0, 100, "P1"),
        (0.70, 70, "P1"),
        (0.69, 69, "P2"),
        (0.50, 50, "P2"),
        (0.49, 49, "P3"),
        (0.25, 25, "P3"),
        (0.24, 24, "P4"),
        (0.0, 0, "P4"),
    ],
)
def test_level_boundaries(p_actionable: float, score: int, level: str) -> None:
    pol = _only(actionability=100)  # score = 100 × P(actionable); thresholds 70/50/25
    p = prioritize(sig(p_actionable=p_actionable), pol)
    assert (p.score, p.level) == (score, level)


def test_score_rounds_half_up_and_clips_to_100() -> None:
    half = prioritize(sig(p_actionable=0.5), _only(actionability=5))  # 2.5 points
    assert half.score == 3
    everything = sig(**{**VIP, "p_actionable": 1.0, "p_negative": 1.0, "open_tickets": 9})
    p = prioritize(everything, _default())
    assert p.score == 100 and _raw_points(p) > 100


# --------------------------------------------------------------------------- monotonicity


MID = {"p_actionable": 0.6, "p_negative": 0.4, "topic_confidence": 0.5}


@pytest.mark.parametrize(
    ("field", "values"),
    [
        ("p_negative", [0.0, 0.1, 0.3, 0.5, 0.8, 0.95, 1.0]),
        ("p_actionable", [0.0, 0.2, 0.5, 0.9, 1.0]),
        ("followers", [0, 1, 50, 1_000, 100_000, 1_000_000, 50_000_000]),
        ("lifetime_value", [0.0, 10.0, 500.0, 5_000.0, 10_000.0, 1e7]),
        ("topic_confidence", [0.0, 0.3, 0.6, 1.0]),
        ("open_tickets", [0, 1, 2, 3, 4, 10]),
        ("verified", [False, True]),
    ],
)
def test_more_of_a_factor_never_lowers_the_score(field: str, values: list[Any]) -> None:
    pol = _default()
    results = [prioritize(sig(**{**MID, field: v}), pol) for v in values]
    scores = [r.score for r in results]
    raws = [_raw_points(r) for r in results]
    assert scores == sorted(scores)
    assert raws == sorted(raws)
    assert raws[-1] > raws[0]  # the factor is actually used


def test_more_severe_topic_scores_higher() -> None:
    pol = _default()
    sev = pol.topic_severity.labels
    mild, severe = min(sev, key=sev.get), max(sev, key=sev.get)
    assert sev[mild] < sev[severe]
    assert (
        prioritize(sig(**MID, topic=severe), pol).score
        > prioritize(sig(**MID, topic=mild), pol).score
    )


# --------------------------------------------------------------------------- reasons


@pytest.mark.parametrize(
    ("kw", "factors"),
    [
        ({}, set()),
        ({"p_negative": 0.92}, {"negative_sentiment"}),
        (MID, {"actionability", "negative_sentiment", "topic_severity"}),
        (
            {**VIP, "open_tickets": 2},
            {
                "actionability",
                "negative_sentiment",
                "topic_severity",
                "customer_value",
                "reach",
                "verified",
                "repeat_contact",
                "open_tickets",
            },
        ),
    ],
)
def test_reasons_explain_the_score(kw: dict[str, Any], factors: set[str]) -> None:
    p = prioritize(sig(**{"topic_confidence": 0.0, **kw}), _default())
    assert {r.factor for r in p.reasons} == factors
    assert all(r.points > 0 for r in p.reasons)
    assert [r.points for r in p.reasons] == sorted((r.points for r in p.reasons), reverse=True)
    assert abs(_raw_points(p) - p.score) <= 0.5 + 0.01 * len(p.reasons)
    for r in p.reasons:  # the sentence ends with the points it explains
        assert float(r.detail.rsplit("= ", 1)[1]) == pytest.approx(r.points, abs=0.05)


@pytest.mark.parametrize(
    ("kw", "factor", "points", "words"),
    [
        ({"p_negative": 0.92}, "negative_sentiment", 23.0, "negative sentiment 0.92 × 25 = 23.0"),
        ({"p_actionable": 0.5}, "actionability", 15.0, "P(actionable) 0.50 × 30"),
        ({"topic": "cancelled_flight", "topic_confidence": 0.9}, "topic_severity", 13.5, "1.00"),
        # Unknown label and abstained topic: the map's default severity 0.5.
        ({"topic": "wifi_outage", "topic_confidence": 0.8}, "topic_severity", 6.0, "(default)"),
        (
            {"topic": "cancelled_flight", "topic_confidence": 0.8, "topic_uncertain": True},
            "topic_severity",
            6.0,
            "uncertain",
        ),
        ({"verified": True}, "verified", 5.0, "verified author"),
        ({"lifetime_value": 10_000}, "customer_value", 10.0, "10,000"),
        ({"followers": 1_000_000}, "reach", 10.0, "1,000,000 followers"),
        ({"open_tickets": 2}, "open_tickets", 6.0, "2 open ticket(s)"),
        ({"open_tickets": 7}, "open_tickets", 9.0, "counted up to 3"),
        (
            {"recent_contacts": ((Channel.email, TUE - timedelta(hours=47)),)},
            "repeat_contact",
            10.0,
            "on email in the 48 h",
        ),
        (
            {
                "recent_contacts": (
                    (Channel.email, TUE - timedelta(hours=1)),
                    (Channel.phone, TUE - timedelta(hours=2)),
                )
            },
            "repeat_contact",
            10.0,
            "2 contact(s) on email, phone",
        ),
        (  # the post's own channel is not a repeat contact, nor named as one
            {
                "recent_contacts": (
                    (Channel.twitter, TUE - timedelta(hours=1)),
                    (Channel.chat, TUE - timedelta(hours=2)),
                )
            },
            "repeat_contact",
            10.0,
            "1 contact(s) on chat in",
        ),
        # Not repeat contacts: too old, same channel, or after the post.
        (
            {"recent_contacts": ((Channel.email, TUE - timedelta(hours=49)),)},
            "repeat_contact",
            None,
            "",
        ),
        (
            {"recent_contacts": ((Channel.twitter, TUE - timedelta(hours=1)),)},
            "repeat_contact",
            None,
            "",
        ),
        (
            {"recent_contacts": ((Channel.email, TUE + timedelta(minutes=5)),)},
            "repeat_contact",
            None,
            "",
        ),
    ],
)
def test_factor_points(kw: dict[str, Any], factor: str, points: float | None, words: str) -> None:
    kw = {"topic_confidence": 0.0, **kw}
    got = {r.factor: r for r in prioritize(sig(**kw), _default()).reasons}
    if points is None:
        assert factor not in got
    else:
        assert got[factor].points == pytest.approx(points, abs=0.01)
        assert words in got[factor].detail


# --------------------------------------------------------------------------- deadlines


def _at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2024, 3, day, hour, minute, tzinfo=UTC)  # 2024-03-04 is a Monday


@pytest.mark.parametrize(
    ("channel", "created", "respond_by", "internal"),
    [
        (Channel.twitter, TUE, TUE + timedelta(minutes=60), TUE + timedelta(minutes=30)),
        (Channel.instagram, TUE, TUE + timedelta(minutes=120), TUE + timedelta(minutes=60)),
        (Channel.community, TUE, TUE + timedelta(hours=24), TUE + timedelta(hours=8)),
        (Channel.email, TUE, TUE + timedelta(hours=24), TUE + timedelta(hours=12)),
        (Channel.chat, TUE, TUE + timedelta(minutes=5), TUE + timedelta(minutes=2)),
        (Channel.phone, TUE, TUE + timedelta(minutes=120), TUE + timedelta(minutes=60)),
        # Facebook: same business day (18:00 UTC), internal 2 h clamped to the promise.
        (Channel.facebook, _at(5, 14), _at(5, 18), _at(5, 16)),
        (Channel.facebook, _at(5, 17, 30), _at(5, 18), _at(5, 18)),
        (Channel.facebook, _at(5, 18), _at(6, 18), _at(5, 20)),  # at the close: next day
        (Channel.facebook, _at(5, 19), _at(6, 18), _at(5, 21)),
        (Channel.facebook, _at(5, 3), _at(5, 18), _at(5, 5)),  # before opening: same day
        (Channel.facebook, _at(8, 20), _at(11, 18), _at(8, 22)),  # Friday night → Monday
        (Channel.facebook, _at(9, 10), _at(11, 18), _at(9, 12)),  # Saturday → Monday
    ],
)
def test_respond_by_per_channel(
    channel: Channel, created: datetime, respond_by: datetime, internal: datetime
) -> None:
    p = prioritize(sig(channel=channel, created_at=created), _default())
    assert p.level == "P4"  # factor 1: the channel's own windows
    assert (p.respond_by, p.internal_target) == (respond_by, internal)


M = timedelta(minutes=1)


@pytest.mark.parametrize(
    ("channel", "created", "level", "promise", "internal"),
    [
        (Channel.twitter, TUE, "P1", 15 * M, 7.5 * M),
        (Channel.twitter, TUE, "P2", 30 * M, 15 * M),
        (Channel.twitter, TUE, "P3", 60 * M, 30 * M),
        (Channel.email, TUE, "P1", 60 * M, 30 * M),  # 6 h / 3 h capped to 1 h / 30 min
        (Channel.email, TUE, "P2", 240 * M, 120 * M),
        (Channel.email, TUE, "P3", 1440 * M, 720 * M),
        (Channel.chat, TUE, "P1", 1.25 * M, 0.5 * M),
        (Channel.facebook, _at(5, 14), "P1", 60 * M, 30 * M),
        (Channel.facebook, _at(5, 14), "P2", 120 * M, 60 * M),
        (Channel.facebook, _at(8, 20), "P1", 60 * M, 30 * M),  # not Monday 18:00
        (Channel.facebook, _at(8, 20), "P2", 240 * M, 60 * M),
    ],
)
def test_respond_by_per_level(
    channel: Channel, created: datetime, level: str, promise: timedelta, internal: timedelta
) -> None:
    respond_by, target = deadlines(created, channel, level, _default())
    assert (respond_by - created, target - created) == (promise, internal)


@pytest.mark.parametrize("channel", list(Channel))
def test_urgent_levels_are_never_later_and_internal_never_after_promise(channel: Channel) -> None:
    pol = _default()
    times = [
        _at(d, h, m)
        for d in (4, 8, 9, 10)
        for h, m in ((0, 0), (9, 0), (17, 59), (18, 0), (23, 30))
    ]
    for created in times:
        prev = None
        for level in LEVELS:
            respond_by, internal = deadlines(created, channel, level, pol)
            assert created < internal <= respond_by
            assert (
                respond_by - created <= pol.channel_sla(channel).promise.deadline(created) - created
            )
            if prev is not None:  # a more urgent level is never due later
                assert prev[0] <= respond_by and prev[1] <= internal
            prev = (respond_by, internal)


def test_prioritize_applies_the_level_deadline() -> None:
    p = prioritize(sig(**VIP, channel=Channel.email), _default())
    assert p.level == "P1"
    assert (p.respond_by - TUE, p.internal_target - TUE) == (60 * M, 30 * M)


@pytest.mark.parametrize(
    ("created", "respond_by"),
    [
        # EST (UTC-5) before the 2024-03-10 DST change, EDT (UTC-4) after: 18:00 local.
        (datetime(2024, 3, 5, 17, 0, tzinfo=UTC), datetime(2024, 3, 5, 23, 0, tzinfo=UTC)),
        (datetime(2024, 3, 12, 16, 0, tzinfo=UTC), datetime(2024, 3, 12, 22, 0, tzinfo=UTC)),
        # 23:30 UTC Tuesday is 18:30 New York: after the close, due Wednesday.
        (datetime(2024, 3, 5, 23, 30, tzinfo=UTC), datetime(2024, 3, 6, 23, 0, tzinfo=UTC)),
    ],
)
def test_business_day_uses_the_team_time_zone(created: datetime, respond_by: datetime) -> None:
    try:
        from zoneinfo import ZoneInfo

        ZoneInfo("America/New_York")
    except Exception:  # pragma: no cover - no tz database on this machine
        pytest.skip("no IANA tz database")
    fb = {
        "promise": {"kind": "business_day_end", "hour": 18, "tz": "America/New_York"},
        "internal": 60,
    }
    pol = _policy(priority__sla__facebook=fb)
    assert deadlines(created, Channel.facebook, "P4", pol)[0] == respond_by


def test_business_days_are_configurable() -> None:
    fb = {
        "promise": {"kind": "business_day_end", "hour": 18, "days": [1, 2, 3, 4, 5, 6, 7]},
        "internal": 60,
    }
    pol = _policy(priority__sla__facebook=fb)
    assert deadlines(_at(9, 10), Channel.facebook, "P4", pol)[0] == _at(9, 18)  # Saturday


# --------------------------------------------------------------------------- purity, signals


def test_pure_and_deterministic() -> None:
    old = datetime(2001, 1, 2, 3, 4, tzinfo=UTC)
    a = prioritize(sig(**{**VIP, "recent_contacts": ()}, created_at=old), _default())
    b = prioritize(sig(**{**VIP, "recent_contacts": ()}, created_at=old), _default())
    assert a == b
    assert a.respond_by.year == 2001  # time comes from created_at, not the clock


def _pred(scores: dict[str, float], uncertain: bool = False) -> Prediction:
    label = max(scores, key=scores.get)
    return Prediction(label=label, confidence=scores[label], scores=scores, uncertain=uncertain)


def _post(**kw: Any) -> Post:
    return Post(id="p1", text="my flight is late again", **kw)


SENTIMENT = {"negative": 0.6, "neutral": 0.3, "positive": 0.1}
TOPIC = {"late_flight": 0.7, "cancelled_flight": 0.2, "bad_flight": 0.1}


@pytest.mark.parametrize(
    ("negative_labels", "p_negative"),
    [(["negative"], 0.6), (["negative", "neutral"], 0.9), (["positive"], 0.1)],
)
def test_signals_from_sums_negative_labels(negative_labels: list[str], p_negative: float) -> None:
    s = signals_from(_post(), _pred(TOPIC), _pred(SENTIMENT), 0.8, negative_labels)
    assert s.p_negative == pytest.approx(p_negative)


def test_signals_from_copies_context() -> None:
    contact_at = datetime(2024, 3, 5, 12, 0)  # naive: read as UTC by the API schema
    post = _post(
        channel=Channel.facebook,
        created_at=TUE,
        author=Author(handle="@a", followers=1234, verified=True),
        customer=Customer(
            lifetime_value=2500.0,
            open_tickets=2,
            recent_contacts=[Contact(channel=Channel.phone, at=contact_at)],
        ),
    )
    s = signals_from(post, _pred(TOPIC, uncertain=True), _pred(SENTIMENT), 0.8, ["negative"])
    assert (s.topic, s.topic_confidence, s.topic_uncertain) == ("late_flight", 0.7, True)
    assert (s.channel, s.created_at, s.p_actionable) == (Channel.facebook, TUE, 0.8)
    assert (s.followers, s.verified, s.lifetime_value, s.open_tickets) == (1234, True, 2500.0, 2)
    assert s.recent_contacts == ((Channel.phone, contact_at.replace(tzinfo=UTC)),)


def test_signals_from_without_author_or_customer() -> None:
    s = signals_from(_post(created_at=TUE), _pred(TOPIC), _pred(SENTIMENT), 0.1, ["negative"])
    assert (s.followers, s.verified, s.lifetime_value, s.open_tickets) == (0, False, 0.0, 0)
    assert s.recent_contacts == ()


def test_signals_from_clips_float_noise() -> None:
    sent = Prediction(
        label="negative", confidence=1.0, scores={"negative": 0.7, "angry": 0.3000001}
    )
    s = signals_from(_post(), _pred(TOPIC), sent, 1.0000002, ["negative", "angry"])
    assert (s.p_negative, s.p_actionable) == (1.0, 1.0)


@pytest.mark.parametrize(
    ("negative_labels", "p_actionable", "words"),
    [
        ([], 0.5, "negative_labels is empty"),
        (["furious"], 0.5, "furious"),
        (["negative"], float("nan"), "p_actionable"),
    ],
)
def test_signals_from_rejects_wiring_mistakes(
    negative_labels: list[str], p_actionable: float, words: str
) -> None:
    with pytest.raises(ValueError, match=words):
        signals_from(_post(), _pred(TOPIC), _pred(SENTIMENT), p_actionable, negative_labels)


@pytest.mark.parametrize(
    "kw",
    [
        {"p_negative": 1.5},
        {"p_actionable": -0.1},
        {"topic_confidence": 2.0},
        {"created_at": datetime(2024, 3, 5, 14, 0)},  # naive
        {"followers": -1},
    ],
)
def test_signals_are_validated(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        sig(**kw)


def test_all_levels_reachable_with_default_policy() -> None:
    """The default weights can produce every level (no dead threshold)."""
    pol = _default()
    grid = itertools.product([0.0, 0.5, 1.0], [0.0, 0.5, 1.0], [0, 5_000])
    levels = {
        prioritize(sig(p_actionable=a, p_negative=n, lifetime_value=v), pol).level
        for a, n, v in grid
    }
    assert levels == set(LEVELS)
