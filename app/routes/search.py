"""Search."""

from __future__ import annotations

import time
from urllib.parse import quote

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from app.deps import ServicesDep
from app.schemas import (
    Explanation,
    HitPublic,
    QueryToken,
    Region,
    SearchRequest,
    SearchResponse,
    errors,
)
from retrieval.search import SearchResult
from retrieval.store import parse_filter
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
    collection = body.collection or services.settings.collection
    where = parse_filter(body.filter)
    found = await run_in_threadpool(
        services.searcher().search,  # 404 and 409 before any model runs; text needs none
        body.query,
        top_k=body.top_k,
        filter=where,
        mode=body.mode,
        prefetch=body.prefetch,
        collection=collection,
        explain=body.explain,
    )
    services.metrics.observe_search(found.timings)
    if services.fidelity is not None and found.vectors is not None:  # after the answer is sent
        services.fidelity.maybe_check(collection, body.mode, found.vectors, where, found.hits)
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
                explanation=_explanation(found, h, collection, body.query),
            )
            for h in found.hits
        ],
    )


def _explanation(found: SearchResult, hit: Hit, collection: str, query: str) -> Explanation | None:
    """A hit's similarity map, its best query words (``Encoder.query_words``: not the prompt
    or augmentation tokens) and regions, as the API returns them."""
    explained = found.explanations.get((hit.doc_id, hit.page))
    if explained is None:
        return None
    words = found.words
    return Explanation(
        grid=explained.grid,
        map=[[round(float(v), 3) for v in row] for row in explained.combined],
        tokens=[
            QueryToken(index=i, text=words[i], score=round(float(explained.token_maps[i].max()), 4))
            for i in explained.top_tokens(5, among=words)
        ],
        regions=[Region(row=r, col=c, value=round(v, 3)) for r, c, v in explained.top_regions(3)],
        heatmap_url=f"/v1/documents/{hit.doc_id}/pages/{hit.page}/heatmap?query={quote(query)}"
        f"&collection={quote(collection)}",
    )
