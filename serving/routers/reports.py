"""``GET /v1/reports``: first-response percentiles, SLA breaches and CSAT/NPS by topic, agent
and channel over a time range (``serving/reports.py``), for helpdesk integrations (API key)
and for the ``/reports`` page (a signed-in lead or admin)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials
from starlette.concurrency import run_in_threadpool

from serving.deps import StoreDep, _bearer, get_workspace, require_api_key, require_role
from serving.errors import ValidationFailed, responses
from serving.reports import DEFAULT_DAYS, MAX_DAYS, Report, assemble, gather
from serving.schemas import Timestamp, _utc

router = APIRouter(prefix="/v1", tags=["reports"])


async def report_reader(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """An API key (under its rate limits), else a signed-in lead or admin; returns who. The
    report names agents and their scores: evaluators may not read it."""
    if credentials is not None and credentials.credentials:
        await require_api_key(request, credentials)
        return "api-key"
    user = await require_role("lead")(request, await get_workspace(request))
    return user.name


def report_range(
    start: datetime | None, end: datetime | None, now: datetime
) -> tuple[datetime, datetime]:
    """``[from, to)`` in UTC: ``to`` defaults to now, ``from`` to ``DEFAULT_DAYS`` before
    ``to``. A 422 names the field at fault: a time out of range, ``to`` not after ``from``,
    or a span over ``MAX_DAYS``."""
    for name, value in (("from", start), ("to", end)):
        if value is not None:
            try:
                _utc(value)
            except ValueError as e:
                raise ValidationFailed(f"{name}: {e}", [name]) from None
    end_ = now if end is None else _utc(end)
    start_ = end_ - timedelta(days=DEFAULT_DAYS) if start is None else _utc(start)
    if start_ >= end_:
        if end is None:
            raise ValidationFailed(
                f"from: must be before to (default now, {end_:%Y-%m-%dT%H:%M:%SZ})", ["from"]
            )
        raise ValidationFailed(f"to: must be after from ({start_:%Y-%m-%dT%H:%M:%SZ})", ["to"])
    if end_ - start_ > timedelta(days=MAX_DAYS):
        raise ValidationFailed(
            f"from: the range may span at most {MAX_DAYS} days; "
            f"this one spans {(end_ - start_).total_seconds() / 86400:.1f} days",
            ["from"],
        )
    return start_, end_


@router.get(
    "/reports",
    response_model=Report,
    responses=responses(401, 403, 422, 429, 503),
    summary="First-response times, SLA breaches and satisfaction over a time range",
)
async def reports(
    store: StoreDep,
    who: Annotated[str, Depends(report_reader)],
    start: Annotated[
        Timestamp | None,
        Query(
            alias="from",
            description="Start (inclusive), ISO 8601; naive times are UTC. "
            f"Default: {DEFAULT_DAYS} days before `to`.",
        ),
    ] = None,
    end: Annotated[
        Timestamp | None,
        Query(alias="to", description="End (exclusive), ISO 8601. Default: now."),
    ] = None,
) -> Report:
    """Cases assigned in ``[from, to)`` (and outcomes of posts not assigned here, reported in
    it): first-response p50/p90 overall and per priority level with a histogram; SLA breaches
    against each case's promised ``respond_by``, overall and per level (an open case still
    unanswered past it counts as breached, and as ``overdue``); CSAT (mean, share of 4-5) and
    NPS by topic, agent and channel. At most ``MAX_DAYS`` (366) days per request."""
    now = datetime.now(UTC)
    start_, end_ = report_range(start, end, now)
    cells, answered = await run_in_threadpool(gather, store, start_, end_, now)
    return assemble(cells, answered, start_, end_, now)
