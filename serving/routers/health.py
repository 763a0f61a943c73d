"""Liveness and readiness probes (no auth: orchestrators call them, so they answer up or
ready and nothing else: what runs and how busy it is are behind the key, ``GET /v1/model``)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from serving.errors import ModelNotReady, responses
from serving.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness")
def healthz() -> Health:
    """200 whenever the process is up, even while the model loads."""
    return Health()


@router.get("/readyz", response_model=Readiness, summary="Readiness", responses=responses(503))
def readyz(request: Request) -> Readiness:
    """200 only when the model is loaded and warm and the batcher runs; else 503."""
    state = request.app.state
    scorer = getattr(state, "scorer", None)
    batcher = getattr(state, "batcher", None)
    if scorer is None or not scorer.warm or batcher is None or not batcher.running:
        raise ModelNotReady()
    return Readiness()
