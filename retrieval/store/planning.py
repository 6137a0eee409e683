"""Query planning: which stages a search of a collection runs inside Qdrant, and how deep.

``two_stage`` (the default) finds candidates by the pages' FDEs (an HNSW graph over their
binary codes, rescored from the stored FDEs), narrows them with the pooled vectors, and reranks
the survivors with every token vector (``original``); collections made before FDEs find their
candidates with a graph over the pooled vectors. ``exact`` scores every page that passes the
filter with ``original``; ``pooled`` is the first stage alone; ``text`` is BM25 over the pages'
text; ``hybrid`` fuses the ``two_stage`` and BM25 rankings by reciprocal rank. Every stage runs
inside Qdrant: no vector leaves it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from retrieval.errors import Conflict, InvalidInput
from retrieval.store.backend import Backend
from retrieval.store.model import Filter, Prefetch, Record
from retrieval.store.schema import muvera_of
from retrieval.text import query_vector as text_query_vector
from retrieval.types import SEARCH_MODES, CollectionInfo, SearchMode


@dataclass(frozen=True)
class Depths:
    """How deep each stage of ``two_stage`` looks: ``first_stage_limit`` FDE candidates (by
    their binary codes, rescored from the stored FDEs at ``oversampling`` times as many unless
    it is 0), narrowed by the pooled vectors to ``prefetch``, which the full multivectors
    rerank."""

    first_stage_limit: int
    prefetch: int
    oversampling: float


# The depths each middle stage was tuned for (BENCHMARKS.md, "Search in tens of milliseconds"):
# clustered vectors rank well enough that 60 pages reranked keep the true top 10 where SimHash
# buckets needed 150, from half the FDE candidates. (600 candidates by their codes alone were
# as good at 10k pages, not at 50k: 0.913 of the top 10 on `regions`.)
TUNED_DEPTHS = {
    "clusters": Depths(400, 60, 2.0),
    "buckets": Depths(800, 150, 2.0),
}
_OTHER_DEPTHS = Depths(800, 150, 2.0)  # rows, cols, no middle stage


def tuned_depths(info: CollectionInfo) -> Depths:
    """The depths ``info``'s middle stage was tuned for."""
    if info.first_stage == "fde" and info.pooling:
        return TUNED_DEPTHS.get(info.pooling[0], _OTHER_DEPTHS)
    return _OTHER_DEPTHS


def check_search(
    info: CollectionInfo, query: np.ndarray | None, *, top_k: int, mode: SearchMode
) -> None:
    """``InvalidInput`` or ``Conflict`` for a search ``info`` cannot answer."""
    if top_k < 1:
        raise InvalidInput("top_k must be at least 1")
    if mode not in SEARCH_MODES:
        raise InvalidInput(f"unknown search mode '{mode}': use {', '.join(SEARCH_MODES)}")
    if query is None and mode != "text":
        raise InvalidInput(f"search mode '{mode}' needs the query's vectors")
    if query is not None and query.ndim != 2:
        raise InvalidInput(f"query must be (n_tokens, {info.dim}); got {query.shape}")
    if query is not None and query.shape[1] != info.dim:
        raise Conflict(
            f"collection '{info.name}' holds {info.dim}-d token vectors from {info.model}; "
            f"this query has {query.shape[1]}-d ones: search it with that model"
        )
    if mode in ("hybrid", "text") and not info.text:
        raise InvalidInput(
            f"collection '{info.name}' was made before pages kept their text: mode "
            f"'{mode}' needs it (search it visually, or ingest into a new collection)"
        )


def run_search(
    backend: Backend,
    info: CollectionInfo,
    query: np.ndarray | None,
    *,
    top_k: int,
    where: Filter | None,
    mode: SearchMode,
    depths: Depths,
    text: str | None,
    timings: dict[str, float],
) -> list[Record]:
    """The pages ``mode`` ranks best for ``query`` (checked by ``check_search``) and ``text``,
    with ``depths.prefetch`` (at least ``top_k``) candidates reranked. ``timings`` receives
    milliseconds: ``encode`` (the query's FDE) and each engine stage by the vector it scores
    (one figure for the whole query on a server)."""
    candidates = max(top_k, depths.prefetch)
    points = info.points_collection
    words = text_query_vector(text or "") if mode in ("hybrid", "text") else None
    if mode == "text":
        if words is None:
            return []  # nothing in the query that BM25 indexes (only stop words, say)
        return backend.query(points, words, using="bm25", limit=top_k, where=where, timings=timings)
    assert query is not None  # check_search
    if mode == "hybrid" and words is not None:
        visual = Prefetch(
            "original",
            candidates,
            vector=query,
            prefetch=tuple(_candidate_stages(info, query, candidates, depths, timings)),
        )
        return backend.query(
            points,
            None,
            using=None,
            limit=top_k,
            where=where,
            prefetch=[visual, Prefetch("bm25", candidates, vector=words)],
            fusion="rrf",
            timings=timings,
        )
    if mode == "exact" or (info.first_stage == "rows" and not info.pooling):
        return backend.query(
            points, query, using="original", limit=top_k, where=where, exact=True, timings=timings
        )
    if mode == "pooled" and info.first_stage == "fde":
        return backend.query(
            points,
            _query_fde(info, query, timings),
            using="fde",
            limit=top_k,
            where=where,
            # Scores as FDE dot products, as a server's exact scan gives them: twice its few
            # hits by the codes, rescored from the stored FDEs, whatever two_stage does.
            oversampling=max(depths.oversampling, 2.0),
            timings=timings,
        )
    if mode == "pooled":
        return backend.query(
            points,
            query,
            using=info.pooling[0],
            limit=top_k,
            where=where,
            hnsw_ef=candidates,
            timings=timings,
        )
    return backend.query(  # two_stage, and hybrid for a query without indexed words
        points,
        query,
        using="original",
        limit=top_k,
        where=where,
        prefetch=_candidate_stages(info, query, candidates, depths, timings),
        timings=timings,
    )


def _query_fde(info: CollectionInfo, query: np.ndarray, timings: dict[str, float]) -> np.ndarray:
    start = time.perf_counter()
    fde = muvera_of(info).encode_query(query)
    timings["encode"] = (time.perf_counter() - start) * 1000
    return fde


def _candidate_stages(
    info: CollectionInfo,
    query: np.ndarray,
    candidates: int,
    depths: Depths,
    timings: dict[str, float],
) -> list[Prefetch]:
    """The stages that find the ``candidates`` pages ``original`` reranks: FDE candidates
    narrowed by the pooled vectors (if stored), or, in collections made before FDEs, the
    pooled vectors' graph."""
    if info.first_stage != "fde":
        return [Prefetch(p, candidates, hnsw_ef=candidates) for p in info.pooling]
    fde = _query_fde(info, query, timings)
    if not info.pooling:
        return [Prefetch("fde", candidates, vector=fde, oversampling=depths.oversampling)]
    first = Prefetch(
        "fde",
        max(candidates, depths.first_stage_limit),
        vector=fde,
        oversampling=depths.oversampling,
    )
    return [Prefetch(info.pooling[0], candidates, prefetch=(first,))]
