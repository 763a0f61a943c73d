"""Every request and response body of the API, in one place."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

MAX_POSTS = 256
MAX_TEXT = 5000


class Channel(StrEnum):
    twitter = "twitter"
    facebook = "facebook"
    instagram = "instagram"
    community = "community"
    email = "email"
    chat = "chat"
    phone = "phone"


def _utc(v: datetime) -> datetime:
    """Naive datetimes are read as UTC; everything is kept in UTC."""
    return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Author(_Strict):
    handle: str | None = Field(default=None, max_length=200)
    followers: int = Field(default=0, ge=0)
    verified: bool = False


class Contact(_Strict):
    channel: Channel
    at: datetime

    _tz = field_validator("at")(_utc)


class Customer(_Strict):
    id: str | None = Field(default=None, max_length=200)
    lifetime_value: float = Field(default=0.0, ge=0)
    tier: str | None = Field(default=None, max_length=50)
    open_tickets: int = Field(default=0, ge=0)
    recent_contacts: list[Contact] = Field(default_factory=list, max_length=1000)


class Post(_Strict):
    id: str = Field(min_length=1, max_length=200)
    text: str = Field(min_length=1, max_length=MAX_TEXT)
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
    id: str = Field(min_length=1, max_length=200)
    name: str | None = Field(default=None, max_length=200)
    work_group: str = Field(default="default", max_length=100)
    languages: list[str] = Field(default_factory=lambda: ["en"])
    # Skill per topic label, 0-1; a topic absent here counts as 0.
    skills: dict[str, float] = Field(default_factory=dict)
    capacity: int = Field(default=10, ge=1, le=1000)
    caseload: int = Field(default=0, ge=0)
    status: AgentStatus = AgentStatus.online
    # Measured share of satisfied customers per topic, 0-1 (a topic absent: no measurement).
    csat: dict[str, float] = Field(default_factory=dict)
    # Measured median first-response minutes per topic (absent: no measurement).
    first_response_minutes: dict[str, float] = Field(default_factory=dict)

    @field_validator("skills", "csat")
    @classmethod
    def _unit(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [k for k, x in v.items() if not 0.0 <= x <= 1.0]
        if bad:
            raise ValueError(f"values must be within 0-1; out of range for {bad}")
        return v

    @field_validator("first_response_minutes")
    @classmethod
    def _positive(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [k for k, x in v.items() if x < 0]
        if bad:
            raise ValueError(f"minutes must be >= 0; negative for {bad}")
        return v


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
