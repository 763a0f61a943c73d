"""Every request and response body of the API, in one place."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, field_validator

MAX_POSTS = 256
MAX_TEXT = 5000
# Timestamps a post or contact may carry: none before the Unix epoch, none more than a day
# ahead of this server's clock (room for clock skew). Outside that they are client bugs, and
# near the ends of the calendar they overflowed computing respond_by (a 500, not a 422).
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
MAX_AHEAD = timedelta(days=1)
# Counts stay within what every store's INTEGER column holds (PostgreSQL's is 32-bit).
MAX_COUNT = 1_000_000


class Channel(StrEnum):
    twitter = "twitter"
    facebook = "facebook"
    instagram = "instagram"
    community = "community"
    email = "email"
    chat = "chat"
    phone = "phone"


def _utc(v: datetime) -> datetime:
    """Naive datetimes are read as UTC; everything is kept in UTC, between ``EARLIEST`` and a
    day after now."""
    try:
        v = v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00+05:00 is before year 1 in UTC
        raise ValueError("out of range") from None
    if v < EARLIEST:
        raise ValueError(f"must not be before {EARLIEST.date().isoformat()}")
    latest = datetime.now(UTC) + MAX_AHEAD
    if v > latest:
        raise ValueError(
            f"must not be more than a day after the server's clock ({latest:%Y-%m-%dT%H:%MZ})"
        )
    return v


def _no_nul(v: str) -> str:
    # PostgreSQL refuses NUL in text and JSONB: a stored string must not hold one.
    if "\x00" in v:
        raise ValueError("must not contain NUL characters")
    return v


# A string the store keeps (agent ids, names, skills' topics).
Stored = Annotated[str, AfterValidator(_no_nul)]
Unit = Annotated[float, Field(ge=0.0, le=1.0)]
Minutes = Annotated[float, Field(ge=0.0)]


class _Strict(BaseModel):
    # NaN and infinities are refused (Python's JSON parser accepts NaN and Infinity): they
    # made routing scores NaN and were stored as null, i.e. lost.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Author(_Strict):
    handle: str | None = Field(default=None, max_length=200)
    followers: int = Field(default=0, ge=0, le=10**10)
    verified: bool = False


class Contact(_Strict):
    channel: Channel
    at: datetime

    _tz = field_validator("at")(_utc)


class Customer(_Strict):
    id: str | None = Field(default=None, max_length=200)
    lifetime_value: float = Field(default=0.0, ge=0)
    tier: str | None = Field(default=None, max_length=50)
    open_tickets: int = Field(default=0, ge=0, le=MAX_COUNT)
    recent_contacts: list[Contact] = Field(default_factory=list, max_length=1000)


class Post(_Strict):
    id: str = Field(min_length=1, max_length=200)
    # The pattern documents the blank check below in the schema (JSON Schema patterns search).
    text: str = Field(min_length=1, max_length=MAX_TEXT, json_schema_extra={"pattern": r"\S"})
    channel: Channel = Channel.twitter
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    author: Author | None = None
    customer: Customer | None = None

    _tz = field_validator("created_at")(_utc)

    @field_validator("text")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("text is blank")
        return v


class ScoreRequest(_Strict):
    posts: list[Post] = Field(min_length=1, max_length=MAX_POSTS)


class Prediction(BaseModel):
    label: str
    confidence: float
    scores: dict[str, float]
    # True when confidence is below the task's abstention threshold: show, do not apply.
    uncertain: bool = False


class Actionable(BaseModel):
    label: bool
    probability: float


class Reason(BaseModel):
    factor: str
    points: float
    detail: str


class Priority(BaseModel):
    score: int = Field(ge=0, le=100)
    level: Literal["P1", "P2", "P3", "P4"]
    respond_by: AwareDatetime
    internal_target: AwareDatetime
    reasons: list[Reason]


class AgentMatch(BaseModel):
    id: str
    score: float
    reasons: list[str]


class Route(BaseModel):
    agents: list[AgentMatch]


class ScoreResult(BaseModel):
    id: str
    topic: Prediction
    sentiment: Prediction
    actionability: Prediction
    actionable: Actionable
    priority: Priority
    route: Route


class ScoreResponse(BaseModel):
    model_version: str
    results: list[ScoreResult]


class AgentStatus(StrEnum):
    online = "online"
    away = "away"
    offline = "offline"


class Agent(_Strict):
    id: Stored = Field(min_length=1, max_length=200)
    name: Stored | None = Field(default=None, max_length=200)
    work_group: Stored = Field(default="default", max_length=100)
    languages: list[Annotated[Stored, Field(max_length=35)]] = Field(
        default_factory=lambda: ["en"], max_length=100
    )
    # Skill per topic label, 0-1; a topic absent here counts as 0.
    skills: dict[Stored, Unit] = Field(default_factory=dict)
    capacity: int = Field(default=10, ge=1, le=1000)
    caseload: int = Field(default=0, ge=0, le=MAX_COUNT)
    status: AgentStatus = AgentStatus.online
    # Measured share of satisfied customers per topic, 0-1 (a topic absent: no measurement).
    csat: dict[Stored, Unit] = Field(default_factory=dict)
    # Measured median first-response minutes per topic (absent: no measurement).
    first_response_minutes: dict[Stored, Minutes] = Field(default_factory=dict)


class Roster(_Strict):
    agents: list[Agent] = Field(max_length=10_000)


class SelfCheckResult(BaseModel):
    """The bundle's recorded posts re-scored on this machine at load: if ``passed`` is false,
    this CPU or runtime computes the model differently from where its metrics were measured."""

    passed: bool
    agreement: dict[str, float]  # percent of the posts' labels unchanged, per task
    max_abs_diff: float  # largest logit difference
    recorded_on: dict[str, str]
    host: dict[str, str]


class ModelInfo(BaseModel):
    name: str
    version: str
    base_model: str
    precision: str
    max_length: int
    tasks: dict[str, list[str]]
    abstain_below: dict[str, float]
    metrics: dict[str, dict[str, float]]
    # Tasks whose logits the graph blends with a lexical expert, and with what weight and
    # validation gain (empty: the transformer alone).
    lexical: dict[str, object] = Field(default_factory=dict)
    # None for a bundle that records no self-check.
    self_check: SelfCheckResult | None = None


class ErrorBody(BaseModel):
    """The one error shape: a machine-readable type, a sentence, and the fields at fault."""

    error: str
    message: str
    fields: list[str] = Field(default_factory=list)


class Health(BaseModel):
    """Liveness: the process answers."""

    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    """Readiness: the model is loaded and warm, and the queue accepts work."""

    status: Literal["ready"] = "ready"
    model: str
    version: str
    queued_posts: int
