"""The prioritization dictionary, live: read, validate and replace it (admins only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from starlette.concurrency import run_in_threadpool

from serving import dictionary as dic
from serving.deps import AdminOnly, DictionaryDep, StoreDep
from serving.errors import Conflict, ModelNotReady, NotFound, ValidationFailed, responses
from serving.priority import PolicyError
from serving.schemas import (
    MAX_SERIAL,
    DictionaryHistory,
    DictionaryOut,
    DictionaryUpdate,
    DictionaryVersion,
)

router = APIRouter(prefix="/v1/admin", tags=["admin"])


def _out(d: dic.Dictionary) -> DictionaryOut:
    return DictionaryOut(
        version=d.version,
        created_at=d.created_at,
        created_by=d.created_by,
        note=d.note,
        dictionary=d.policy.model_dump(mode="json"),
    )


def _etag(version: int) -> dict[str, str]:
    return {"ETag": f'"{version}"'}


@router.get(
    "/dictionary",
    response_model=DictionaryOut,
    responses=responses(401, 403, 503),
    summary="The prioritization dictionary in force",
)
async def get_dictionary(
    who: AdminOnly, current: DictionaryDep, response: Response
) -> DictionaryOut:
    """Every rule the scores use (weights, thresholds, topic severities, customer tiers,
    influencer thresholds, channel SLA windows, business hours and holidays, routing), with
    its version; edit ``dictionary`` and send it back with ``PUT``."""
    response.headers.update(_etag(current.version))
    return _out(current)


@router.get(
    "/dictionary/versions",
    response_model=DictionaryHistory,
    responses=responses(401, 403, 503),
    summary="Every version of the dictionary, newest first",
)
async def list_versions(who: AdminOnly, store: StoreDep) -> DictionaryHistory:
    rows = await run_in_threadpool(dic.history, store, 1000)
    return DictionaryHistory(
        versions=[
            DictionaryVersion(version=v, created_at=at, created_by=by, note=note)
            for v, at, by, note in rows
        ]
    )


@router.get(
    "/dictionary/versions/{version}",
    response_model=DictionaryOut,
    responses=responses(401, 403, 404, 422, 503),
    summary="One past version of the dictionary",
)
async def get_version(
    version: Annotated[int, Path(ge=1, le=MAX_SERIAL)], who: AdminOnly, store: StoreDep
) -> DictionaryOut:
    """A past version as it was stored (to compare, or to send back with ``PUT`` to roll
    back: that makes it the newest version)."""
    try:
        found = await run_in_threadpool(dic.load, store, version)
    except PolicyError as e:
        raise ValidationFailed(f"version {version} cannot be read by this code: {e}") from e
    if found is None:
        raise NotFound(f"version: no dictionary version {version}", ["version"])
    return _out(found)


@router.put(
    "/dictionary",
    response_model=DictionaryOut,
    responses=responses(401, 403, 409, 422, 503),
    summary="Replace the prioritization dictionary",
)
async def put_dictionary(
    request: Request, body: DictionaryUpdate, who: AdminOnly, response: Response
) -> DictionaryOut:
    """Validates the whole dictionary (422 naming every bad key, e.g.
    ``dictionary.priority.weights.actionability``; topic labels the served model lacks are
    refused too), stores it as the next version, durably, and puts it in force from the next
    request on. A refused dictionary changes nothing: the old one stays in force."""
    slot: dic.DictionarySlot | None = getattr(request.app.state, "dictionary_slot", None)
    served = getattr(request.app.state, "served", None)
    if slot is None or served is None:
        raise ModelNotReady()
    try:
        policy = dic.parse(body.dictionary, prefix="dictionary.")
    except PolicyError as e:
        raise ValidationFailed(str(e), e.fields or ["dictionary"]) from e
    unknown = dic.unknown_topic_labels(policy, served.bundle.schema_.task("topic").labels)
    if unknown:
        fields = [f"dictionary.{f}" for f in unknown]
        raise ValidationFailed(
            f"{', '.join(fields)}: topic label not predicted by the served model "
            f"{served.version} (a typo?)",
            fields,
        )
    try:
        new = await slot.replace(policy, who, note=body.note, expected=body.expected_version)
    except dic.VersionConflict as e:
        raise Conflict(
            f"expected_version: version {e.current} is in force, not {e.expected}; "
            "read it again and re-apply your change",
            ["expected_version"],
        ) from e
    response.headers.update(_etag(new.version))
    return _out(new)
