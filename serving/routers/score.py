"""POST /v1/score: posts in; per post the model's predictions, a priority and suggested agents."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import State

from features.bundle import Bundle
from features.schema import TASK_NAMES, LabelSchema
from serving import priority, routing
from serving.deps import (
    Authorized,
    BatcherDep,
    BundleDep,
    MetricsDep,
    PolicyDep,
    RateLimits,
    SettingsDep,
    StoreDep,
)
from serving.errors import ValidationFailed, responses
from serving.inference import Scorer
from serving.labeling.intake import incoming, pool_items
from serving.schemas import (
    Actionable,
    Agent,
    Prediction,
    Route,
    ScoreRequest,
    ScoreResponse,
    ScoreResult,
)
from serving.settings import Settings

log = logging.getLogger("caretriage.serving")
router = APIRouter(prefix="/v1", tags=["score"], dependencies=[Authorized])

# Requests of at most this many posts get their priority and routes computed on the event loop
# (about half a millisecond a post); bigger ones go to the thread pool so the loop stays free.
INLINE_RESULT_POSTS = 4


def predictions(labels: list[str], probs: np.ndarray, abstain_below: float) -> list[Prediction]:
    """Per row of ``probs`` (posts x labels): the argmax label, flagged uncertain (shown, not to
    be applied) under the task's threshold. One pass over the batch: per-post NumPy calls cost
    more than the arithmetic at 32 posts a request."""
    best = probs.argmax(axis=1)
    confidence = probs[np.arange(len(probs)), best].tolist()
    scores = probs.tolist()
    return [
        Prediction(
            label=labels[b],
            confidence=round(c, 4),
            scores={lab: round(p, 4) for lab, p in zip(labels, row, strict=True)},
            uncertain=c < abstain_below,
        )
        for b, c, row in zip(best.tolist(), confidence, scores, strict=True)
    ]


def check_unique_ids(request: ScoreRequest) -> None:
    """Refuse a request that repeats a post id: both results would carry it, and a client
    matching results to its posts by id could not tell them apart."""
    first: dict[str, int] = {}
    repeats = [
        (i, j) for i, post in enumerate(request.posts) if (j := first.setdefault(post.id, i)) != i
    ]
    if repeats:
        said = [
            f"posts.{i}.id: duplicate post id {request.posts[i].id!r} (as posts.{j}.id)"
            for i, j in repeats
        ]
        more = f"; and {len(said) - 5} more" if len(said) > 5 else ""
        raise ValidationFailed("; ".join(said[:5]) + more, [f"posts.{i}.id" for i, _ in repeats])


def build_results(
    request: ScoreRequest,
    probs: dict[str, np.ndarray],
    schema: LabelSchema,
    policy: priority.Policy,
    roster: routing.Roster,
    settings: Settings,
) -> list[ScoreResult]:
    """Pure assembly of the response from model outputs, policy and the roster compiled for
    its routing policy (unit-testable)."""
    actionability = schema.task("actionability")
    positive = [actionability.index(lab) for lab in actionability.positive_labels]
    negative_labels = schema.task("sentiment").positive_labels
    per_task = {
        t: predictions(schema.task(t).labels, probs[t], settings.abstain_below.get(t, 0.0))
        for t in schema.names
        if t in probs
    }
    further = [t for t in per_task if t not in TASK_NAMES]
    p_actionable_all = np.minimum(1.0, probs["actionability"][:, positive].sum(axis=1)).tolist()
    results = []
    for i, post in enumerate(request.posts):
        preds = {t: per_task[t][i] for t in TASK_NAMES}
        p_actionable = p_actionable_all[i]
        signals = priority.signals_from(
            post, preds["topic"], preds["sentiment"], p_actionable, negative_labels
        )
        prio = priority.prioritize(signals, policy.priority)
        matches = roster.rank(
            topic=preds["topic"].label,
            topic_confidence=signals.topic_confidence,
            p_negative=signals.p_negative,
            priority=prio,
        )
        results.append(
            ScoreResult(
                id=post.id,
                topic=preds["topic"],
                sentiment=preds["sentiment"],
                actionability=preds["actionability"],
                actionable=Actionable(
                    label=p_actionable >= settings.actionable_threshold,
                    probability=round(p_actionable, 4),
                ),
                priority=prio,
                route=Route(agents=matches),
                tasks={t: per_task[t][i] for t in further},
            )
        )
    return results


def compiled_roster(
    state: State, agents: Sequence[Agent], policy: routing.RoutingPolicy
) -> routing.Roster:
    """The roster snapshot compiled for routing, kept in the app state while the store hands
    out the same snapshot (compiling costs a pass over every agent; ranking a post then costs
    array operations only)."""
    cached: routing.Roster | None = getattr(state, "compiled_roster", None)
    if cached is None or cached.source is not agents or cached.policy is not policy:
        cached = state.compiled_roster = routing.Roster(agents, policy)
    return cached


def sample_for_labeling(
    state: State,
    body: ScoreRequest,
    probs: dict[str, np.ndarray],
    bundle: Bundle,
    scorer: Scorer,
) -> None:
    """Copy a share of the scored posts, with the predictions of the model that scored them,
    into the labeling pool, in the background: the scoring response never waits for it, and
    a failure there is logged, not the client's problem."""
    settings: Settings = state.settings
    picked = [i for i in range(len(body.posts)) if random.random() < settings.label_traffic_share]
    if not picked:
        return
    ws = state.workspace
    posts = [incoming(body.posts[i]) for i in picked]
    sub = {t: v[picked] for t, v in probs.items()}
    expires = datetime.now(UTC) + timedelta(days=settings.label_traffic_retention_days)

    def work() -> None:
        items = pool_items(
            posts,
            sub,
            scorer,
            bundle,
            source="traffic",
            method=settings.label_uncertainty,
            expires_at=expires,
        )
        if ws.labels.add_items(items).added:
            ws.changes += 1

    async def run() -> None:
        try:
            await run_in_threadpool(work)
        except Exception:
            log.exception("sampling %d scored posts for labeling failed", len(picked))

    task = asyncio.get_running_loop().create_task(run())
    pending: set[asyncio.Task[None]] | None = getattr(state, "sampling_tasks", None)
    if pending is None:  # kept referenced until done, or the loop may drop the task
        pending = state.sampling_tasks = set()
    pending.add(task)
    task.add_done_callback(pending.discard)


@router.post(
    "/score",
    response_model=ScoreResponse,
    responses=responses(401, 413, 422, 429, 503),
    summary="Score, prioritize and route posts",
)
async def score(
    request: Request,
    body: ScoreRequest,
    batcher: BatcherDep,
    store: StoreDep,
    bundle: BundleDep,
    policy: PolicyDep,
    settings: SettingsDep,
    limits: RateLimits,
    metrics: MetricsDep,
) -> Response:
    """Runs the request's posts through the model together, reads the roster once, and returns
    one result per post in request order."""
    check_unique_ids(body)
    texts = [p.text for p in body.posts]
    if batcher.verdict(len(texts)).admit:  # posts the queue refuses (503) are not charged
        await limits.charge_posts(request, len(texts))  # 429 past the key's posts per window
    agents = store.cached_roster(settings.roster_max_age)
    if agents is None:
        probs, agents = await asyncio.gather(
            batcher.submit(texts), run_in_threadpool(store.roster, settings.roster_max_age)
        )
    else:
        probs = await batcher.submit(texts)
    metrics.observe_scored(bundle.schema_, probs)
    roster = compiled_roster(request.app.state, agents, policy.routing)
    args = (body, probs, bundle.schema_, policy, roster, settings)
    if len(texts) <= INLINE_RESULT_POSTS:
        results = build_results(*args)
    else:
        results = await run_in_threadpool(build_results, *args)
    if settings.label_traffic_share > 0:
        sample_for_labeling(request.app.state, body, probs, bundle, batcher.scorer)
    response = ScoreResponse(model_version=bundle.meta.version, results=results)
    # Serialized here, once: handing FastAPI the model would dump it to a dict and validate that
    # again against ``response_model`` (which stays declared for the OpenAPI schema).
    return Response(response.model_dump_json(), media_type="application/json")
