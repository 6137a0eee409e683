"""The FastAPI application: ``create_app()`` builds it; ``colqwen serve`` runs it."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app import errors
from app.deps import require_api_key
from app.metrics import MetricsMiddleware
from app.routes import documents, health, jobs, search
from app.services import Services
from retrieval.config import Settings, get_settings
from retrieval.encoder import Encoder


def create_app(
    settings: Settings | None = None, *, run_worker: bool = True, encoder: Encoder | None = None
) -> FastAPI:
    """The API. ``run_worker``: also ingest uploads in this process (the embedded default)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        services = await Services.start(settings, run_worker=run_worker, encoder=encoder)
        app.state.services = services
        try:
            yield
        finally:
            await services.stop()

    app = FastAPI(
        title="colqwen-search",
        version="1",
        summary="Search PDF collections by how their pages look (ColQwen2 + Qdrant).",
        lifespan=lifespan,
    )
    errors.install(app)
    guarded = [Depends(require_api_key)]
    app.include_router(health.router)
    app.include_router(documents.router, dependencies=guarded)
    app.include_router(jobs.router, dependencies=guarded)
    app.include_router(search.router, dependencies=guarded)
    app.add_middleware(MetricsMiddleware)
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["*"],
            allow_headers=["*"],
        )
    return app
