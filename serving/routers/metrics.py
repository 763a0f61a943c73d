"""GET /metrics: the app's Prometheus metrics (serving/metrics.py), for admins only."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from serving.deps import AdminOnly, MetricsDep
from serving.errors import responses

router = APIRouter(tags=["admin"])


@router.get(
    "/metrics",
    summary="Prometheus metrics (admin key)",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, **responses(401, 403)},
)
async def metrics(who: AdminOnly, metrics: MetricsDep) -> Response:
    """The metrics in the Prometheus text format. Needs an admin key (``Authorization:
    Bearer``, CARETRIAGE_ADMIN_KEYS) or a signed-in admin; ``CARETRIAGE_METRICS_PORT`` serves
    them without auth on a port of their own instead."""
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
