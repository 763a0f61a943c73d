"""``POST /v1/assign`` (score a post if need be, choose its agent, raise that agent's caseload,
all committed before the answer), ``POST /v1/feedback`` (a case's outcome; closing frees the
caseload; corrected labels go to the labeling pool) and ``GET /v1/performance`` (the learned
estimates routing uses). The transactions are ``serving/assignments.py``; the choice is
``serving/dispatch.py``."""

from __future__ import annotations

import asyncio
import logging
import math
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from starlette.concurrency import run_in_threadpool

from features.schema import LabelSchema
from serving.assignments import Assigned, AssignmentStore, CaseworkError
from serving.casework_schemas import (
    AssignmentOut,
    AssignRequest,
    FeedbackIn,
    FeedbackOut,
    PerformanceOut,
    PerformanceRow,
)
from serving.deps import (
    Authorized,
    BundleDep,
    DictionaryDep,
    RateLimits,
    SettingsDep,
    StoreDep,
    get_served,
)
from serving.dispatch import case_of
from serving.errors import ApiError, Conflict, ModelNotReady, NotFound, ValidationFailed, responses
from serving.experiment_store import arm_routing
from serving.labeling.intake import Incoming, pool_items
from serving.performance import summary
from serving.routers.contacts import history_for
from serving.schemas import Post, ScoreResult, Stored, storable_problem
from serving.triage import compiled_roster, triage

log = logging.getLogger("caretriage.serving")
router = APIRouter(prefix="/v1", tags=["assignment"], dependencies=[Authorized])


async def get_casework(request: Request) -> AssignmentStore:
    found = getattr(request.app.state, "casework", None)
    if found is None:
        raise ModelNotReady("the service is starting or shutting down")
    return found


CaseworkDep = Annotated[AssignmentStore, Depends(get_casework)]
PostId = Annotated[Stored, Path(min_length=1, max_length=200, description="The post's id.")]


def _api_error(e: CaseworkError) -> ApiError:
    if e.status == 409:
        return Conflict(e.message, e.fields)
    if e.status == 404:
        return NotFound(e.message, e.fields)
    return ValidationFailed(e.message, e.fields)


def _out(a: Assigned, result: ScoreResult | None = None) -> AssignmentOut:
    return AssignmentOut(
        post_id=a.post_id,
        agent_id=a.agent_id,
        topic=a.topic,
        level=a.level,
        score=a.score,
        respond_by=a.respond_by,
        assigned_at=a.assigned_at,
        closed_at=a.closed_at,
        reasons=a.reasons,
        replay=a.replay,
        caseload=a.caseload,
        capacity=a.capacity,
        alternatives=a.alternatives,
        experiment=a.experiment,
        arm=a.arm,
        result=result,
    )


def _check_result(result: ScoreResult, post: Post, negative: list[str]) -> None:
    """A client's result for the post must be one ``/v1/score`` could have given: its id,
    finite probabilities, storable labels."""
    if result.id != post.id:
        raise ValidationFailed(
            f"result.id: {result.id!r} is not the post's id {post.id!r}", ["result.id"]
        )
    preds = {"topic": result.topic, "sentiment": result.sentiment}
    preds.update({"actionability": result.actionability, **result.tasks})
    for task, p in preds.items():
        if problem := storable_problem(task):
            raise ValidationFailed(f"result.tasks: a task name {problem}", ["result.tasks"])
        where = f"result.{task}" if task in ("topic", "sentiment", "actionability") else task
        numbers = [p.confidence, *p.scores.values()]
        if not all(math.isfinite(x) and 0.0 <= x <= 1.0 for x in numbers):
            raise ValidationFailed(
                f"{where}: confidence and scores must be probabilities (0-1)", [where]
            )
        problem = storable_problem(p.label) or ("is too long" if len(p.label) > 200 else None)
        if problem:
            raise ValidationFailed(f"{where}.label: {problem}", [f"{where}.label"])
    missing = [n for n in negative if n not in result.sentiment.scores]
    if missing:
        raise ValidationFailed(
            f"result.sentiment.scores: lacks the negative label(s) {missing}",
            ["result.sentiment.scores"],
        )


@router.post(
    "/assign",
    response_model=AssignmentOut,
    responses=responses(401, 409, 413, 422, 429, 503),
    summary="Assign a post to the best agent with room",
)
async def assign(
    request: Request,
    body: AssignRequest,
    casework: CaseworkDep,
    store: StoreDep,
    dictionary: DictionaryDep,
    settings: SettingsDep,
    limits: RateLimits,
) -> AssignmentOut:
    """Scores the post (unless ``result`` carries its ``/v1/score`` result), chooses the agent
    (learned expected outcome × spare capacity, skill floor, fairness, top band for strongly
    negative posts from valuable or influential customers) and records the assignment,
    raising the agent's caseload, in one committed transaction. Idempotent by post id: a
    second call returns the first assignment (``replay``). 409 when nobody can take it."""
    post = body.post
    before = await run_in_threadpool(casework.get, post.id)
    if before is not None:
        return _out(before)
    served = await get_served(request)
    schema = served.bundle.schema_
    negative = schema.task("sentiment").positive_labels
    policy = dictionary.policy
    result = body.result
    if result is None:
        batcher = served.batcher
        if batcher.verdict(1).admit:
            await limits.charge_posts(request, 1)
        probs, agents, history = await asyncio.gather(
            batcher.submit([post.text]),
            run_in_threadpool(store.roster, settings.roster_max_age),
            history_for(request.app.state, [post], policy),
        )
        roster = compiled_roster(request.app.state, agents, policy.routing)
        result = triage(
            [post],
            probs,
            schema,
            policy,
            roster,
            actionable_threshold=settings.actionable_threshold,
            abstain_below=settings.abstain_below,
            now=body.as_of or datetime.now(UTC),
            contacts=history,
            dictionary_version=dictionary.version,
        )[0]
    else:
        _check_result(result, post, negative)
    case = case_of(post, result, policy, negative, casework.config)
    arm = await arm_routing(request.app.state, post.id, casework.config)
    try:
        assigned = await run_in_threadpool(
            casework.assign, case, post, result, policy.routing, arm=arm
        )
    except CaseworkError as e:
        raise _api_error(e) from None
    return _out(assigned, result)


@router.get(
    "/assignments/{post_id}", response_model=AssignmentOut, responses=responses(401, 404, 429)
)
def get_assignment(post_id: PostId, casework: CaseworkDep) -> AssignmentOut:
    """The post's assignment (``replay`` is true: it was made before)."""
    found = casework.get(post_id)
    if found is None:
        raise NotFound(f"post {post_id!r} is not assigned", ["post_id"])
    return _out(found)


def _check_corrections(corrected: dict[str, str], schema: LabelSchema) -> None:
    for task, label in corrected.items():
        if task not in schema.names:
            raise ValidationFailed(
                f"corrected.{task}: no task {task!r}; tasks are {schema.names}",
                [f"corrected.{task}"],
            )
        labels = schema.task(task).labels
        if label not in labels:
            raise ValidationFailed(
                f"corrected.{task}: {label!r} is not a {task} label", [f"corrected.{task}"]
            )


async def _pool_correction(
    request: Request, text: str, body: FeedbackIn, agent_id: str, channel: str | None
) -> bool:
    """Offer the corrected post to the labeling pool, scored by the served model (whose
    suggestion evaluators see) with the agent's correction noted in its context and at the
    head of the queue: a known model error is the most informative label there is. False
    when the post is pooled already."""
    served = await get_served(request)
    ws = getattr(request.app.state, "workspace", None)
    if ws is None:
        raise ModelNotReady("the labeling workspace is not running")
    probs = await served.batcher.submit([text])
    incoming = Incoming(
        text=text,
        external_id=body.post_id,
        channel=channel,
        context={"correction": body.corrected, "corrected_by": agent_id},
    )

    def work() -> bool:
        items = pool_items(
            [incoming], probs, served.batcher.scorer, served.bundle, source="feedback"
        )
        for item in items:
            item.uncertainty = 1.0
        added = bool(ws.labels.add_items(items).added)
        if added:
            ws.changes += 1
        return added

    return await run_in_threadpool(work)


@router.post("/feedback", response_model=FeedbackOut, responses=responses(401, 413, 422, 429, 503))
async def feedback(
    request: Request, body: FeedbackIn, casework: CaseworkDep, bundle: BundleDep
) -> FeedbackOut:
    """Record a case's outcome: who handled it, first-response time, resolution, CSAT (1-5),
    NPS (0-10), labels the agent corrected. Committed before the answer; later feedback on
    the post fills in or replaces fields. ``closed`` (default true) closes the case the first
    time, freeing the assigned agent's caseload. Corrected labels are checked against the
    label schema and the post (its text kept with the open assignment, or ``text``) enters
    the labeling pool with the correction noted."""
    if body.corrected:
        ws = getattr(request.app.state, "workspace", None)
        _check_corrections(body.corrected, ws.schema(bundle.schema_) if ws else bundle.schema_)
    case = await run_in_threadpool(casework.open_case, body.post_id) if body.corrected else None
    try:
        outcome = await run_in_threadpool(casework.record_feedback, body)
    except CaseworkError as e:
        raise _api_error(e) from None
    pooled: bool | None = None
    if body.corrected:
        text = body.text or (case or {}).get("text")
        pooled = False
        if text:
            try:
                pooled = await _pool_correction(
                    request, text, body, outcome.agent_id, (case or {}).get("channel")
                )
            except Exception:  # the outcome is committed; its correction stays in it
                log.exception("pooling a corrected post failed; the feedback is kept")
    return FeedbackOut(
        post_id=outcome.post_id,
        agent_id=outcome.agent_id,
        topic=outcome.topic,
        first_response_minutes=outcome.first_response_minutes,
        resolved=outcome.resolved,
        csat=outcome.csat,
        nps=outcome.nps,
        corrected=outcome.corrected,
        closed=outcome.closed,
        released=outcome.released,
        pooled=pooled,
        updated_at=outcome.updated_at,
    )


@router.get("/performance", response_model=PerformanceOut, responses=responses(401, 422, 429))
def performance(
    casework: CaseworkDep,
    store: StoreDep,
    dictionary: DictionaryDep,
    agent_id: Annotated[Stored | None, Query(min_length=1, max_length=200)] = None,
    topic: Annotated[Stored | None, Query(min_length=1, max_length=200)] = None,
) -> PerformanceOut:
    """Per agent and topic: estimated CSAT, resolution rate and first-response minutes, the
    cases behind them and the prior they are shrunk toward (what ``/v1/assign`` ranks by)."""
    agents = store.list_agents()
    est = casework.estimates(agents, dictionary.policy.routing)
    chosen = [a for a in agents if agent_id is None or a.id == agent_id]
    rows = summary(chosen, est, None if topic is None else [topic])
    return PerformanceOut(
        prior_strength=casework.prior_strength,
        window_days=casework.window.total_seconds() / 86400,
        estimates=[PerformanceRow.model_validate(r) for r in rows],
    )
