"""Collections: what there is to search, with its size (the web UI's picker and start page)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from app.deps import ServicesDep
from app.schemas import CollectionPublic, CollectionsPublic, errors

router = APIRouter(prefix="/v1/collections", tags=["collections"], responses=errors(422))


@router.get("", response_model=CollectionsPublic)
async def list_collections(services: ServicesDep) -> CollectionsPublic:
    """Every collection, with its documents, pages and model; the default one first."""
    default = services.settings.collection
    found = [
        CollectionPublic(
            name=info.name,
            documents=documents,
            pages=pages,
            model=info.model,
            family=info.family,
            created_at=info.created_at,
            default=info.name == default,
        )
        for info, documents, pages in await run_in_threadpool(services.store.overview)
    ]
    return CollectionsPublic(data=sorted(found, key=lambda c: (not c.default, c.name)))
