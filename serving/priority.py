"""Priority policy: turn a post's model outputs and customer context into a 0-100 score, a level
P1-P4, a respond-by time and the reasons behind them.

The numbers are a deployment's business rules, not code: they live in a YAML policy file (the
shipped one is ``policies/default.yaml``), validated on load so that a typo fails at start-up
with the offending key named, never silently at 3 a.m. Scoring is a pure function of its
inputs: time comes from the post's ``created_at``, never from the clock, so a re-score of the
same post gives the same answer.

Design choices:

* The score is additive (points per factor) so every point can be explained in ``reasons``.
* SLA per level: the channel's windows are *tightened* for urgent levels, never loosened past
  the public promise. The level's ``factor`` (0-1] multiplies both channel windows, then
  ``cap_minutes`` bounds the promise and ``internal_cap_minutes`` the internal target (so a P1
  e-mail is due "within 1 h", not "within 6 h"); the internal target never falls after the
  promise.
* "Same business day" channels are a rule (``kind: business_day_end``), not minutes: the window
  runs to the close of the current business day in the team's time zone, or of the next one when
  the post arrives after the close or on a day off. Public holidays are not modelled.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from features.context import reach, repeat_contacts, value
from serving.routing import RoutingPolicy
from serving.schemas import Channel, Post, Prediction, Priority, Reason

Level = Literal["P1", "P2", "P3", "P4"]
LEVELS: tuple[Level, ...] = ("P1", "P2", "P3", "P4")
DEFAULT_KEY = "default"


class PolicyError(ValueError):
    """A policy file that cannot be used; ``fields`` are the dotted keys at fault."""

    def __init__(self, message: str, fields: list[str] | None = None) -> None:
        super().__init__(message)
        self.fields = fields or []


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- SLA windows


def _zone(name: str) -> tzinfo:
    """``UTC`` needs no tz database; anything else must be an IANA name."""
    return UTC if name.upper() == "UTC" else ZoneInfo(name)


class MinutesWindow(_Strict):
    """A fixed window: respond within N minutes of the post."""

    kind: Literal["minutes"] = "minutes"
    minutes: float = Field(gt=0)

    def deadline(self, created_at: datetime) -> datetime:
        return created_at + timedelta(minutes=self.minutes)

    def describe(self) -> str:
        return f"{self.minutes:g} min"


class BusinessDayEndWindow(_Strict):
    """Respond by the close of the business day (``hour`` local time in ``tz``).

    A post after the close, or on a day not in ``days`` (ISO weekdays, 1 = Monday), is due at the
    close of the next business day.
    """

    kind: Literal["business_day_end"]
    hour: int = Field(ge=1, le=23)
    tz: str = "UTC"
    days: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5], min_length=1)

    @field_validator("tz")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            _zone(v)
        except (ZoneInfoNotFoundError, ValueError) as e:
            raise ValueError(f"unknown time zone {v!r} (use an IANA name such as UTC)") from e
        return v

    @field_validator("days")
    @classmethod
    def _weekdays(cls, v: list[int]) -> list[int]:
        bad = [d for d in v if not 1 <= d <= 7]
        if bad:
            raise ValueError(f"days are ISO weekdays 1-7 (1 = Monday); got {bad}")
        return sorted(set(v))

    def deadline(self, created_at: datetime) -> datetime:
        zone = _zone(self.tz)
        local = created_at.astimezone(zone)
        day = local.date()
        for _ in range(8):  # today plus at most a week ahead always finds a business day
            if day.isoweekday() in self.days:
                close = datetime(day.year, day.month, day.day, self.hour, tzinfo=zone)
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
    """The public ``promise`` of a channel and the team's tighter ``internal`` target.

    With mixed kinds (a business-day promise and a minutes target) the order cannot be checked
    here; at scoring time the internal target is clamped to the promise.
    """

    promise: Window
    internal: Window

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


class LevelSla(_Strict):
    """How a level tightens the channel's windows: × ``factor``, then at most the caps."""

    factor: float = Field(gt=0, le=1)
    cap_minutes: float | None = Field(default=None, gt=0)
    internal_cap_minutes: float | None = Field(default=None, gt=0)

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


# --------------------------------------------------------------------------- priority policy


class PriorityWeights(_Strict):
    """Maximum points per factor; each is multiplied by a 0-1 strength (counts: per unit)."""

    actionability: float = Field(ge=0)
    negative_sentiment: float = Field(ge=0)
    topic_severity: float = Field(ge=0)
    customer_value: float = Field(ge=0)
    reach: float = Field(ge=0)
    verified: float = Field(ge=0)
    repeat_contact: float = Field(ge=0)
    open_tickets: float = Field(ge=0, description="points per open ticket, up to the cap")


class TopicSeverity(_Strict):
    """Severity 0-1 per topic label; labels the map does not know get ``default``."""

    default: float = Field(ge=0, le=1)
    labels: dict[str, float] = Field(default_factory=dict)

    @field_validator("labels")
    @classmethod
    def _unit(cls, v: dict[str, float]) -> dict[str, float]:
        bad = sorted(k for k, x in v.items() if not 0.0 <= x <= 1.0)
        if bad:
            raise ValueError(f"severities must be within 0-1; out of range for {bad}")
        return v

    def of(self, label: str) -> float:
        return self.labels.get(label, self.default)


class LevelThresholds(_Strict):
    """Minimum score for each level; below ``P3`` is P4."""

    P1: float = Field(gt=0, le=100)
    P2: float = Field(gt=0, le=100)
    P3: float = Field(gt=0, le=100)

    @model_validator(mode="after")
    def _descending(self) -> Self:
        if not self.P1 > self.P2 > self.P3:
            raise ValueError(
                f"thresholds must be strictly descending P1 > P2 > P3; "
                f"got {self.P1:g}, {self.P2:g}, {self.P3:g}"
            )
        return self

    def level(self, score: float) -> Level:
        if score >= self.P1:
            return "P1"
        if score >= self.P2:
            return "P2"
        if score >= self.P3:
            return "P3"
        return "P4"


class PriorityPolicy(_Strict):
    """Everything that turns signals into a :class:`~serving.schemas.Priority`."""

    weights: PriorityWeights
    topic_severity: TopicSeverity
    repeat_contact_window_hours: float = Field(gt=0)
    open_tickets_cap: int = Field(ge=1)
    value_saturation: float = Field(default=10_000.0, gt=0)
    reach_saturation: int = Field(default=1_000_000, ge=1)
    levels: LevelThresholds
    sla: dict[str, ChannelSla]
    level_sla: LevelSlas

    @field_validator("sla")
    @classmethod
    def _every_channel(cls, v: dict[str, ChannelSla]) -> dict[str, ChannelSla]:
        known = {c.value for c in Channel}
        unknown = sorted(set(v) - known - {DEFAULT_KEY})
        if unknown:
            raise ValueError(f"unknown channels {unknown}; expected {sorted(known)} or default")
        missing = [c.value for c in Channel if c.value not in v]
        if missing and DEFAULT_KEY not in v:
            raise ValueError(f"no window for channels {missing} and no default")
        return v

    def channel_sla(self, channel: Channel | str) -> ChannelSla:
        return self.sla.get(str(channel)) or self.sla[DEFAULT_KEY]

    def unknown_topic_labels(self, labels: Iterable[str]) -> list[str]:
        """Severity-map labels the model never predicts: likely typos, worth a start-up warning."""
        return sorted(set(self.topic_severity.labels) - set(labels))


class Policy(_Strict):
    """One policy file: prioritization and routing, versioned together."""

    version: Literal[1] = 1
    priority: PriorityPolicy
    routing: RoutingPolicy


def default_policy_path() -> Path:
    """The shipped policy (airline/telecom care defaults)."""
    return Path(__file__).parent / "policies" / "default.yaml"


def _loc(loc: tuple[int | str, ...]) -> str:
    """Dotted key path; drops the union tag pydantic inserts after ``promise``/``internal``."""
    tags, windows = {"minutes", "business_day_end"}, {"promise", "internal"}
    parts = [str(p) for i, p in enumerate(loc) if not (p in tags and i and loc[i - 1] in windows)]
    return ".".join(parts) or "(top level)"


def load_policy(path: str | Path | None = None) -> Policy:
    """Read and validate a policy file (the shipped one when ``path`` is None).

    Raises :class:`PolicyError` naming the file and every bad key, e.g.
    ``priority.weights.actionability: Input should be greater than or equal to 0``.
    """
    p = Path(path) if path is not None else default_policy_path()
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise PolicyError(f"policy {p}: cannot read: {e}") from e
    except yaml.YAMLError as e:
        raise PolicyError(f"policy {p}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise PolicyError(f"policy {p}: expected a mapping with priority and routing keys")
    try:
        return Policy.model_validate(data)
    except ValidationError as e:
        problems = [(_loc(err["loc"]), err["msg"]) for err in e.errors()]
        text = "; ".join(f"{k}: {m}" for k, m in problems)
        raise PolicyError(f"policy {p}: {text}", fields=[k for k, _ in problems]) from e


# --------------------------------------------------------------------------- signals


class PostSignals(BaseModel):
    """What the priority policy looks at for one post: model outputs plus customer context."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    p_actionable: float = Field(ge=0, le=1)
    p_negative: float = Field(ge=0, le=1)
    topic: str
    topic_confidence: float = Field(ge=0, le=1)
    # The topic model abstained: the label is shown but its severity is not applied.
    topic_uncertain: bool = False
    channel: Channel
    created_at: AwareDatetime
    followers: int = Field(default=0, ge=0)
    verified: bool = False
    lifetime_value: float = Field(default=0.0, ge=0)
    open_tickets: int = Field(default=0, ge=0)
    recent_contacts: tuple[tuple[Channel, AwareDatetime], ...] = ()

    @field_validator("created_at")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        return v.astimezone(UTC)


def _prob(name: str, x: float) -> float:
    """Clip float noise (1.0000001) from model outputs; NaN or inf is a bug, not a zero."""
    if not math.isfinite(x):
        raise ValueError(f"{name} is not a finite number: {x!r}")
    return min(1.0, max(0.0, x))


def signals_from(
    post: Post,
    topic: Prediction,
    sentiment: Prediction,
    p_actionable: float,
    negative_labels: list[str],
) -> PostSignals:
    """Build the signals from the API objects; P(negative) sums the negative labels' scores.

    ``negative_labels`` comes from the label schema (sentiment ``positive_labels``). A label
    absent from the sentiment scores means the schema and the model disagree: that raises,
    because silently reading it as 0 would drop a whole factor.
    """
    if not negative_labels:
        raise ValueError("negative_labels is empty: the label schema names the negative labels")
    missing = [lab for lab in negative_labels if lab not in sentiment.scores]
    if missing:
        raise ValueError(
            f"negative labels {missing} not in sentiment scores {list(sentiment.scores)}"
        )
    author, customer = post.author, post.customer
    return PostSignals(
        p_actionable=_prob("p_actionable", p_actionable),
        p_negative=_prob("p_negative", sum(sentiment.scores[lab] for lab in negative_labels)),
        topic=topic.label,
        topic_confidence=_prob("topic confidence", topic.confidence),
        topic_uncertain=topic.uncertain,
        channel=post.channel,
        created_at=post.created_at,
        followers=author.followers if author else 0,
        verified=author.verified if author else False,
        lifetime_value=customer.lifetime_value if customer else 0.0,
        open_tickets=customer.open_tickets if customer else 0,
        recent_contacts=tuple((c.channel, c.at) for c in customer.recent_contacts)
        if customer
        else (),
    )


# --------------------------------------------------------------------------- scoring


def _contributions(s: PostSignals, policy: PriorityPolicy) -> list[tuple[str, float, str]]:
    """(factor, points, detail) for every factor, zeros included."""
    w = policy.weights
    out: list[tuple[str, float, str]] = []

    pts = s.p_actionable * w.actionability
    out.append(("actionability", pts, f"P(actionable) {s.p_actionable:.2f} × {w.actionability:g}"))

    pts = s.p_negative * w.negative_sentiment
    detail = f"negative sentiment {s.p_negative:.2f} × {w.negative_sentiment:g}"
    out.append(("negative_sentiment", pts, detail))

    if s.topic_uncertain:
        sev = policy.topic_severity.default
        what = f"topic {s.topic} uncertain, default severity {sev:.2f}"
    else:
        sev = policy.topic_severity.of(s.topic)
        known = s.topic in policy.topic_severity.labels
        what = f"topic {s.topic} severity {sev:.2f}" + ("" if known else " (default)")
    pts = sev * s.topic_confidence * w.topic_severity
    detail = f"{what} × confidence {s.topic_confidence:.2f} × {w.topic_severity:g}"
    out.append(("topic_severity", pts, detail))

    v = value(s.lifetime_value, policy.value_saturation)
    detail = f"lifetime value {s.lifetime_value:,.0f} → {v:.2f} (log scale) × {w.customer_value:g}"
    out.append(("customer_value", v * w.customer_value, detail))

    r = reach(s.followers, policy.reach_saturation)
    out.append(
        ("reach", r * w.reach, f"{s.followers:,} followers → {r:.2f} (log scale) × {w.reach:g}")
    )

    out.append(("verified", w.verified if s.verified else 0.0, "verified author"))

    hours = policy.repeat_contact_window_hours
    window = timedelta(hours=hours)
    n = repeat_contacts(s.recent_contacts, s.created_at, s.channel, window)
    # The channels behind the count, via the same helper so the two can never disagree.
    others = sorted(
        {
            str(ch)
            for ch, at in s.recent_contacts
            if repeat_contacts([(ch, at)], s.created_at, s.channel, window)
        }
    )
    detail = f"{n} contact(s) on {', '.join(others) or 'another channel'} in the {hours:g} h before"
    out.append(("repeat_contact", w.repeat_contact if n > 0 else 0.0, detail))

    cap = policy.open_tickets_cap
    k = min(s.open_tickets, cap)
    detail = f"{s.open_tickets} open ticket(s), counted up to {cap} × {w.open_tickets:g}"
    out.append(("open_tickets", k * w.open_tickets, detail))
    return out


def _half_up(x: float) -> int:
    return math.floor(x + 0.5)


def deadlines(
    created_at: datetime, channel: Channel | str, level: Level, policy: PriorityPolicy
) -> tuple[datetime, datetime]:
    """(respond_by, internal_target): the channel's windows tightened for the level.

    Each window is multiplied by the level's factor and bounded by its cap; the internal target
    is then clamped to the promise (mixed window kinds can cross near a business-day close).
    """
    sla, lv = policy.channel_sla(channel), policy.level_sla.of(level)
    promise = (sla.promise.deadline(created_at) - created_at) * lv.factor
    internal = (sla.internal.deadline(created_at) - created_at) * lv.factor
    if lv.cap_minutes is not None:
        promise = min(promise, timedelta(minutes=lv.cap_minutes))
    if lv.internal_cap_minutes is not None:
        internal = min(internal, timedelta(minutes=lv.internal_cap_minutes))
    return created_at + promise, created_at + min(internal, promise)


def prioritize(signals: PostSignals, policy: PriorityPolicy) -> Priority:
    """Score one post: points per factor, clipped to 0-100; level, deadlines and reasons."""
    parts = _contributions(signals, policy)
    raw = sum(pts for _, pts, _ in parts)
    score = _half_up(min(100.0, max(0.0, raw)))
    level = policy.levels.level(score)
    respond_by, internal = deadlines(signals.created_at, signals.channel, level, policy)
    reasons = [
        Reason(factor=f, points=round(pts, 1), detail=f"{d} = {pts:.1f}")
        for f, pts, d in sorted(parts, key=lambda t: (-t[1], t[0]))
        if pts > 0
    ]
    return Priority(
        score=score,
        level=level,
        respond_by=respond_by,
        internal_target=internal,
        reasons=reasons,
    )
