"""Liveness, readiness and metrics."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from app.deps import ServicesDep, require_api_key
from app.errors import error_response
from app.schemas import Health, Readiness, errors

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is alive."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses=errors(503))
async def readyz(request: Request):
    """The model is loaded and the store answers."""
    services = getattr(request.app.state, "services", None)
    if services is None:
        return error_response(503, "not_ready", "starting up")
    if not services.ready:
        if services.load_error:
            return error_response(503, "model_unavailable", services.load_error)
        return error_response(503, "not_ready", f"loading the model ({services.settings.model})")
    try:
        await run_in_threadpool(services.store.backend.list_collections)
        queued = await run_in_threadpool(services.jobs.count, "queued")
    except Exception as exc:
        log.warning("readiness: the store does not answer: %s", exc)
        return error_response(503, "store_unavailable", f"the store does not answer: {exc}")
    return Readiness(
        status="ready",
        model=services.encoder.model_id,
        models_loaded=services.models_loaded(),
        store=services.store.kind,
        jobs_queued=queued,
    )


@router.get(
    "/metrics",
    dependencies=[Depends(require_api_key)],
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}, **errors(401)},
)
def metrics(services: ServicesDep) -> Response:
    """Prometheus metrics: requests, latencies, pages ingested, queue depth, encode time."""
    return Response(services.metrics.render(), media_type="text/plain; version=0.0.4")
