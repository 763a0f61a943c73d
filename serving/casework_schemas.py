"""Request and response bodies of contacts, assignment, feedback and performance
(``/v1/contacts``, ``/v1/assign``, ``/v1/feedback``, ``/v1/performance``). Kept beside
``serving.schemas`` (whose building blocks they use) so neither module grows past a screenful
of concerns."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from serving.schemas import (
    MAX_TEXT,
    AgentMatch,
    Channel,
    ChannelName,
    LabelName,
    Post,
    ScoreResult,
    Stored,
    Timestamp,
    _Strict,
    _utc,
)

Id = Annotated[Stored, Field(min_length=1, max_length=200)]
# A handle has a character besides blanks and "@" (JSON Schema patterns search the string).
HANDLE_PATTERN = {"pattern": r"[^\s@]"}


def _one_of_given(*names: str, **extra: object) -> ConfigDict:
    """Document "at least one of ``names``" (checked by a validator) in the JSON Schema, so
    the OpenAPI document admits no body the API refuses for it."""
    return ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": [n], "properties": {n: {"not": {"type": "null"}, **extra}}}
                for n in names
            ]
        }
    )


class ContactIn(_Strict):
    """One contact with a customer on any channel, keyed by the customer's id, a social
    handle, or both (which also links the handle to the customer)."""

    model_config = _one_of_given("customer_id", "handle")

    customer_id: Id | None = None
    handle: Id | None = Field(
        default=None,
        validate_default=True,
        description="A social handle (with or without @; case is ignored).",
        json_schema_extra=HANDLE_PATTERN,
    )
    channel: ChannelName
    at: Timestamp
    id: Id | None = Field(
        default=None, description="The contact's id where it came from: retries count once."
    )

    _tz = field_validator("at")(_utc)

    @field_validator("handle")
    @classmethod
    def _keyed(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None and info.data.get("customer_id") is None:
            raise ValueError("a contact needs a customer_id or a handle")
        if v is not None and not v.strip().lstrip("@").strip():
            raise ValueError("handle is blank")
        return v


class HandleLink(_Strict):
    """A social handle that belongs to a customer: its posts are merged with that customer's
    contact history."""

    handle: Id = Field(json_schema_extra=HANDLE_PATTERN)
    customer_id: Id

    @field_validator("handle")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip().lstrip("@").strip():
            raise ValueError("handle is blank")
        return v


class ContactsIn(_Strict):
    model_config = _one_of_given("contacts", "links", minItems=1)

    contacts: list[ContactIn] = Field(default_factory=list, max_length=1000)
    links: list[HandleLink] = Field(default_factory=list, max_length=1000, validate_default=True)

    @field_validator("links")
    @classmethod
    def _something(cls, v: list[HandleLink], info: ValidationInfo) -> list[HandleLink]:
        # (contacts absent from info.data failed validation: that error is the one to report)
        if not v and "contacts" in info.data and not info.data["contacts"]:
            raise ValueError("give contacts, links or both")
        return v


class ContactsRecorded(BaseModel):
    recorded: int = Field(description="Contacts stored now.")
    duplicates: int = Field(description="Contacts whose id was recorded before: unchanged.")
    linked: int = Field(description="Handles linked (or moved) to a customer.")


class ContactOut(BaseModel):
    channel: Channel
    at: AwareDatetime


class ContactHistory(BaseModel):
    customer_id: str | None
    handle: str | None
    contacts: list[ContactOut] = Field(description="Oldest first, within the retention.")


class AssignRequest(_Strict):
    post: Post
    result: ScoreResult | None = Field(
        default=None,
        description="This post's result from /v1/score, to assign without scoring it again.",
    )
    as_of: Timestamp | None = Field(
        default=None, description="The clock for breach risk when scoring; default now."
    )

    @field_validator("as_of")
    @classmethod
    def _as_of_utc(cls, v: datetime | None) -> datetime | None:
        return None if v is None else _utc(v)


class AssignmentOut(BaseModel):
    post_id: str
    agent_id: str
    topic: str
    level: str
    score: int
    respond_by: AwareDatetime
    assigned_at: AwareDatetime
    closed_at: AwareDatetime | None = None
    reasons: list[str] = Field(description="Why this agent: each factor, estimate and rule.")
    replay: bool = Field(
        default=False, description="True when the post was assigned before: this is that."
    )
    caseload: int | None = Field(default=None, description="The agent's caseload after it.")
    capacity: int | None = None
    alternatives: list[AgentMatch] = Field(
        default_factory=list, description="The next candidates, best first."
    )
    experiment: str | None = Field(
        default=None, description="The routing experiment the post was routed under."
    )
    arm: str | None = Field(default=None, description="Its arm, A or B, whose policy routed it.")
    result: ScoreResult | None = Field(default=None, description="The post's triage result.")


class FeedbackIn(_Strict):
    """The outcome of a case. Fields left out keep what earlier feedback on the post said."""

    post_id: Id
    agent_id: Id | None = Field(
        default=None, description="Who handled it; default the agent it was assigned to."
    )
    topic: Id | None = Field(
        default=None, description="Needed only for a post not assigned through /v1/assign."
    )
    first_response_minutes: float | None = Field(default=None, ge=0, le=525_600)
    first_response_at: Timestamp | None = Field(
        default=None, description="Instead of minutes: when the first answer went out."
    )
    resolved: bool | None = None
    csat: int | None = Field(default=None, ge=1, le=5, description="1-5; 4 or 5 is satisfied.")
    nps: int | None = Field(default=None, ge=0, le=10)
    closed: bool = Field(default=True, description="The case is closed: frees the caseload.")
    corrected: dict[LabelName, LabelName] | None = Field(
        default=None,
        max_length=20,
        description='Labels the agent fixed, by task (e.g. {"topic": "lost_luggage"}).',
    )
    text: Stored | None = Field(
        default=None,
        max_length=MAX_TEXT,
        description="The post's text, for a correction of a post not assigned here.",
    )

    @field_validator("first_response_at")
    @classmethod
    def _at_utc(cls, v: datetime | None) -> datetime | None:
        return None if v is None else _utc(v)


class FeedbackOut(BaseModel):
    post_id: str
    agent_id: str
    topic: str
    first_response_minutes: float | None
    resolved: bool | None
    csat: int | None
    nps: int | None
    corrected: dict[str, str] | None
    closed: bool = Field(description="The case is closed (now or before).")
    released: bool = Field(description="This feedback closed the case and freed its caseload.")
    pooled: bool | None = Field(
        default=None,
        description="The corrected post entered the labeling pool (false: it was there "
        "already); null without a correction.",
    )
    updated_at: AwareDatetime


class PerformanceRow(BaseModel):
    agent_id: str
    work_group: str
    topic: str
    csat: float = Field(description="Estimated share of satisfied customers (CSAT 4-5).")
    resolution_rate: float
    first_response_minutes: float = Field(description="Estimated (geometric mean).")
    rated_cases: int
    resolution_cases: int
    timed_cases: int
    csat_prior: float
    csat_prior_source: str = Field(description="declared, team or default")


class PerformanceOut(BaseModel):
    prior_strength: float
    window_days: float
    estimates: list[PerformanceRow]
