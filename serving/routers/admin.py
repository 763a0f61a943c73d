"""Operating the service: swap the served model without a restart (admins only)."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from serving.deps import AdminOnly
from serving.errors import ApiError, ModelNotReady, responses
from serving.served import ModelSlot, SwapRefused, read_pointer

log = logging.getLogger("caretriage.serving")
router = APIRouter(prefix="/v1/admin", tags=["admin"])


class ReloadRequest(BaseModel):
    bundle: str | None = Field(
        default=None,
        max_length=4096,
        description="A bundle folder on the server; default: the promotion pointer's bundle "
        "(CARETRIAGE_MODEL_POINTER), else the configured CARETRIAGE_MODEL_DIR read anew.",
    )


class ReloadResult(BaseModel):
    previous: str | None
    current: str
    swapped: bool


class SwapFailed(ApiError):
    status_code = 409
    error = "swap_refused"


@router.post(
    "/model/reload",
    response_model=ReloadResult,
    responses=responses(401, 403, 409, 503),
    summary="Load, check and swap in a model bundle",
)
async def reload_model(
    request: Request, who: AdminOnly, body: ReloadRequest | None = None
) -> ReloadResult:
    """Loads the bundle beside the current one, warms and checks it (self-check, policy
    labels) and switches between requests; the old model finishes what it holds, then is
    freed. A bundle that fails is refused (409) and the current model keeps serving."""
    slot: ModelSlot | None = getattr(request.app.state, "slot", None)
    if slot is None:
        raise ModelNotReady()
    settings = slot.settings
    target: Path | None = Path(body.bundle) if body and body.bundle else None
    if target is None and settings.model_pointer is not None:
        target = read_pointer(settings.model_pointer)
    if target is None:
        target = settings.model_dir
    try:
        previous, current = await slot.swap_to(target)
    except SwapRefused as e:
        log.warning("model reload by %s refused: %s", who, e)
        raise SwapFailed(
            f"bundle: refused, the current model keeps serving: {e}", ["bundle"]
        ) from e
    return ReloadResult(previous=previous, current=current, swapped=previous != current)
