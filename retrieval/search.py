"""The search use case: a query in plain language -> ranked pages, and why they matched.

    searcher = Searcher(store, models, collection="pages")
    result = searcher.search("quarterly revenue table", top_k=10, explain=True)

``models`` gives the model that searches a collection (``QueryModel``: the encoder and how a
query is embedded), loading it if need be. It is asked only when the query needs it: every
check that needs no model (the query, the collection, the filter, the model's identity against
the collection's) runs first, and BM25 (``mode="text"``) never loads one. The CLI loads a model
with a spinner; the API batches concurrent queries into one forward pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from retrieval.errors import InvalidInput
from retrieval.store import PageStore, SearchMode, parse_filter
from retrieval.store.model import Filter
from retrieval.types import CollectionInfo, Hit

if TYPE_CHECKING:
    from retrieval.encoder import Encoder
    from retrieval.explain import Explanation

MAX_QUERY_CHARS = 2048
MODEL_FREE_MODES = frozenset({"text"})  # BM25 over the pages' text: no query vectors


def check_query(text: str) -> None:
    """``InvalidInput`` for a query no model should be loaded for: empty, or too long."""
    if not text or not text.strip():
        raise InvalidInput("the query is empty: say what you are looking for")
    if len(text) > MAX_QUERY_CHARS:
        raise InvalidInput(
            f"the query is {len(text):,} characters; the limit is {MAX_QUERY_CHARS:,}"
        )


@dataclass
class QueryModel:
    """The model that searches a collection, and how it embeds one query: (n_tokens, dim)."""

    encoder: Encoder
    embed: Callable[[str], np.ndarray] | None = None

    def __post_init__(self) -> None:
        if self.embed is None:
            encoder = self.encoder
            self.embed = lambda text: encoder.embed_queries([text])[0]


@dataclass
class SearchResult:
    hits: list[Hit]
    # Each hit's similarity maps, by (doc_id, page), when asked for (``explain``).
    explanations: dict[tuple[str, int], Explanation] = field(default_factory=dict)
    words: dict[int, str] = field(default_factory=dict)  # the query's own tokens, by row
    vectors: np.ndarray | None = None  # the query's, (n_tokens, dim); None in text mode
    timings: dict[str, float] = field(default_factory=dict)  # milliseconds by stage


class Searcher:
    """Searches ``store``; ``models(info)`` gives the model of collection ``info``."""

    def __init__(
        self,
        store: PageStore,
        models: Callable[[CollectionInfo], QueryModel],
        *,
        collection: str = "pages",
    ) -> None:
        self.store = store
        self.models = models
        self.collection = collection

    def search(
        self,
        query: str,
        *,
        top_k: int = 10,
        filter: dict[str, Any] | Filter | None = None,
        mode: SearchMode = "two_stage",
        prefetch: int | None = None,
        collection: str | None = None,
        explain: bool = False,
    ) -> SearchResult:
        check_query(query)
        where = filter if isinstance(filter, Filter) or filter is None else parse_filter(filter)
        name = collection or self.collection
        info = self.store.collection(name)  # a missing collection fails before any model loads
        result = SearchResult(hits=[])
        model = None
        if mode not in MODEL_FREE_MODES or explain:
            model = self.models(info)
            encoder = model.encoder
            info.check_model(encoder, action="search")
            start = time.perf_counter()
            result.vectors = model.embed(query)
            result.timings["embed"] = (time.perf_counter() - start) * 1000
        result.hits = self.store.search(
            name,
            result.vectors,
            top_k=top_k,
            where=where,
            mode=mode,
            prefetch=prefetch,
            text=query,
            timings=result.timings,
        )
        if explain and model is not None:
            from retrieval.explain import explain_page

            result.words = model.encoder.query_words(query)
            for hit in result.hits:
                result.explanations[(hit.doc_id, hit.page)] = explain_page(
                    self.store, name, hit.doc_id, hit.page, result.vectors
                )
        return result
