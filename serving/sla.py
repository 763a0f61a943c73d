"""SLA clocks: business hours, first-response windows, and how far a post is along its window.

Pure functions of their arguments (the clock is always passed in), so every rule is tested
table-driven (tests/test_sla.py) and a re-score of the same post at the same moment gives the
same answer.

Rules:

* A team keeps **business hours** (``open``-``close`` local time in an IANA ``tz``, on ISO
  ``days``, except **holidays**) or is open ``24/7``. SLA minutes are *working* minutes: the
  clock runs only while the team is open, so a post at 23:00 to a 9-17 team with a 60-minute
  window is due at 10:00 the next working morning; for a 24/7 team minutes are plain minutes.
  Days are built from local wall-clock times, so a DST change moves the UTC hours, not the
  local ones. Overnight shifts (close before open) are not modelled: use 24/7.
* A channel's window is the public **promise** (``respond_by``) beside the team's tighter
  **internal** target. Windows are N minutes or ``business_day_end`` (by H:00 local time the
  same business day, or the next one after hours; holidays skipped).
* A priority level **tightens** both windows: the window's working length times the level's
  ``factor``, then at most ``cap_minutes`` (``internal_cap_minutes``); the internal target
  never falls after the promise.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Annotated, Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

Level = Literal["P1", "P2", "P3", "P4"]
LEVELS: tuple[Level, ...] = ("P1", "P2", "P3", "P4")
# Longest window a dictionary may set: 30 days of working minutes. Bounds the walk over
# working days (and keeps every deadline far from the calendar's end).
MAX_WINDOW_MINUTES = 43_200
MAX_HOLIDAYS = 1000
ALWAYS = "24/7"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def zone(name: str) -> tzinfo:
    """``UTC`` needs no tz database; anything else must be an IANA name."""
    return UTC if name.upper() == "UTC" else ZoneInfo(name)


def _known_zone(v: str) -> str:
    try:
        zone(v)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ValueError(f"unknown time zone {v!r} (use an IANA name such as UTC)") from e
    return v


def _weekdays(v: list[int]) -> list[int]:
    bad = [d for d in v if not 1 <= d <= 7]
    if bad:
        raise ValueError(f"days are ISO weekdays 1-7 (1 = Monday); got {bad}")
    return sorted(set(v))


# --------------------------------------------------------------------------- business hours


class BusinessHours(_Strict):
    """When the team answers: ``24/7`` (``always_open``), or ``open``-``close`` local time in
    ``tz`` on ``days`` (ISO weekdays, 1 = Monday) except ``holidays`` (local dates)."""

    always_open: bool = False
    tz: str = "UTC"
    open: time = time(9, 0)
    close: time = time(17, 0)
    days: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5], min_length=1)
    holidays: list[date] = Field(default_factory=list, max_length=MAX_HOLIDAYS)

    _tz = field_validator("tz")(_known_zone)
    _days = field_validator("days")(_weekdays)

    @field_validator("open", "close")
    @classmethod
    def _local(cls, v: time) -> time:
        if v.tzinfo is not None:
            raise ValueError("a local wall-clock time without offset (the zone is tz)")
        return v

    @field_validator("holidays")
    @classmethod
    def _sorted(cls, v: list[date]) -> list[date]:
        return sorted(set(v))

    @model_validator(mode="after")
    def _opens_before_close(self) -> Self:
        if not self.always_open and self.open >= self.close:
            raise ValueError(
                f"open ({self.open:%H:%M}) must be before close ({self.close:%H:%M}); "
                "overnight shifts are not modelled, use 24/7"
            )
        return self

    def _intervals(self, start: datetime) -> Iterator[tuple[datetime, datetime]]:
        """(open, close) in UTC of each working day, from the local day of ``start`` on."""
        tz = zone(self.tz)
        day = start.astimezone(tz).date()
        days, off = set(self.days), set(self.holidays)
        while True:
            if day.isoweekday() in days and day not in off:
                o = datetime.combine(day, self.open, tzinfo=tz).astimezone(UTC)
                c = datetime.combine(day, self.close, tzinfo=tz).astimezone(UTC)
                if c > o:  # a DST jump inside a very short day could swallow it
                    yield o, c
            day += timedelta(days=1)

    def is_open(self, at: datetime) -> bool:
        if self.always_open:
            return True
        for o, c in self._intervals(at):
            if o > at:
                return False
            if at < c:
                return True
        raise AssertionError("unreachable")  # pragma: no cover

    def add(self, start: datetime, span: timedelta) -> datetime:
        """The moment ``span`` of working time after ``start``: while closed, the clock starts
        at the next opening."""
        # In UTC: aware arithmetic within one zone is wall-clock arithmetic, wrong over DST.
        start = start.astimezone(UTC)
        if self.always_open:
            return start + span
        left = span
        for o, c in self._intervals(start):
            s = max(o, start)
            if s >= c:
                continue
            if s + left <= c:
                return s + left
            left -= c - s
        raise AssertionError("unreachable")  # pragma: no cover

    def between(self, a: datetime, b: datetime) -> timedelta:
        """Working time from ``a`` to ``b`` (zero if ``b`` is not after ``a``)."""
        a, b = a.astimezone(UTC), b.astimezone(UTC)
        if b <= a:
            return timedelta(0)
        if self.always_open:
            return b - a
        total = timedelta(0)
        for o, c in self._intervals(a):
            if o >= b:
                return total
            s, e = max(o, a), min(c, b)
            if e > s:
                total += e - s
        raise AssertionError("unreachable")  # pragma: no cover

    def describe(self) -> str:
        if self.always_open:
            return ALWAYS
        days = ",".join(str(d) for d in self.days)
        return f"{self.open:%H:%M}-{self.close:%H:%M} {self.tz} days {days}"


def _hours_shorthand(v: Any) -> Any:
    """``"24/7"`` means always open."""
    if isinstance(v, str) and v.strip().replace(" ", "") == ALWAYS:
        return {"always_open": True}
    return v


Hours = Annotated[BusinessHours, BeforeValidator(_hours_shorthand)]
ALWAYS_OPEN = BusinessHours(always_open=True)


# --------------------------------------------------------------------------- windows


class MinutesWindow(_Strict):
    """A fixed window: respond within N working minutes of the post."""

    kind: Literal["minutes"] = "minutes"
    minutes: float = Field(gt=0, le=MAX_WINDOW_MINUTES)

    def deadline(self, created_at: datetime, hours: BusinessHours = ALWAYS_OPEN) -> datetime:
        return hours.add(created_at, timedelta(minutes=self.minutes))

    def describe(self) -> str:
        return f"{self.minutes:g} min"


class BusinessDayEndWindow(_Strict):
    """Respond by the close of the business day (``hour`` local time in ``tz``).

    A post after the close, or on a day not in ``days`` (ISO weekdays, 1 = Monday) or on one of
    the team's holidays, is due at the close of the next business day.
    """

    kind: Literal["business_day_end"]
    hour: int = Field(ge=1, le=23)
    tz: str = "UTC"
    days: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5], min_length=1)

    _tz = field_validator("tz")(_known_zone)
    _days = field_validator("days")(_weekdays)

    def deadline(self, created_at: datetime, hours: BusinessHours = ALWAYS_OPEN) -> datetime:
        tz = zone(self.tz)
        local = created_at.astimezone(tz)
        day = local.date()
        off = set() if hours.always_open else set(hours.holidays)
        for _ in range(8 + len(off)):  # a week ahead, plus every holiday, finds a business day
            if day.isoweekday() in self.days and day not in off:
                close = datetime(day.year, day.month, day.day, self.hour, tzinfo=tz)
                if close > local:
                    return close.astimezone(UTC)
            day += timedelta(days=1)
        raise AssertionError("unreachable: days is non-empty")  # pragma: no cover

    def describe(self) -> str:
        return f"business day end {self.hour:02d}:00 {self.tz}"


def _window_shorthand(v: Any) -> Any:
    """A bare number means minutes; a mapping with ``minutes`` and no ``kind`` too."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        return {"kind": "minutes", "minutes": v}
    if isinstance(v, dict) and "kind" not in v and "minutes" in v:
        return {"kind": "minutes", **v}
    return v


Window = Annotated[
    MinutesWindow | BusinessDayEndWindow,
    BeforeValidator(_window_shorthand),
    Field(discriminator="kind"),
]


class ChannelSla(_Strict):
    """The public ``promise`` of a channel and the team's tighter ``internal`` target; the
    channel may keep its own ``business_hours`` (e.g. 24/7 chat beside a 9-17 team).

    With mixed kinds (a business-day promise and a minutes target) the order cannot be checked
    here; at scoring time the internal target is clamped to the promise.
    """

    promise: Window
    internal: Window
    business_hours: Hours | None = None

    @model_validator(mode="after")
    def _internal_within_promise(self) -> Self:
        p, i = self.promise, self.internal
        if isinstance(p, MinutesWindow) and isinstance(i, MinutesWindow) and i.minutes > p.minutes:
            raise ValueError(
                f"internal ({i.minutes:g} min) is looser than promise ({p.minutes:g} min)"
            )
        if (
            isinstance(p, BusinessDayEndWindow)
            and isinstance(i, BusinessDayEndWindow)
            and (i.tz, i.days) == (p.tz, p.days)
            and i.hour > p.hour
        ):
            raise ValueError(f"internal ({i.hour}:00) is later than promise ({p.hour}:00)")
        return self


CapMinutes = Annotated[float, Field(gt=0, le=MAX_WINDOW_MINUTES)]


class LevelSla(_Strict):
    """How a level tightens the channel's windows: × ``factor``, then at most the caps."""

    factor: float = Field(gt=0, le=1)
    cap_minutes: CapMinutes | None = None
    internal_cap_minutes: CapMinutes | None = None

    @model_validator(mode="after")
    def _internal_cap_within_cap(self) -> Self:
        c, i = self.cap_minutes, self.internal_cap_minutes
        if c is not None and i is not None and i > c:
            raise ValueError(f"internal_cap_minutes ({i:g}) exceeds cap_minutes ({c:g})")
        return self


class LevelSlas(_Strict):
    P1: LevelSla
    P2: LevelSla
    P3: LevelSla
    P4: LevelSla

    @model_validator(mode="after")
    def _urgent_is_tighter(self) -> Self:
        """A more urgent level may never get a looser window than a less urgent one."""
        for hi, lo in itertools.pairwise(LEVELS):
            a, b = getattr(self, hi), getattr(self, lo)
            if a.factor > b.factor:
                raise ValueError(f"{hi}.factor ({a.factor:g}) exceeds {lo}.factor ({b.factor:g})")
            for cap in ("cap_minutes", "internal_cap_minutes"):
                ca, cb = getattr(a, cap), getattr(b, cap)
                if cb is not None and (ca is None or ca > cb):
                    raise ValueError(f"{hi}.{cap} must be set and <= {lo}.{cap} ({cb:g})")
        return self

    def of(self, level: Level) -> LevelSla:
        return getattr(self, level)


# --------------------------------------------------------------------------- clocks


def _tightened(
    created_at: datetime,
    window: MinutesWindow | BusinessDayEndWindow,
    factor: float,
    cap_minutes: float | None,
    hours: BusinessHours,
) -> datetime:
    """The window's deadline after the level's factor and cap, counted in working time."""
    created_at = created_at.astimezone(UTC)
    if isinstance(window, MinutesWindow):
        full, length = None, timedelta(minutes=window.minutes)
    else:
        full = window.deadline(created_at, hours)
        length = hours.between(created_at, full)
    span = length * factor
    if cap_minutes is not None:
        span = min(span, timedelta(minutes=cap_minutes))
    if full is not None and span >= length:
        return full  # untightened: exactly the close, even outside the team's hours
    return hours.add(created_at, span)


def window_deadlines(
    created_at: datetime, sla: ChannelSla, level: LevelSla, hours: BusinessHours
) -> tuple[datetime, datetime]:
    """(respond_by, internal_target) for a post on a channel with ``sla`` at a level."""
    promise = _tightened(created_at, sla.promise, level.factor, level.cap_minutes, hours)
    internal = _tightened(created_at, sla.internal, level.factor, level.internal_cap_minutes, hours)
    return promise, min(internal, promise)


def progress(
    created_at: datetime, due: datetime, now: datetime, hours: BusinessHours
) -> tuple[float, timedelta, timedelta]:
    """(share, waited, window): how much of the working time from ``created_at`` to ``due``
    has passed at ``now``: 0 before the post, 1 from the deadline on (``waited`` then counts
    the calendar time past it too)."""
    created_at, due, now = (t.astimezone(UTC) for t in (created_at, due, now))
    window = hours.between(created_at, due)
    if now >= due:
        return 1.0, window + (now - due), window
    waited = hours.between(created_at, now)
    if window <= timedelta(0):  # a business-day close outside the team's hours
        window, waited = due - created_at, max(timedelta(0), now - created_at)
    return (waited / window if window > timedelta(0) else 0.0), waited, window
