"""Search."""

from __future__ import annotations

import time
from urllib.parse import quote

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from app.deps import ServicesDep
from app.schemas import HitPublic, SearchRequest, SearchResponse, errors
from retrieval.store import parse_filter

router = APIRouter(prefix="/v1/search", tags=["search"], responses=errors(400, 422))


@router.post(
    "",
    response_model=SearchResponse,
    responses=errors(404, 409, 429, 503),
)
async def search(body: SearchRequest, services: ServicesDep) -> SearchResponse:
    """Late-interaction search: the best-matching pages for a plain-language query."""
    start = time.perf_counter()
    collection = body.collection or services.settings.collection
    where = parse_filter(body.filter)
    store = services.store
    info = await run_in_threadpool(store.collection, collection)  # 404 before the model runs
    embedder = await services.embedder_for(info)  # the collection's model (409 if it cannot be)
    vectors = await embedder.embed(body.query)
    hits = await run_in_threadpool(
        store.search,
        collection,
        vectors,
        top_k=body.top_k,
        where=where,
        mode=body.mode,
        prefetch=body.prefetch,
    )
    return SearchResponse(
        query=body.query,
        mode=body.mode,
        collection=collection,
        took_ms=round((time.perf_counter() - start) * 1000, 2),
        hits=[
            HitPublic(
                doc_id=h.doc_id,
                source=h.source,
                page=h.page,
                score=h.score,
                metadata=h.metadata,
                image_url=f"/v1/documents/{h.doc_id}/pages/{h.page}/image"
                f"?collection={quote(collection)}",
            )
            for h in hits
        ],
    )
