"""Request and response bodies of the REST API (pydantic): what the OpenAPI schema shows."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from indexer.jobs import JobStatus
from retrieval.search import MAX_QUERY_CHARS
from retrieval.store import COLLECTION_PATTERN, SearchMode
from retrieval.store.filters import FILTER_SCHEMA


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer."""

    error: str = Field(description="Machine-readable kind, e.g. not_found, invalid_input.")
    detail: str = Field(description="What went wrong and what to do about it.")
    request_id: str = Field(
        description="This request's id (also in the X-Request-ID header and the server log)."
    )


_DESCRIPTIONS = {
    400: "Bad request: a body that cannot be parsed, or a setting that does not apply.",
    401: "Missing or invalid API key.",
    404: "No such collection, document, page or job.",
    409: "Conflicts with the current state.",
    413: "Upload or page too large.",
    415: "Unsupported file type or content type.",
    422: "Invalid input: the detail names the field.",
    429: "Too many queries waiting for the model; retry shortly.",
    503: "The model is loading or unavailable, or the store cannot be reached.",
}


def errors(*statuses: int) -> dict[int | str, dict]:
    """OpenAPI ``responses`` entries for error statuses, all with the ``ErrorBody`` shape."""
    return {s: {"model": ErrorBody, "description": _DESCRIPTIONS[s]} for s in statuses}


class UploadAccepted(BaseModel):
    job_id: str
    doc_id: str
    status: Literal["queued", "running"]


class DocumentPublic(BaseModel):
    doc_id: str
    name: str
    collection: str
    page_count: int
    status: Literal["indexing", "indexed", "failed", "deleting"]
    metadata: dict[str, Any]
    created_at: str
    updated_at: str
    error: str | None = None
    size_bytes: int | None = None


class DocumentsPublic(BaseModel):
    data: list[DocumentPublic]
    count: int = Field(description="Documents matching, over all pages of results.")


class CollectionPublic(BaseModel):
    name: str
    documents: int
    pages: int
    model: str = Field(description="The model it was built with (a hub id or a path).")
    family: str
    created_at: str
    default: bool = Field(description="Whether it is COLQWEN_COLLECTION, searched by default.")


class CollectionsPublic(BaseModel):
    data: list[CollectionPublic]


class JobPublic(BaseModel):  # indexer.jobs.Job.public: a job's state and progress
    job_id: str
    doc_id: str
    collection: str
    name: str
    status: JobStatus
    pages_done: int
    pages_total: int | None
    error: str | None
    attempts: int
    created_at: float
    updated_at: float


class SearchRequest(BaseModel):
    query: str = Field(
        min_length=1, max_length=MAX_QUERY_CHARS, description="Plain-language query."
    )
    top_k: int = Field(10, ge=1, le=100)
    mode: SearchMode = Field(
        "two_stage",
        description="two_stage: fast candidates reranked by every token vector; exact: every "
        "page scored by every token vector (slow on large collections); pooled: the fast "
        "first stage alone; text: BM25 over the pages' own text; hybrid: two_stage and text "
        "fused by reciprocal rank (scores are then fused ranks).",
    )
    prefetch: int | None = Field(
        None, ge=1, le=10000, description="Candidates the full token vectors rerank."
    )
    filter: dict[str, Any] | None = Field(
        None,
        description='e.g. {"doc_id": "...", "source": "a.pdf", "page": {"lte": 3}, '
        '"metadata": {"year": {"gte": 2020}, "team": ["a", "b"]}}',
        json_schema_extra={"anyOf": [FILTER_SCHEMA, {"type": "null"}]},
    )
    collection: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        pattern=COLLECTION_PATTERN,
        description="Default: COLQWEN_COLLECTION.",
    )
    explain: bool = Field(
        False,
        description="Add to each hit its similarity map: which patches of the page matched "
        "which query tokens (from the stored vectors; no page is embedded again).",
    )


class QueryToken(BaseModel):
    index: int = Field(description="Row of the token in the query's embedding.")
    text: str = Field(
        description="The token as text: one of the query's own words or word pieces (the prompt "
        "and augmentation tokens count in the score and the map, but are not listed)."
    )
    score: float = Field(description="Its best dot product with a patch of the page.")


class Region(BaseModel):
    row: int
    col: int
    value: float


class Explanation(BaseModel):
    grid: tuple[int, int] = Field(description="(rows, cols) of the page's visual tokens.")
    map: list[list[float]] = Field(
        description="rows x cols, in [0, 1]: the sum over query tokens of each patch's share of "
        "that token's best match on the page (its dot product / the token's MaxSim term, "
        "clipped at 0), scaled to a maximum of 1."
    )
    tokens: list[QueryToken] = Field(
        description="The query's own tokens that match the page best (at most 5)."
    )
    regions: list[Region] = Field(description="The brightest cells of the map.")
    heatmap_url: str = Field(description="The page image with the map drawn over it (PNG).")


class HitPublic(BaseModel):
    doc_id: str
    source: str
    page: int
    score: float
    metadata: dict[str, Any]
    image_url: str = Field(description="The page as the model saw it (PNG).")
    snippet: str = Field(
        "",
        description="Some of the page's text (its text layer) around the first of the query's "
        "words it holds; empty for a page without text.",
    )
    explanation: Explanation | None = None


class SearchResponse(BaseModel):
    query: str
    mode: str
    collection: str
    took_ms: float
    hits: list[HitPublic]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready"]
    model: str
    models_loaded: list[str]  # the configured model, then others loaded for their collections
    store: str
    jobs_queued: int
