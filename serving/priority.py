"""Priority policy: turn a post's model outputs and customer context into a 0-100 score, a level
P1-P4, a respond-by time and the reasons behind them.

The numbers are a deployment's business rules, not code: they form the prioritization
dictionary (the shipped seed is ``policies/default.yaml``; the live, versioned copy is in the
store, ``serving/dictionary.py``), validated so that a typo is refused with the offending key
named, never silently at 3 a.m. Scoring is a pure function of its inputs: time comes from the
post's ``created_at`` and, for breach risk only, an explicit ``now``, never from the clock.

Design choices:

* The score is additive (points per factor) so every point can be explained in ``reasons``.
  The customer's tier adds its points and multiplies the other factors' sum; the tier's
  reason shows both as one figure.
* SLA windows, business hours and holidays are ``serving/sla.py``: the channel's windows are
  tightened for urgent levels, never loosened past the public promise, and count working time.
* Breach risk: with ``now`` given, a post that has used more than ``breach_risk_from`` of its
  promise window gains up to ``weights.breach_risk`` points, all of them at the deadline and
  after. The deadlines themselves stay those of the level the post earned without breach
  risk: a promise does not move because the post waited.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, Self

import yaml
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from features.context import reach, repeat_contacts, value
from serving.routing import RoutingPolicy
from serving.schemas import Channel, Post, Prediction, Priority, Reason

# The SLA models lived here before serving/sla.py; re-exported for their importers.
from serving.sla import (  # noqa: F401
    ALWAYS_OPEN,
    LEVELS,
    BusinessDayEndWindow,
    BusinessHours,
    ChannelSla,
    Hours,
    Level,
    LevelSla,
    LevelSlas,
    MinutesWindow,
    Window,
    progress,
    window_deadlines,
)

DEFAULT_KEY = "default"


class PolicyError(ValueError):
    """A policy file that cannot be used; ``fields`` are the dotted keys at fault."""

    def __init__(self, message: str, fields: list[str] | None = None) -> None:
        super().__init__(message)
        self.fields = fields or []


class _Strict(BaseModel):
    # NaN and infinities are refused: JSON (the admin API) can carry them, and a NaN weight
    # would make every score NaN.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


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
    # Added with the live dictionary; 0 (off) when a policy file predates them.
    influencer: float = Field(default=0.0, ge=0, description="flat, past influencer thresholds")
    breach_risk: float = Field(default=0.0, ge=0, description="× nearness to the deadline")


class Influencer(_Strict):
    """Who counts as influential: at least ``min_followers``, or verified when
    ``verified_counts``. Worth ``weights.influencer`` points; the router may escalate too."""

    min_followers: int = Field(default=50_000, ge=1)
    verified_counts: bool = False

    def of(self, followers: int, verified: bool) -> bool:
        return followers >= self.min_followers or (self.verified_counts and verified)


class TierRule(_Strict):
    """A customer tier's effect: flat ``points``, and ``multiplier`` × the sum of the post's
    other factors (1: none). ``vip`` marks the tier as high-value for routing."""

    points: float = Field(default=0.0, ge=0, le=100)
    multiplier: float = Field(default=1.0, ge=0.5, le=3.0)
    vip: bool = False


class CustomerTiers(_Strict):
    """Rules per ``customer.tier`` value (matched case-insensitively); a post with no tier or
    an unknown one gets ``default``."""

    default: TierRule = Field(default_factory=TierRule)
    tiers: dict[str, TierRule] = Field(default_factory=dict, max_length=100)

    @field_validator("tiers")
    @classmethod
    def _lower(cls, v: dict[str, TierRule]) -> dict[str, TierRule]:
        out: dict[str, TierRule] = {}
        for name, rule in v.items():
            key = name.strip().lower()
            if not key or len(key) > 50:
                raise ValueError(f"tier names are 1-50 characters; got {name!r}")
            if key in out:
                raise ValueError(f"tier {name!r} is listed twice (names ignore case)")
            out[key] = rule
        return out

    def of(self, tier: str | None) -> tuple[TierRule, bool]:
        """The rule for ``tier`` and whether the tier is a known one."""
        rule = self.tiers.get(tier.strip().lower()) if tier else None
        return (rule, True) if rule is not None else (self.default, False)


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
    # The team's hours (a channel's ``business_hours`` overrides): SLA minutes count only
    # while open. Default 24/7: plain minutes, as before hours existed.
    business_hours: Hours = Field(default_factory=lambda: ALWAYS_OPEN)
    customer_tiers: CustomerTiers = Field(default_factory=CustomerTiers)
    influencer: Influencer = Field(default_factory=Influencer)
    # Share of the promise window after which breach-risk points start (all of them at the
    # deadline).
    breach_risk_from: float = Field(default=0.5, ge=0, lt=1)

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

    def hours_for(self, channel: Channel | str) -> BusinessHours:
        """The business hours a channel's SLA clock runs on."""
        return self.channel_sla(channel).business_hours or self.business_hours

    def unknown_topic_labels(self, labels: Iterable[str]) -> list[str]:
        """Severity-map labels the model never predicts: likely typos, worth a start-up warning."""
        return sorted(set(self.topic_severity.labels) - set(labels))


class Policy(_Strict):
    """One dictionary version: prioritization and routing, versioned together. ``version``
    is the format (1); the dictionary's own version number is the store's."""

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
    return validate_policy(data, f"policy {p}")


def validate_policy(data: object, source: str = "policy", prefix: str = "") -> Policy:
    """Validate a policy given as data (parsed YAML or JSON). Raises :class:`PolicyError`
    naming ``source`` and every bad key as a dotted path, each led by ``prefix``."""
    if not isinstance(data, dict):
        where = prefix.rstrip(".") or "(top level)"
        raise PolicyError(
            f"{source}: {where}: expected a mapping with priority and routing keys",
            fields=[prefix.rstrip(".")] if prefix else [],
        )
    try:
        return Policy.model_validate(data)
    except ValidationError as e:
        problems = [(prefix + _loc(err["loc"]), err["msg"]) for err in e.errors()]
        text = "; ".join(f"{k}: {m}" for k, m in problems)
        raise PolicyError(f"{source}: {text}", fields=[k for k, _ in problems]) from e


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
    tier: str | None = None
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
    extra_contacts: Iterable[tuple[Channel, datetime]] = (),
) -> PostSignals:
    """Build the signals from the API objects; P(negative) sums the negative labels' scores.

    ``negative_labels`` comes from the label schema (sentiment ``positive_labels``). A label
    absent from the sentiment scores means the schema and the model disagree: that raises,
    because silently reading it as 0 would drop a whole factor. ``extra_contacts`` are the
    customer's contacts from the history store, merged with those the post carries.
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
        tier=customer.tier if customer else None,
        recent_contacts=(
            *((c.channel, c.at) for c in (customer.recent_contacts if customer else ())),
            *extra_contacts,
        ),
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

    # Scaled by P(actionable): an influencer's complaint is urgent, their chatter is not work.
    inf = policy.influencer
    if inf.of(s.followers, s.verified):
        why = f"{s.followers:,} followers >= {inf.min_followers:,}"
        if s.followers < inf.min_followers:
            why = "verified author"
        detail = f"influencer ({why}) × P(actionable) {s.p_actionable:.2f} × {w.influencer:g}"
        out.append(("influencer", s.p_actionable * w.influencer, detail))
    else:
        out.append(("influencer", 0.0, "not an influencer"))

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
    """(respond_by, internal_target): the channel's windows tightened for the level, counted
    in the channel's business hours (``serving.sla.window_deadlines``)."""
    return window_deadlines(
        created_at,
        policy.channel_sla(channel),
        policy.level_sla.of(level),
        policy.hours_for(channel),
    )


def _tier(s: PostSignals, subtotal: float, policy: PriorityPolicy) -> tuple[str, float, str]:
    """The tier's points plus its multiplier's effect on the other factors' ``subtotal``."""
    rule, known = policy.customer_tiers.of(s.tier)
    pts = rule.points + (rule.multiplier - 1.0) * subtotal
    name = s.tier if known else f"{s.tier or 'none'} (default)"
    detail = f"tier {name}: {rule.points:g} + ×{rule.multiplier:g} on {subtotal:.1f}"
    return "customer_tier", pts, detail


def _minutes(d: timedelta) -> str:
    return f"{d.total_seconds() / 60:,.0f} min"


def _breach(
    s: PostSignals, respond_by: datetime, now: datetime, policy: PriorityPolicy
) -> tuple[str, float, str]:
    """Points for a post nearing (or past) its respond-by time at ``now``."""
    w, start = policy.weights.breach_risk, policy.breach_risk_from
    share, waited, window = progress(s.created_at, respond_by, now, policy.hours_for(s.channel))
    strength = min(1.0, max(0.0, (share - start) / (1.0 - start)))
    if now >= respond_by:
        what = f"respond-by passed {_minutes(now - respond_by)} ago"
    else:
        what = f"waited {_minutes(waited)} of {_minutes(window)} ({share:.0%})"
    return "breach_risk", strength * w, f"{what}, from {start:.0%} × {w:g}"


def prioritize(
    signals: PostSignals, policy: PriorityPolicy, *, now: datetime | None = None
) -> Priority:
    """Score one post: points per factor, clipped to 0-100; level, deadlines and reasons.

    ``now`` (the clock of the request) adds breach risk; without it the result depends on the
    post alone. The deadlines are those of the level before breach risk."""
    parts = _contributions(signals, policy)
    subtotal = sum(pts for _, pts, _ in parts)
    tier = _tier(signals, subtotal, policy)
    if tier[1] != 0.0:
        parts.append(tier)
    base = sum(pts for _, pts, _ in parts)
    level = policy.levels.level(_half_up(min(100.0, max(0.0, base))))
    respond_by, internal = deadlines(signals.created_at, signals.channel, level, policy)
    if now is not None and policy.weights.breach_risk > 0:
        parts.append(_breach(signals, respond_by, now.astimezone(UTC), policy))
    raw = sum(pts for _, pts, _ in parts)
    score = _half_up(min(100.0, max(0.0, raw)))
    reasons = [
        Reason(factor=f, points=round(pts, 1), detail=f"{d} = {pts:.1f}")
        for f, pts, d in sorted(parts, key=lambda t: (-t[1], t[0]))
        if pts != 0
    ]
    return Priority(
        score=score,
        level=policy.levels.level(score),
        respond_by=respond_by,
        internal_target=internal,
        reasons=reasons,
    )
