"""The FastAPI application: ``create_app()`` builds it; ``colqwen serve`` runs it."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from app import errors, ui
from app.deps import require_api_key
from app.middleware import RequestContext
from app.routes import collections, documents, health, jobs, search
from app.schemas import errors as errors_of
from app.services import Services
from retrieval.config import Settings, get_settings

if TYPE_CHECKING:
    from retrieval.encoder import Encoder


def create_app(
    settings: Settings | None = None, *, run_worker: bool = True, encoder: Encoder | None = None
) -> FastAPI:
    """The API. ``run_worker``: also ingest uploads in this process (the embedded default).

    It serves as soon as the store is open; the model loads in the background (``/readyz``)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        services = Services.open(settings, run_worker=run_worker)
        app.state.services = services
        services.start_loading(encoder)
        try:
            yield
        finally:
            await services.stop()

    app = FastAPI(
        title="colqwen-search",
        version="1",
        summary="Search PDF collections by how their pages look (ColQwen2 + Qdrant).",
        lifespan=lifespan,
        docs_url=None,  # served by app.ui from local assets, not a CDN
        redoc_url=None,
        openapi_url=None,  # served below: behind the API key unless COLQWEN_PUBLIC_DOCS
    )
    errors.install(app)
    guarded = {"dependencies": [Depends(require_api_key)], "responses": errors_of(401)}
    app.include_router(health.router)
    app.include_router(collections.router, **guarded)
    app.include_router(documents.router, **guarded)
    app.include_router(jobs.router, **guarded)
    app.include_router(search.router, **guarded)
    schema_guard = [] if settings.public_docs else [Depends(require_api_key)]

    @app.get("/openapi.json", include_in_schema=False, dependencies=schema_guard)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    ui.install(app)  # the web UI at /, Swagger UI at /docs
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["X-Request-ID"],
        )
    app.add_middleware(ui.SecurityHeaders)
    app.add_middleware(RequestContext)  # outermost: every answer gets an id, errors as JSON
    return app
