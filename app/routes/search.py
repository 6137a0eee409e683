"""Search."""

from __future__ import annotations

import time
from urllib.parse import quote

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from app.deps import ServicesDep
from app.schemas import Explanation, HitPublic, SearchRequest, SearchResponse, errors
from retrieval.search import SearchResult
from retrieval.text import snippet
from retrieval.types import Hit

router = APIRouter(prefix="/v1/search", tags=["search"], responses=errors(400, 422))


@router.post(
    "",
    response_model=SearchResponse,
    responses=errors(404, 409, 429, 503),
)
async def search(body: SearchRequest, services: ServicesDep) -> SearchResponse:
    """Late-interaction search: the best-matching pages for a plain-language query."""
    start = time.perf_counter()
    found = await run_in_threadpool(
        services.searcher().search,  # 404 and 409 before any model runs; text needs none
        body.query,
        top_k=body.top_k,
        filter=body.filter,
        mode=body.mode,
        prefetch=body.prefetch,
        collection=body.collection,
        explain=body.explain,
    )
    collection = found.collection
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
                snippet=snippet(h.payload.get("text") or "", body.query),
                explanation=_explanation(found, h, body.query),
            )
            for h in found.hits
        ],
    )


def _explanation(found: SearchResult, hit: Hit, query: str) -> Explanation | None:
    """A hit's similarity map and its summary (``retrieval.explain.Explanation.summary``)."""
    explained = found.explanations.get((hit.doc_id, hit.page))
    if explained is None:
        return None
    collection = quote(found.collection)
    return Explanation(
        **explained.summary(found.words),
        map=[[round(float(v), 3) for v in row] for row in explained.combined],
        heatmap_url=f"/v1/documents/{hit.doc_id}/pages/{hit.page}/heatmap?query={quote(query)}"
        f"&collection={collection}",
    )
