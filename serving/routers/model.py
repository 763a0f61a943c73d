"""What model is serving: read from the bundle metadata, never hard-coded."""

from __future__ import annotations

from fastapi import APIRouter, Request

from serving.deps import Authorized, BatcherDep, BundleDep, SettingsDep
from serving.errors import protocol_bounds, responses
from serving.schemas import ModelInfo

router = APIRouter(prefix="/v1", tags=["model"], dependencies=[Authorized])


@router.get("/model", response_model=ModelInfo, responses=responses(401, 503))
def model_info(
    request: Request, bundle: BundleDep, batcher: BatcherDep, settings: SettingsDep
) -> ModelInfo:
    """The serving model: version, labels per task, abstention thresholds, test metrics and
    whether this machine reproduces the outputs recorded at export (``self_check``), how
    many posts wait for it now (``queued_posts``), and whether the server bounds request
    headers (``protocol_bounds``, read off this very request)."""
    meta = bundle.meta
    tasks = {t.name: list(t.labels) for t in bundle.schema_.tasks}
    return ModelInfo(
        name=meta.name,
        version=meta.version,
        base_model=meta.base_model,
        precision=meta.precision,
        max_length=meta.max_length,
        tasks=tasks,
        abstain_below={t: settings.abstain_below.get(t, 0.0) for t in tasks},
        metrics=meta.metrics,
        lexical=meta.lexical,
        self_check=batcher.scorer.self_check,
        queued_posts=batcher.pending,
        protocol_bounds=protocol_bounds(request.scope) is not None,
    )
