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
from retrieval.explain import explain_page
from retrieval.store import parse_filter
from retrieval.text import snippet

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
    encoder, embedder = await services.model_for(info)  # the collection's (409 if it cannot be)
    embedding = time.perf_counter()
    vectors = await embedder.embed(body.query)
    timings = {"embed": (time.perf_counter() - embedding) * 1000}
    hits = await run_in_threadpool(
        store.search,
        collection,
        vectors,
        top_k=body.top_k,
        where=where,
        mode=body.mode,
        prefetch=body.prefetch,
        text=body.query,
        timings=timings,
    )
    services.metrics.observe_search(timings)
    if services.fidelity is not None:  # a sampled exact re-run, after the answer is sent
        services.fidelity.maybe_check(collection, body.mode, vectors, where, hits)
    explanations = {}
    if body.explain:
        words = await run_in_threadpool(encoder.query_words, body.query)
        for h in hits:
            explanations[(h.doc_id, h.page)] = await run_in_threadpool(
                explain_public, services, collection, h.doc_id, h.page, vectors, words, body.query
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
                snippet=snippet(h.payload.get("text") or "", body.query),
                explanation=explanations.get((h.doc_id, h.page)),
            )
            for h in hits
        ],
    )


def explain_public(
    services, collection: str, doc_id: str, page: int, vectors, words: dict[int, str], query: str
) -> Explanation:
    """A hit's similarity map, its best query words (``Encoder.query_words``: not the prompt
    or augmentation tokens) and regions, as the API returns them."""
    found = explain_page(services.store, collection, doc_id, page, vectors)
    return Explanation(
        grid=found.grid,
        map=[[round(float(v), 3) for v in row] for row in found.combined],
        tokens=[
            QueryToken(index=i, text=words[i], score=round(float(found.token_maps[i].max()), 4))
            for i in found.top_tokens(5, among=words)
        ],
        regions=[Region(row=r, col=c, value=round(v, 3)) for r, c, v in found.top_regions(3)],
        heatmap_url=f"/v1/documents/{doc_id}/pages/{page}/heatmap?query={quote(query)}"
        f"&collection={quote(collection)}",
    )
