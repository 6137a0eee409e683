"""Liveness, readiness and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from app.deps import ServicesDep, require_api_key
from app.schemas import ErrorBody, Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is alive."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": ErrorBody}})
async def readyz(request: Request):
    """The model is loaded and the store answers."""
    services = getattr(request.app.state, "services", None)
    if services is None:
        return JSONResponse({"error": "not_ready", "detail": "starting up"}, status_code=503)
    try:
        await run_in_threadpool(services.store.backend.list_collections)
        queued = await run_in_threadpool(services.jobs.count, "queued")
    except Exception as exc:
        return JSONResponse({"error": "not_ready", "detail": f"store: {exc}"}, status_code=503)
    return Readiness(
        status="ready",
        model=services.encoder.model_id,
        store=services.store.kind,
        jobs_queued=queued,
    )


@router.get(
    "/metrics",
    dependencies=[Depends(require_api_key)],
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}, 401: {"model": ErrorBody}},
)
def metrics(services: ServicesDep) -> Response:
    """Prometheus metrics: requests, latencies, pages ingested, queue depth, encode time."""
    return Response(services.metrics.render(), media_type="text/plain; version=0.0.4")
