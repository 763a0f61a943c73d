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
from features.schema import LabelSchema
from serving import priority, routing
from serving.contacts import ContactAt
from serving.deps import (
    Authorized,
    BatcherDep,
    BundleDep,
    DictionaryDep,
    MetricsDep,
    RateLimits,
    SettingsDep,
    StoreDep,
)
from serving.errors import ValidationFailed, responses
from serving.inference import Scorer
from serving.labeling.intake import incoming, pool_items
from serving.routers.contacts import history_for
from serving.schemas import ScoreRequest, ScoreResponse, ScoreResult
from serving.settings import Settings
from serving.triage import compiled_roster, predictions, triage

# ``predictions`` and ``compiled_roster`` live in the triage core; imported here for callers of
# their old place.
__all__ = ["build_results", "compiled_roster", "predictions", "router"]

log = logging.getLogger("caretriage.serving")
router = APIRouter(prefix="/v1", tags=["score"], dependencies=[Authorized])

# Requests of at most this many posts get their priority and routes computed on the event loop
# (about half a millisecond a post); bigger ones go to the thread pool so the loop stays free.
INLINE_RESULT_POSTS = 4


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
    *,
    now: datetime | None = None,
    dictionary_version: int | None = None,
    contacts: Sequence[Sequence[ContactAt]] | None = None,
) -> list[ScoreResult]:
    """The request's results from the triage core, with the service's thresholds and, per
    post, the customer's recorded contacts (``serving/contacts.py``)."""
    return triage(
        request.posts,
        probs,
        schema,
        policy,
        roster,
        actionable_threshold=settings.actionable_threshold,
        abstain_below=settings.abstain_below,
        now=now,
        contacts=contacts,
        dictionary_version=dictionary_version,
    )


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
    dictionary: DictionaryDep,
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
    policy = dictionary.policy
    agents = store.cached_roster(settings.roster_max_age)
    # The customers' recorded contacts: one query for all posts (none if no post names a
    # customer or a handle), read while the model runs.
    lookup = history_for(request.app.state, body.posts, policy)
    if agents is None:
        probs, agents, contacts = await asyncio.gather(
            batcher.submit(texts), run_in_threadpool(store.roster, settings.roster_max_age), lookup
        )
    else:
        probs, contacts = await asyncio.gather(batcher.submit(texts), lookup)
    metrics.observe_scored(bundle.schema_, probs)
    roster = compiled_roster(request.app.state, agents, policy.routing)
    args = (body, probs, bundle.schema_, policy, roster, settings)
    clock = {
        "now": body.as_of or datetime.now(UTC),
        "dictionary_version": dictionary.version,
        "contacts": contacts,
    }
    if len(texts) <= INLINE_RESULT_POSTS:
        results = build_results(*args, **clock)
    else:
        results = await run_in_threadpool(lambda: build_results(*args, **clock))
    if settings.label_traffic_share > 0:
        sample_for_labeling(request.app.state, body, probs, bundle, batcher.scorer)
    response = ScoreResponse(
        model_version=bundle.meta.version, dictionary_version=dictionary.version, results=results
    )
    # Serialized here, once: handing FastAPI the model would dump it to a dict and validate that
    # again against ``response_model`` (which stays declared for the OpenAPI schema).
    return Response(response.model_dump_json(), media_type="application/json")
