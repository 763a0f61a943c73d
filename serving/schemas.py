"""Every request and response body of the API, in one place."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    field_validator,
)

MAX_POSTS = 256
MAX_TEXT = 5000
# Timestamps a post or contact may carry: none before the Unix epoch, none more than a day
# ahead of this server's clock (room for clock skew). Outside that they are client bugs, and
# near the ends of the calendar they overflowed computing respond_by (a 500, not a 422).
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
MAX_AHEAD = timedelta(days=1)
# Counts stay within what every store's INTEGER column holds (PostgreSQL's is 32-bit).
MAX_COUNT = 1_000_000
# Ids and versions a request names (item ids, dictionary versions): PostgreSQL's INTEGER. A
# larger one made PostgreSQL raise "integer out of range", a 500, where SQLite found nothing.
MAX_SERIAL = 2**31 - 1


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


def unicode_problem(v: str) -> str | None:
    """Why ``v`` is not Unicode text, or None. JSON's unpaired escapes ("\\ud800") decode to
    lone surrogates, which no UTF-8 encoder accepts: stored, they made every later read of the
    row a 500; as dictionary keys they were rewritten to U+FFFD, merging distinct keys."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"is not valid Unicode: an unpaired surrogate at character {e.start}"
    return None


def storable_problem(v: str) -> str | None:
    """Why no store can keep ``v`` (PostgreSQL refuses NUL in text and JSONB), or None."""
    if "\x00" in v:
        return "must not contain NUL characters"
    return unicode_problem(v)


def _text(v: object) -> object:
    # Before the str validator, so this message wins over pydantic's own for constrained strs.
    if isinstance(v, str) and (problem := unicode_problem(v)):
        raise ValueError(problem)
    return v


def _storable(v: object) -> object:
    if isinstance(v, str) and (problem := storable_problem(v)):
        raise ValueError(problem)
    return v


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _iso(v: object) -> object:
    # pydantic reads a number, or a string of one, as Unix seconds: `"as_of": 0` scored posts
    # as of 1970, `to=0.5` reported on 1969. A timestamp is ISO 8601 text (or a datetime).
    if isinstance(v, datetime) or (isinstance(v, str) and _ISO_DATE.match(v)):
        return v
    raise ValueError("must be ISO 8601 text, e.g. 2026-11-23T08:10:00Z (not a number of seconds)")


# A timestamp in a request: ISO 8601 text, naive read as UTC (``_utc``). Lax inside the strict
# request models, since JSON has no datetime type and FastAPI validates the parsed JSON.
Timestamp = Annotated[datetime, Strict(False), BeforeValidator(_iso)]


# Every string a request carries is ``Text`` (valid Unicode) or ``Stored`` (also no NUL: what
# the store keeps: agent ids, names, topics, labels, notes). Constraints go in the field's
# ``Field(...)``, or before the validator in an ``Annotated``, so pydantic applies them to the
# str itself (placed after it, they lose their pattern in the schema).
Text = Annotated[str, BeforeValidator(_text)]
Stored = Annotated[str, BeforeValidator(_storable)]
Unit = Annotated[float, Field(ge=0.0, le=1.0)]
Minutes = Annotated[float, Field(ge=0.0)]


class _Strict(BaseModel):
    """Base of every request body. NaN and infinities are refused (Python's JSON parser
    accepts NaN and Infinity): they made routing scores NaN and were stored as null, i.e. lost.
    Values are strict: JSON's type must be the schema's (``false`` is not a CSAT of 0.0, ``0``
    not ``"disabled": false``, ``"5"`` not a number); only timestamps (``Timestamp``) and
    enums (``ChannelName``), which JSON can only carry as text, are read from strings."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class Author(_Strict):
    handle: Text | None = Field(default=None, max_length=200)
    followers: int = Field(default=0, ge=0, le=10**10)
    verified: bool = False


# An enum field of a request: its value as JSON text.
ChannelName = Annotated[Channel, Strict(False)]


class Contact(_Strict):
    channel: ChannelName
    at: Timestamp

    _tz = field_validator("at")(_utc)


class Customer(_Strict):
    id: Text | None = Field(default=None, max_length=200)
    lifetime_value: float = Field(default=0.0, ge=0)
    tier: Text | None = Field(default=None, max_length=50)
    open_tickets: int = Field(default=0, ge=0, le=MAX_COUNT)
    recent_contacts: list[Contact] = Field(default_factory=list, max_length=1000)


class Post(_Strict):
    # Stored, not Text: a scored post may be kept (sampled into the labeling pool), and no
    # store keeps NUL; a social post never carries one.
    id: Stored = Field(min_length=1, max_length=200)
    # The pattern documents the blank check below in the schema (JSON Schema patterns search).
    text: Stored = Field(min_length=1, max_length=MAX_TEXT, json_schema_extra={"pattern": r"\S"})
    channel: ChannelName = Channel.twitter
    created_at: Timestamp = Field(default_factory=lambda: datetime.now(UTC))
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
    # The clock breach risk is judged by (default: the server's): a replay or a re-score of a
    # backlog names the moment it stands at.
    as_of: Timestamp | None = Field(
        default=None,
        description="The time to judge SLA breach risk at; default the server clock.",
    )

    @field_validator("as_of")
    @classmethod
    def _as_of_utc(cls, v: datetime | None) -> datetime | None:
        return None if v is None else _utc(v)


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
    dictionary_version: int | None = Field(
        default=None, description="The prioritization dictionary version that scored the post."
    )


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
    # A deployment's schema may add tasks beyond the three the priority policy reads; their
    # predictions come here by task name (empty for a schema with only the three).
    tasks: dict[str, Prediction] = Field(
        default_factory=dict,
        description="Predictions of the label schema's further tasks, by task name.",
    )


class ScoreResponse(BaseModel):
    model_version: str
    dictionary_version: int | None = Field(
        default=None, description="The prioritization dictionary version in force."
    )
    results: list[ScoreResult]


class DictionaryVersion(BaseModel):
    """One version of the prioritization dictionary and who put it in force."""

    version: int
    created_at: AwareDatetime
    created_by: str
    note: str | None = None


class DictionaryOut(DictionaryVersion):
    dictionary: dict[str, Any] = Field(
        description="Priority and routing rules, the keys of serving/policies/default.yaml."
    )


class DictionaryUpdate(_Strict):
    """A replacement dictionary: every key (as ``GET`` returns it), validated as a whole."""

    dictionary: dict[str, Any] = Field(
        description="The full dictionary: priority and routing (see GET /v1/admin/dictionary)."
    )
    note: Stored | None = Field(default=None, max_length=500)
    expected_version: int | None = Field(
        default=None,
        ge=1,
        le=MAX_SERIAL,
        description="Refuse (409) unless this version is still in force: no lost updates.",
    )


class DictionaryHistory(BaseModel):
    versions: list[DictionaryVersion]


class AgentStatus(StrEnum):
    online = "online"
    away = "away"
    offline = "offline"


class Agent(_Strict):
    id: Stored = Field(min_length=1, max_length=200)
    name: Stored | None = Field(default=None, max_length=200)
    work_group: Stored = Field(default="default", max_length=100)
    languages: list[Annotated[str, Field(max_length=35), BeforeValidator(_storable)]] = Field(
        default_factory=lambda: ["en"], max_length=100
    )
    # Skill per topic label, 0-1; a topic absent here counts as 0.
    skills: dict[Stored, Unit] = Field(default_factory=dict)
    capacity: int = Field(default=10, ge=1, le=1000)
    caseload: int = Field(default=0, ge=0, le=MAX_COUNT)
    status: Annotated[AgentStatus, Strict(False)] = AgentStatus.online
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
    queued_posts: int = Field(default=0, description="Posts waiting for the model right now.")
    protocol_bounds: bool = Field(
        default=False,
        description="Whether this server bounds request headers in size and time "
        "(MAX_HEADER_BYTES, HEADER_TIMEOUT_SECONDS): `caretriage serve`, or uvicorn with "
        "`--http serving.protocol:SettingsGuardedProtocol`. Bodies are bounded either way.",
    )


class ErrorBody(BaseModel):
    """The one error shape: a machine-readable type, a sentence, and the fields at fault."""

    error: str
    message: str
    fields: list[str] = Field(default_factory=list)


class Health(BaseModel):
    """Liveness: the process answers."""

    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    """Readiness: the model is loaded and warm, and the queue accepts work. Unauthenticated,
    so it says nothing more (the model and the queue's depth are in ``GET /v1/model``)."""

    status: Literal["ready"] = "ready"


# -- the labeling workspace ----------------------------------------------------------------------

IdempotencyKey = Annotated[
    str,
    Field(
        min_length=8,
        max_length=100,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="Chosen by the client per answer; a retry with the same key counts once.",
    ),
    BeforeValidator(_text),
]
LabelName = Annotated[str, Field(min_length=1, max_length=100), BeforeValidator(_storable)]
Note = Annotated[str, Field(max_length=2000), BeforeValidator(_storable)]


class Suggestion(BaseModel):
    label: str
    confidence: float
    scores: dict[str, float] = Field(default_factory=dict)


class LabelItem(BaseModel):
    """A post as an evaluator sees it: the text, where it came from, the model's suggestions."""

    id: int
    text: str
    channel: str | None = None
    author: dict | None = None
    context: dict | None = None
    source: str
    model_version: str | None = None
    suggestion: dict[str, Suggestion] | None = None
    needed: int
    state: str
    lease_expires_at: datetime | None = None


class NextItems(BaseModel):
    items: list[LabelItem]
    remaining: int = Field(description="Items still open in the pool (all evaluators).")


class Me(BaseModel):
    name: str
    role: str
    csrf_token: str
    tasks: dict[str, list[str]] = Field(description="The served label schema: task -> labels.")
    model_version: str


class Answer(_Strict):
    """An evaluator's answer to a leased item: its labels (every task of the served schema),
    a skip, or a flag with a note."""

    kind: Literal["label", "skip", "flag"] = "label"
    labels: dict[LabelName, LabelName] | None = None
    note: Note | None = None
    idempotency_key: IdempotencyKey
    duration_ms: int | None = Field(default=None, ge=0, le=86_400_000)


class Resolution(_Strict):
    """A lead's final labels for an item."""

    labels: dict[LabelName, LabelName]
    note: Note | None = None
    idempotency_key: IdempotencyKey


class AnswerResult(BaseModel):
    id: int
    item_id: int
    kind: str
    state: str = Field(description="The item's state after the answer: open, done, review...")
    replay: bool = Field(default=False, description="True when this key was seen before.")


class UploadPost(_Strict):
    text: Stored = Field(min_length=1, max_length=MAX_TEXT)
    id: Stored | None = Field(default=None, max_length=200)
    channel: ChannelName | None = None
    author: Author | None = None
    customer: Customer | None = None


class UploadRequest(_Strict):
    items: list[UploadPost] = Field(min_length=1, max_length=10_000)


class RowError(BaseModel):
    line: int = Field(description="1-based line in the file (JSON: the item's position); 0: all")
    message: str
    warning: bool = Field(default=False, description="A note (e.g. ignored columns): kept.")


class UploadResult(BaseModel):
    added: int
    duplicates: int
    errors: list[RowError] = Field(default_factory=list)


class UserOut(BaseModel):
    name: str
    role: Literal["evaluator", "lead", "admin"]
    disabled: bool


class NewUser(_Strict):
    name: Stored = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._@-]+$")
    role: Literal["evaluator", "lead", "admin"] = "evaluator"
    password: Text = Field(min_length=10, max_length=200)


class UserPatch(_Strict):
    role: Literal["evaluator", "lead", "admin"] | None = None
    disabled: bool | None = None
    password: Text | None = Field(default=None, min_length=10, max_length=200)
