"""SLA clocks (serving/sla.py): business hours, holidays, 24/7, time zones and DST, window
deadlines per level, and progress towards a deadline. Pure functions, table-driven."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from pydantic import TypeAdapter, ValidationError

from serving.priority import Policy, deadlines, load_policy, prioritize
from serving.schemas import Channel
from serving.sla import (
    ALWAYS_OPEN,
    BusinessDayEndWindow,
    BusinessHours,
    ChannelSla,
    Hours,
    LevelSla,
    progress,
    window_deadlines,
)
from tests.test_priority import sig

NY = ZoneInfo("America/New_York")
HOURS = TypeAdapter(Hours)


def utc(*a: int) -> datetime:
    return datetime(*a, tzinfo=UTC)


def ny(*a: int) -> datetime:
    return datetime(*a, tzinfo=NY)


def minutes(m: float) -> timedelta:
    return timedelta(minutes=m)


# 2024-03-05 is a Tuesday; 2024-03-08 a Friday. US DST began 2024-03-10 02:00 and ended
# 2024-11-03 02:00 (America/New_York).
NINE_TO_FIVE = BusinessHours(tz="UTC", open=time(9), close=time(17))
WITH_HOLIDAY = BusinessHours(
    tz="UTC", open=time(9), close=time(17), holidays=[date(2024, 3, 6), date(2024, 3, 11)]
)
NEW_YORK = BusinessHours(tz="America/New_York", open=time(9), close=time(17))
NIGHT_SHIFT_NY = BusinessHours(
    tz="America/New_York", open=time(1), close=time(4), days=[1, 2, 3, 4, 5, 6, 7]
)
WEEKEND_TEAM = BusinessHours(tz="UTC", open=time(10), close=time(14), days=[6, 7])


@pytest.mark.parametrize(
    ("case", "hours", "start", "span", "due"),
    [
        (
            "24/7: a night post is due in the night",
            ALWAYS_OPEN,
            utc(2024, 3, 5, 23),
            60,
            utc(2024, 3, 6, 0),
        ),
        ("24/7 over a weekend", ALWAYS_OPEN, utc(2024, 3, 8, 23), 120, utc(2024, 3, 9, 1)),
        ("within the day", NINE_TO_FIVE, utc(2024, 3, 5, 10), 60, utc(2024, 3, 5, 11)),
        (
            "23:00 to a 9-17 team: next working morning",
            NINE_TO_FIVE,
            utc(2024, 3, 5, 23),
            60,
            utc(2024, 3, 6, 10),
        ),
        (
            "before opening: the clock starts at 9",
            NINE_TO_FIVE,
            utc(2024, 3, 5, 7),
            30,
            utc(2024, 3, 5, 9, 30),
        ),
        ("across the close", NINE_TO_FIVE, utc(2024, 3, 5, 16, 30), 60, utc(2024, 3, 6, 9, 30)),
        ("exactly at the close", NINE_TO_FIVE, utc(2024, 3, 5, 17), 1, utc(2024, 3, 6, 9, 1)),
        ("ends exactly at the close", NINE_TO_FIVE, utc(2024, 3, 5, 16), 60, utc(2024, 3, 5, 17)),
        (
            "Friday evening: Monday",
            NINE_TO_FIVE,
            utc(2024, 3, 8, 16, 30),
            60,
            utc(2024, 3, 11, 9, 30),
        ),
        ("Saturday: Monday", NINE_TO_FIVE, utc(2024, 3, 9, 12), 15, utc(2024, 3, 11, 9, 15)),
        (
            "longer than a day",
            NINE_TO_FIVE,
            utc(2024, 3, 5, 9),
            8 * 60 + 30,
            utc(2024, 3, 6, 9, 30),
        ),
        ("a holiday is skipped", WITH_HOLIDAY, utc(2024, 3, 5, 16, 30), 60, utc(2024, 3, 7, 9, 30)),
        (
            "a post on a holiday waits",
            WITH_HOLIDAY,
            utc(2024, 3, 6, 11),
            30,
            utc(2024, 3, 7, 9, 30),
        ),
        (
            "weekend then a Monday holiday",
            WITH_HOLIDAY,
            utc(2024, 3, 8, 16),
            120,
            utc(2024, 3, 12, 10),
        ),
        ("weekend-only team", WEEKEND_TEAM, utc(2024, 3, 5, 12), 60, utc(2024, 3, 9, 11)),
        (
            "local hours: 9 in New York is 14 UTC in winter",
            NEW_YORK,
            utc(2024, 3, 5, 3),
            60,
            utc(2024, 3, 5, 15),
        ),
        (
            "over spring-forward: Monday 9:30 EDT is 13:30 UTC",
            NEW_YORK,
            ny(2024, 3, 8, 16, 30),
            60,
            utc(2024, 3, 11, 13, 30),
        ),
        (
            "over fall-back: Monday 9:30 EST is 14:30 UTC",
            NEW_YORK,
            ny(2024, 11, 1, 16, 30),
            60,
            utc(2024, 11, 4, 14, 30),
        ),
        # 01:00-04:00 local on the spring-forward night is two real hours (02:00 never
        # happens): 150 working minutes run into the next night.
        (
            "a shift shortened by DST",
            NIGHT_SHIFT_NY,
            ny(2024, 3, 10, 1),
            150,
            ny(2024, 3, 11, 1, 30),
        ),
        ("24/7 ignores DST", ALWAYS_OPEN, ny(2024, 3, 10, 1), 120, ny(2024, 3, 10, 4)),
    ],
)
def test_working_time_added(case, hours, start, span, due):
    assert hours.add(start, minutes(span)) == due, case


@pytest.mark.parametrize(
    ("case", "hours", "a", "b", "expected"),
    [
        ("24/7 is the calendar", ALWAYS_OPEN, utc(2024, 3, 8, 16), utc(2024, 3, 11, 10), 66 * 60),
        ("overnight", NINE_TO_FIVE, utc(2024, 3, 5, 16), utc(2024, 3, 6, 10), 120),
        ("over a weekend", NINE_TO_FIVE, utc(2024, 3, 8, 16), utc(2024, 3, 11, 10), 120),
        ("over a holiday", WITH_HOLIDAY, utc(2024, 3, 5, 16), utc(2024, 3, 7, 10), 120),
        ("all closed", NINE_TO_FIVE, utc(2024, 3, 5, 18), utc(2024, 3, 5, 23), 0),
        ("backwards is zero", NINE_TO_FIVE, utc(2024, 3, 5, 12), utc(2024, 3, 5, 10), 0),
        ("a DST-shortened shift", NIGHT_SHIFT_NY, ny(2024, 3, 10, 0), ny(2024, 3, 10, 5), 120),
        ("a DST-lengthened shift", NIGHT_SHIFT_NY, ny(2024, 11, 3, 0), ny(2024, 11, 3, 5), 240),
    ],
)
def test_working_time_between(case, hours, a, b, expected):
    assert hours.between(a, b) == minutes(expected), case


@pytest.mark.parametrize(
    ("hours", "at", "open_"),
    [
        (NINE_TO_FIVE, utc(2024, 3, 5, 9), True),
        (NINE_TO_FIVE, utc(2024, 3, 5, 17), False),  # the close is closed
        (NINE_TO_FIVE, utc(2024, 3, 9, 12), False),  # Saturday
        (WITH_HOLIDAY, utc(2024, 3, 6, 12), False),
        (NEW_YORK, utc(2024, 3, 5, 13, 59), False),  # 08:59 EST
        (NEW_YORK, utc(2024, 3, 11, 13), True),  # 09:00 EDT
        (ALWAYS_OPEN, utc(2024, 12, 25, 3), True),
    ],
)
def test_is_open(hours, at, open_):
    assert hours.is_open(at) is open_


@pytest.mark.parametrize(
    ("given", "field"),
    [
        ({"open": "17:00", "close": "09:00"}, "open"),  # overnight: not modelled
        ({"open": "09:00", "close": "09:00"}, "open"),
        ({"tz": "Mars/Olympus"}, "tz"),
        ({"days": [0, 8]}, "days"),
        ({"days": []}, "days"),
        ({"holidays": ["2024-02-30"]}, "holidays"),
        ({"holidays": ["2024-01-01"] * 1001}, "holidays"),
        ({"open": "09:00+02:00"}, "open"),
        ({"lunch": "12:00"}, "lunch"),
    ],
)
def test_bad_business_hours_are_refused_naming_the_key(given, field):
    with pytest.raises(ValidationError) as e:
        HOURS.validate_python(given)
    assert field in str(e.value)


def test_shorthands_and_normalization():
    assert HOURS.validate_python("24/7").always_open
    assert HOURS.validate_python(" 24 / 7 ").always_open
    h = HOURS.validate_python({"holidays": ["2024-12-26", "2024-12-25", "2024-12-26"]})
    assert h.holidays == [date(2024, 12, 25), date(2024, 12, 26)]
    assert h.days == [1, 2, 3, 4, 5] and not h.always_open


# ------------------------------------------------------------------------- window deadlines

TWITTER = ChannelSla.model_validate({"promise": 60, "internal": 30})
FACEBOOK = ChannelSla.model_validate(
    {"promise": {"kind": "business_day_end", "hour": 18}, "internal": 120}
)
P1 = LevelSla(factor=0.25, cap_minutes=60, internal_cap_minutes=30)
P3 = LevelSla(factor=1.0)


@pytest.mark.parametrize(
    ("case", "sla", "level", "hours", "created", "respond_by", "internal"),
    [
        (
            "24/7 P3 tweet",
            TWITTER,
            P3,
            ALWAYS_OPEN,
            utc(2024, 3, 5, 23),
            utc(2024, 3, 6, 0),
            utc(2024, 3, 5, 23, 30),
        ),
        (
            "9-17 P3 tweet at 23:00: next morning",
            TWITTER,
            P3,
            NINE_TO_FIVE,
            utc(2024, 3, 5, 23),
            utc(2024, 3, 6, 10),
            utc(2024, 3, 6, 9, 30),
        ),
        (
            "9-17 P1 tweet at 23:00: first thing",
            TWITTER,
            P1,
            NINE_TO_FIVE,
            utc(2024, 3, 5, 23),
            utc(2024, 3, 6, 9, 15),
            utc(2024, 3, 6, 9, 7, 30),
        ),
        (
            "9-17 P1 tweet Friday night, Monday holiday",
            TWITTER,
            P1,
            WITH_HOLIDAY,
            utc(2024, 3, 8, 23),
            utc(2024, 3, 12, 9, 15),
            utc(2024, 3, 12, 9, 7, 30),
        ),
        (
            "business-day close, untightened: the close itself",
            FACEBOOK,
            P3,
            ALWAYS_OPEN,
            utc(2024, 3, 5, 14),
            utc(2024, 3, 5, 18),
            utc(2024, 3, 5, 16),
        ),
        (
            "business-day close skips a holiday",
            FACEBOOK,
            P3,
            WITH_HOLIDAY,
            utc(2024, 3, 5, 19),
            utc(2024, 3, 7, 18),
            utc(2024, 3, 7, 11),
        ),
        (
            "P1 business-day close: capped, in working time",
            FACEBOOK,
            P1,
            NINE_TO_FIVE,
            utc(2024, 3, 8, 19),
            utc(2024, 3, 11, 10),
            utc(2024, 3, 11, 9, 30),
        ),
    ],
)
def test_window_deadlines(case, sla, level, hours, created, respond_by, internal):
    assert window_deadlines(created, sla, level, hours) == (respond_by, internal), case


def test_business_day_end_window_skips_holidays():
    w = BusinessDayEndWindow(kind="business_day_end", hour=18, tz="America/New_York")
    hols = BusinessHours(tz="America/New_York", holidays=[date(2024, 7, 4)])
    # Wednesday 3 July after the close: Thursday is Independence Day, so Friday 18:00 EDT.
    assert w.deadline(ny(2024, 7, 3, 19), hols) == ny(2024, 7, 5, 18)
    # A 24/7 team has no holidays: Thursday.
    assert w.deadline(ny(2024, 7, 3, 19), ALWAYS_OPEN) == ny(2024, 7, 4, 18)


def _policy_with(**priority) -> Policy:
    raw = load_policy().model_dump(mode="json")
    raw["priority"].update(priority)
    return Policy.model_validate(raw)


def test_the_policy_clock_uses_team_hours_and_channel_overrides():
    """The team keeps 9-17 in New York; chat is staffed 24/7."""
    pol = _policy_with(
        business_hours={"tz": "America/New_York", "open": "09:00", "close": "17:00"},
    ).priority
    chat = pol.sla["chat"].model_copy(update={"business_hours": ALWAYS_OPEN})
    pol = pol.model_copy(update={"sla": {**pol.sla, "chat": chat}})
    late = ny(2024, 3, 5, 23)
    assert deadlines(late, Channel.twitter, "P3", pol)[0] == ny(2024, 3, 6, 10)
    assert deadlines(late, Channel.chat, "P3", pol)[0] == late + minutes(5)


def test_the_shipped_dictionary_is_24_7():
    pol = load_policy().priority
    assert pol.business_hours.always_open
    created = utc(2024, 3, 9, 23)  # Saturday night
    assert deadlines(created, Channel.twitter, "P3", pol)[0] == created + minutes(60)


# ------------------------------------------------------------------------- progress


@pytest.mark.parametrize(
    ("case", "hours", "created", "due", "now", "share"),
    [
        (
            "not started",
            ALWAYS_OPEN,
            utc(2024, 3, 5, 10),
            utc(2024, 3, 5, 11),
            utc(2024, 3, 5, 10),
            0.0,
        ),
        (
            "half way",
            ALWAYS_OPEN,
            utc(2024, 3, 5, 10),
            utc(2024, 3, 5, 11),
            utc(2024, 3, 5, 10, 30),
            0.5,
        ),
        (
            "a post from the future",
            ALWAYS_OPEN,
            utc(2024, 3, 5, 10),
            utc(2024, 3, 5, 11),
            utc(2024, 3, 5, 9),
            0.0,
        ),
        (
            "at the deadline",
            ALWAYS_OPEN,
            utc(2024, 3, 5, 10),
            utc(2024, 3, 5, 11),
            utc(2024, 3, 5, 11),
            1.0,
        ),
        ("long past", ALWAYS_OPEN, utc(1970, 1, 1), utc(1970, 1, 1, 1), utc(2024, 3, 5), 1.0),
        # Posted 23:00, due 10:00: the night does not count, so at 09:30 it is half gone.
        (
            "the night is not waiting time",
            NINE_TO_FIVE,
            utc(2024, 3, 5, 23),
            utc(2024, 3, 6, 10),
            utc(2024, 3, 6, 9, 30),
            0.5,
        ),
        (
            "nor is 03:00",
            NINE_TO_FIVE,
            utc(2024, 3, 5, 23),
            utc(2024, 3, 6, 10),
            utc(2024, 3, 6, 3),
            0.0,
        ),
    ],
)
def test_progress(case, hours, created, due, now, share):
    assert progress(created, due, now, hours)[0] == pytest.approx(share), case


@pytest.mark.parametrize(
    ("waited_min", "points"),
    [(0, 0.0), (20, 0.0), (30, 0.0), (45, 10.0), (59, 19.3), (60, 20.0), (600, 20.0)],
)
def test_breach_risk_rises_towards_the_deadline(waited_min, points):
    """Shipped rules: 20 points, from half the promise window; an ordinary P3 tweet."""

    created = utc(2024, 3, 5, 12)
    s = sig(p_actionable=0.9, p_negative=0.2, created_at=created)
    pol = load_policy().priority
    without = prioritize(s, pol)
    with_ = prioritize(s, pol, now=created + minutes(waited_min))
    assert without.level == "P3"
    got = {r.factor: r.points for r in with_.reasons}.get("breach_risk", 0.0)
    assert got == pytest.approx(points, abs=0.05)
    assert with_.respond_by == without.respond_by, "waiting does not move the promise"
    assert with_.score >= without.score


def test_breach_risk_lifts_the_level_not_the_deadline():

    created = utc(2024, 3, 5, 12)
    s = sig(p_actionable=0.95, p_negative=0.9, topic="late_flight", created_at=created)
    pol = load_policy().priority
    fresh = prioritize(s, pol, now=created)
    late = prioritize(s, pol, now=created + minutes(120))
    assert (fresh.level, late.level) == ("P2", "P1")
    assert late.respond_by == fresh.respond_by
    reason = next(r for r in late.reasons if r.factor == "breach_risk")
    assert "passed" in reason.detail


def test_breach_risk_waits_for_the_team():
    """A tweet at 23:00 to a 9-17 team is not at risk at 03:00; by 09:50 it is."""

    pol = _policy_with(business_hours={"open": "09:00", "close": "17:00"}).priority
    created = utc(2024, 3, 5, 23)
    s = sig(p_actionable=0.9, p_negative=0.2, created_at=created)
    at_night = prioritize(s, pol, now=utc(2024, 3, 6, 3))
    morning = prioritize(s, pol, now=utc(2024, 3, 6, 9, 50))
    assert at_night.respond_by == utc(2024, 3, 6, 10)
    assert "breach_risk" not in {r.factor for r in at_night.reasons}
    assert {r.factor: r.points for r in morning.reasons}["breach_risk"] == pytest.approx(13.3)
