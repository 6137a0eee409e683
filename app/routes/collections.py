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
    store, default = services.store, services.settings.collection

    def read() -> list[CollectionPublic]:
        found = [
            CollectionPublic(
                name=info.name,
                documents=len(store.documents(info.name)),
                pages=store.count_pages(info.name),
                model=info.model,
                family=info.family,
                created_at=info.created_at,
                default=info.name == default,
            )
            for info in store.collections()
        ]
        return sorted(found, key=lambda c: (not c.default, c.name))

    return CollectionsPublic(data=await run_in_threadpool(read))
