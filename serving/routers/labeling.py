"""The labeling workspace's JSON API, used by the /label page (session cookie + CSRF header)
and by integrations that feed the pool (``POST /v1/labeling/items`` also takes an API key).

Every answer is committed to the store before the response is sent; a retry with the same
idempotency key gets the first answer's record back and changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from features.bundle import Bundle
from features.schema import LabelSchema
from serving.batcher import Batcher
from serving.deps import (
    BatcherDep,
    BundleDep,
    Evaluator,
    LabelSchemaDep,
    Lead,
    WorkspaceDep,
    _verify,
    require_role,
)
from serving.errors import (
    ApiError,
    Conflict,
    NotFound,
    ValidationFailed,
    responses,
    unreadable_body,
)
from serving.labeling import agreement, formats, uploads
from serving.labeling.intake import Incoming, incoming, pool_items
from serving.labeling.store import LabelingError
from serving.labeling.workspace import Workspace
from serving.schemas import (
    MAX_POSTS,
    MAX_SERIAL,
    Answer,
    AnswerResult,
    LabelItem,
    Me,
    NextItems,
    Resolution,
    RowError,
    UploadPost,
    UploadResult,
)

router = APIRouter(prefix="/v1/labeling", tags=["labeling"])

ItemId = Annotated[int, Path(ge=1, le=MAX_SERIAL, description="The item's id.")]


def as_api_error(e: LabelingError) -> ApiError:
    cls = {404: NotFound, 409: Conflict, 422: ValidationFailed}.get(e.status, Conflict)
    return cls(e.message, e.fields)


def check_labels(labels: dict[str, str], schema: LabelSchema, *, complete: bool) -> None:
    """Labels must name the served schema's tasks and labels (all tasks when ``complete``)."""
    problems: list[tuple[str, str]] = []
    for task, label in labels.items():
        if task not in schema.names:
            problems.append((f"labels.{task}", f"no task {task!r}; tasks: {schema.names}"))
        elif label not in schema.task(task).labels:
            problems.append((f"labels.{task}", f"{label!r} is not a label of {task}"))
    if complete:
        for task in schema.names:
            if task not in labels:
                problems.append((f"labels.{task}", "required"))
    if problems:
        raise ValidationFailed(
            "; ".join(f"{f}: {m}" for f, m in problems[:5]), [f for f, _ in problems]
        )


def item_out(item: dict[str, Any]) -> LabelItem:
    return LabelItem.model_validate(item)


@router.get("/me", response_model=Me, responses=responses(401))
async def me(
    request: Request, user: Evaluator, ws: WorkspaceDep, bundle: BundleDep, schema: LabelSchemaDep
) -> Me:
    """Who is signed in, the CSRF token to send with answers, and the served label schema."""
    session = request.state.session
    return Me(
        name=user.name,
        role=user.role,
        csrf_token=ws.signer.csrf_token(session.nonce),
        tasks={t.name: list(t.labels) for t in schema.tasks},
        model_version=bundle.meta.version,
    )


@router.get("/next", response_model=NextItems, responses=responses(401))
def next_items(
    user: Evaluator, ws: WorkspaceDep, n: Annotated[int, Query(ge=1, le=10)] = 2
) -> NextItems:
    """The items to label next, leased to the caller: the first to show, the rest preloaded.
    Asking again returns the same items (the lease renewed) until they are answered."""
    got = ws.labels.next_items(user.id, n)
    remaining = ws.labels.open_count(max_age=1.0)
    return NextItems(items=[item_out(i) for i in got], remaining=remaining)


@router.post(
    "/items/{item_id}/answer",
    response_model=AnswerResult,
    responses=responses(401, 403, 404, 409, 422),
)
def answer(
    item_id: ItemId, body: Answer, user: Evaluator, ws: WorkspaceDep, schema: LabelSchemaDep
) -> AnswerResult:
    """Label, skip or flag an item. Committed before the response; safe to retry with the
    same ``idempotency_key``."""
    if body.kind == "label":
        check_labels(body.labels or {}, schema, complete=True)
    elif body.labels:
        check_labels(body.labels, schema, complete=False)
    try:
        res = ws.labels.submit(
            user.id,
            item_id,
            kind=body.kind,
            idempotency_key=body.idempotency_key,
            labels=body.labels if body.kind == "label" else None,
            note=body.note,
            duration_ms=body.duration_ms,
        )
    except LabelingError as e:
        raise as_api_error(e) from e
    if not res.get("replay"):
        ws.changes += 1
    return AnswerResult.model_validate(res)


@router.post("/undo", response_model=AnswerResult, responses=responses(401, 403, 404, 409))
def undo(user: Evaluator, ws: WorkspaceDep) -> AnswerResult:
    """Take back the caller's latest answer; the item comes back first in their queue."""
    try:
        res = ws.labels.undo(user.id)
    except LabelingError as e:
        raise as_api_error(e) from e
    if res is None:
        raise NotFound("nothing to undo")
    ws.changes += 1
    return AnswerResult.model_validate(res)


@router.get("/review", response_model=list[dict[str, Any]], responses=responses(401, 403))
def review(
    user: Lead, ws: WorkspaceDep, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> list[dict[str, Any]]:
    """Items waiting for a lead: disagreements and flags, with every answer given."""
    items = ws.labels.review_queue(limit)
    return [
        {
            **item_out(i).model_dump(mode="json"),
            "answers": [
                {
                    "evaluator": a["evaluator"],
                    "kind": a["kind"],
                    "labels": a["labels"],
                    "note": a["note"],
                    "labeled_at": a["labeled_at"].isoformat(),
                }
                for a in i["answers"]
            ],
        }
        for i in items
    ]


@router.post(
    "/items/{item_id}/resolve",
    response_model=AnswerResult,
    responses=responses(401, 403, 404, 422),
)
def resolve(
    item_id: ItemId, body: Resolution, user: Lead, ws: WorkspaceDep, schema: LabelSchemaDep
) -> AnswerResult:
    """A lead's final labels for an item; they win over the evaluators' in the export."""
    check_labels(body.labels, schema, complete=True)
    try:
        res = ws.labels.resolve(user.id, item_id, body.labels, body.idempotency_key, body.note)
    except LabelingError as e:
        raise as_api_error(e) from e
    return AnswerResult.model_validate(res)


@router.get("/stats", responses=responses(401, 403))
def stats(user: Lead, ws: WorkspaceDep, schema: LabelSchemaDep) -> dict[str, Any]:
    """Agreement (Cohen's kappa per evaluator pair, Krippendorff's alpha), counts per
    evaluator and label, labels per hour, and how often the model's suggestion was changed."""
    records = ws.labels.records(kinds=("label",))
    out = agreement.summary(records, schema.names)
    out["pool"] = ws.labels.pool_counts()
    return out


# -- feeding the pool ---------------------------------------------------------------------------


async def uploader(request: Request, ws: WorkspaceDep) -> str:
    """An API key (integrations) or a signed-in lead with the CSRF header (the page) may add
    items; returns who."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        _verify(request, token.strip())
        return "api-key"
    user = await require_role("lead")(request, ws)
    return user.name


def _json_items(raw: bytes) -> tuple[list[Incoming], list[RowError]]:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as e:  # invalid JSON, not UTF-8, too deep, too long
        raise unreadable_body(e) from e
    if not isinstance(data, dict) or not isinstance(data.get("items"), list):
        raise ValidationFailed('body: expected {"items": [{"text": ...}, ...]}', ["items"])
    if not 1 <= len(data["items"]) <= 10_000:
        raise ValidationFailed("items: between 1 and 10000 items per request", ["items"])
    good: list[Incoming] = []
    errors: list[RowError] = []
    for i, raw_item in enumerate(data["items"]):
        try:
            post = UploadPost.model_validate(raw_item)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            errors.append(RowError(line=i + 1, message=f"items.{i}.{where}: {first['msg']}"))
            continue
        if not post.text.strip():
            errors.append(RowError(line=i + 1, message=f"items.{i}.text: blank"))
            continue
        good.append(incoming(post))
    return good, errors


async def _file_items(request: Request) -> tuple[list[Incoming], list[RowError]]:
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        try:
            form = await request.form()
        except StarletteHTTPException as e:  # Starlette's 400 for a body it cannot parse
            if e.status_code != 400:
                raise
            raise ValidationFailed(
                f"body: not readable as multipart/form-data: {e.detail}", ["body"]
            ) from e
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise ValidationFailed("file: a CSV or JSONL file is required", ["file"])
        data, name = await upload.read(), upload.filename
    else:
        data, name = await request.body(), None
        if not data and not ctype:  # an empty file is a file; no body at all is no upload
            raise ValidationFailed(
                'body: required: JSON {"items": [...]}, a CSV or JSONL body, or a file',
                ["body"],
            )
    rows, errors = uploads.parse_upload(data, name, ctype)
    good = [
        Incoming(text=r.text, external_id=r.external_id, channel=r.channel, author=r.author)
        for r in rows
    ]
    return good, [RowError(line=e.line, message=e.message, warning=e.warning) for e in errors]


async def score_into_pool(
    posts: Sequence[Incoming], batcher: Batcher, bundle: Bundle, ws: Workspace
) -> tuple[int, int]:
    """Score ``posts`` with the served model and add them to the pool: (added, duplicates)."""
    added, duplicates = 0, 0
    for start in range(0, len(posts), MAX_POSTS):
        chunk = posts[start : start + MAX_POSTS]
        probs = await batcher.submit([p.text for p in chunk])
        batch = await run_in_threadpool(
            lambda chunk=chunk, probs=probs: pool_items(
                chunk,
                probs,
                batcher.scorer,
                bundle,
                source="upload",
                method=ws.settings.label_uncertainty,
            )
        )
        res = await run_in_threadpool(ws.labels.add_items, batch)
        added += len(res.added)
        duplicates += res.duplicates
    if added:
        ws.changes += 1
    return added, duplicates


@router.post(
    "/items",
    response_model=UploadResult,
    responses=responses(401, 403, 413, 422, 503),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/UploadRequest"}},
                "text/csv": {"schema": {"type": "string"}},
                "application/x-ndjson": {"schema": {"type": "string"}},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"file": {"type": "string", "format": "binary"}},
                        "required": ["file"],
                    }
                },
            },
        }
    },
)
async def add_items(
    request: Request,
    ws: WorkspaceDep,
    batcher: BatcherDep,
    bundle: BundleDep,
    who: Annotated[str, Depends(uploader)],
) -> UploadResult:
    """Add posts to the labeling pool: JSON ``{"items": [...]}``, a CSV or JSONL body, or a
    file upload. Each post is scored by the served model (its suggestions and uncertainty).
    A bad row is reported by its line (JSON: its 1-based position) and the good rows are kept;
    a text already pooled (same normalized text) counts as a duplicate."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        good, errors = _json_items(await request.body())
    else:
        good, errors = await _file_items(request)
    added, duplicates = await score_into_pool(good, batcher, bundle, ws)
    return UploadResult(added=added, duplicates=duplicates, errors=errors[:1000])


@router.get(
    "/export",
    response_class=Response,
    responses={
        200: {
            "description": "JSONL (one label per line) or a Label Studio JSON export.",
            "content": {
                "application/x-ndjson": {"schema": {"type": "string"}},
                "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
            },
        },
        **responses(401, 403, 422),
    },
)
def export(
    user: Lead,
    ws: WorkspaceDep,
    schema: LabelSchemaDep,
    format: Literal["jsonl", "label-studio"] = "jsonl",
) -> Response:
    """Every label with its provenance, in the layout ``caretriage labels export`` writes
    (``serving.labeling.formats``), for download."""
    from serving.labeling.export import export_rows, export_tasks

    if format == "jsonl":
        rows = export_rows(ws.labels)
        tasks = formats.export_task_names(rows, schema.names)
        body = "".join(formats.jsonl_line(formats.flatten_row(r, tasks)) for r in rows)
        return Response(
            body,
            media_type="application/x-ndjson",
            headers={"Content-Disposition": 'attachment; filename="labels.jsonl"'},
        )
    tasks = export_tasks(ws.labels)
    return Response(
        json.dumps(tasks, ensure_ascii=False),
        media_type="application/json",
        headers={"Content-Disposition": 'attachment; filename="label-studio.json"'},
    )
