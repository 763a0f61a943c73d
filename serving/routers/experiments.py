"""Routing experiments: the A/B configuration (admins: ``GET``/``PUT /v1/admin/experiment``)
and its report (``GET /v1/reports/experiment``, an API key or an admin). The arm assignment
and the statistics are ``serving/experiments.py``; storage and the report's figures
``serving/experiment_store.py``; the assign path (``serving/routers/assign.py``) routes each
post by its arm."""

from __future__ import annotations

import hmac
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AwareDatetime, BaseModel, Field
from starlette.concurrency import run_in_threadpool

from serving.deps import AdminOnly, get_workspace, require_api_key, require_role
from serving.errors import Conflict, ModelNotReady, NotFound, Unauthorized, ValidationFailed
from serving.errors import responses as error_responses
from serving.experiment_store import ExperimentConflict, ExperimentStore, StoredExperiment
from serving.experiment_store import build_report as _build_report
from serving.experiments import ExperimentConfig
from serving.schemas import MAX_SERIAL, Stored, _Strict

router = APIRouter(tags=["experiments"])
_bearer = HTTPBearer(auto_error=False, description="An API key or an admin key.")


# --------------------------------------------------------------------------- bodies


class ExperimentUpdate(_Strict):
    experiment: ExperimentConfig
    expected_version: int | None = Field(
        default=None,
        ge=1,
        le=MAX_SERIAL,
        description="Refuse (409) unless this version is still in force: no lost updates.",
    )


class ExperimentOut(BaseModel):
    version: int
    created_at: AwareDatetime
    created_by: str
    active: bool = Field(description="Routing posts now: enabled and within start/stop.")
    experiment: ExperimentConfig


class KpiOut(BaseModel):
    key: str
    label: str
    better: Literal["higher", "lower"]
    unit: str | None = Field(description="min, or share (a proportion: 0.1 is 10%).")
    a: float | None
    b: float | None
    n_a: int
    n_b: int
    difference: float | None = Field(description="B − A.")
    low: float | None = Field(description="The confidence interval of B − A.")
    high: float | None
    method: str | None
    significant: bool = Field(description="The interval excludes 0.")
    verdict: str


class ArmOut(BaseModel):
    policy: str
    strategy: str
    assigned: int
    closed: int
    with_feedback: int
    awaiting_first_response_past_due: int = Field(
        description="Open cases past their deadline with no first response recorded yet "
        "(not counted in the SLA breach rate until one is)."
    )


class ExperimentReport(BaseModel):
    name: str
    version: int
    active: bool
    split: Literal["share", "time"]
    share_b: float | None
    period_minutes: float | None
    start: AwareDatetime | None
    stop: AwareDatetime | None
    confidence: float
    arms: dict[str, ArmOut]
    kpis: list[KpiOut]
    verdict: str = Field(description='e.g. "B is better on CSAT by 0.21 [0.05, 0.37]".')
    note: str
    generated_at: AwareDatetime


# --------------------------------------------------------------------------- dependencies


def get_experiments(request: Request) -> ExperimentStore:
    found = getattr(request.app.state, "experiments", None)
    if found is None:
        raise ModelNotReady("the service is starting or shutting down")
    return found


ExperimentsDep = Annotated[ExperimentStore, Depends(get_experiments)]


async def key_or_admin(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """A helpdesk API key or an admin key (``Authorization: Bearer``), or a signed-in admin
    (the browser); returns who. A wrong key counts against the client's budget once."""
    token = credentials.credentials.strip() if credentials else ""
    if token:
        given = token.encode("utf-8")
        ok = False
        for key in request.app.state.settings.admin_keys:  # no early exit: constant time
            ok |= hmac.compare_digest(given, key.get_secret_value().encode("utf-8"))
        if ok:
            return "admin-key"
        await require_api_key(request, credentials)
        return "api-key"
    try:
        user = await require_role("admin")(request, await get_workspace(request))
    except Unauthorized:
        raise Unauthorized(
            "missing API key: send 'Authorization: Bearer <key>' (an API or admin key), or "
            "sign in as an admin"
        ) from None
    return user.name


KeyOrAdmin = Annotated[str, Depends(key_or_admin)]


def _out(s: StoredExperiment) -> ExperimentOut:
    return ExperimentOut(
        version=s.version,
        created_at=s.created_at,
        created_by=s.created_by,
        active=s.config.active(datetime.now(UTC)),
        experiment=s.config,
    )


# --------------------------------------------------------------------------- routes


@router.get(
    "/v1/admin/experiment",
    response_model=ExperimentOut,
    responses=error_responses(401, 403, 404, 503),
    summary="The routing experiment in force",
)
async def get_experiment(who: AdminOnly, experiments: ExperimentsDep) -> ExperimentOut:
    """The A/B configuration (both arms' routing, split, share or period, start and stop)
    with its version; 404 before one is stored."""
    found = await run_in_threadpool(experiments.current)
    if found is None:
        raise NotFound("no routing experiment is configured: PUT one")
    return _out(found)


@router.put(
    "/v1/admin/experiment",
    response_model=ExperimentOut,
    responses=error_responses(401, 403, 409, 422, 503),
    summary="Start, change or stop the routing experiment",
)
async def put_experiment(
    body: ExperimentUpdate, who: AdminOnly, experiments: ExperimentsDep
) -> ExperimentOut:
    """Validates the configuration (422 naming the field, e.g. ``experiment.share_b``),
    stores it as the next version, durably, and routes by it from the next assignment on.
    Stop with ``enabled: false`` or a ``stop`` time; a new ``name`` starts a new experiment
    (the report of the old one stays readable by name)."""
    problems = body.experiment.problems()
    if problems:
        fields = [f"experiment.{f}" for f, _ in problems]
        message = "; ".join(f"experiment.{f}: {m}" for f, m in problems)
        raise ValidationFailed(message, fields)
    try:
        saved = await run_in_threadpool(
            experiments.save, body.experiment, who, body.expected_version
        )
    except ExperimentConflict as e:
        raise Conflict(
            f"expected_version: version {e.current} is in force, not {e.expected}; "
            "read it again and re-apply your change",
            ["expected_version"],
        ) from e
    return _out(saved)


@router.get(
    "/v1/reports/experiment",
    response_model=ExperimentReport,
    responses=error_responses(401, 403, 404, 422, 429, 503),
    summary="The routing experiment's result: each KPI's B − A with its confidence interval",
)
async def experiment_report(
    who: KeyOrAdmin,
    experiments: ExperimentsDep,
    name: Annotated[
        Stored | None,
        Query(min_length=1, max_length=100, description="Default: the experiment in force."),
    ] = None,
    confidence: Annotated[
        float, Query(ge=0.5, le=0.999, description="The intervals' confidence level.")
    ] = 0.95,
) -> dict[str, Any]:
    """Per arm: assignments, closed cases, feedback; per KPI (CSAT, first response median and
    mean, resolution rate, SLA breach rate): each arm's figure, B − A with its interval
    (Welch t for means, Bonett-Price for medians, Newcombe for proportions) and a sentence;
    and a headline verdict ("B is better on CSAT by 0.21 [0.05, 0.37]" or "no significant
    difference")."""

    def work() -> dict[str, Any] | None:
        stored = experiments.named(name) if name else experiments.current()
        if stored is None:
            return None
        return _build_report(stored, experiments.outcomes(stored.config.name), confidence)

    report = await run_in_threadpool(work)
    if report is None:
        if name:
            raise NotFound(f"name: no routing experiment named {name!r}", ["name"])
        raise NotFound("no routing experiment is configured")
    return report
