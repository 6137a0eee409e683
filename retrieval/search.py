"""The search use case: a query in plain language -> ranked pages, and why they matched.

    searcher = Searcher(store, models, collection="pages")
    result = searcher.search("quarterly revenue table", top_k=10, explain=True)
    match = searcher.explain("quarterly revenue table", "3f2a", page=4)

Every way in (``POST /v1/search``, the heatmap endpoint, ``colqwen search``, ``heatmap`` and
``eval``) calls these two methods; routes and commands only parse and format. The store's
search is called here and by the fidelity check (``retrieval.fidelity``, the exact oracle).

``models`` gives the model that searches a collection (``QueryModel``: the encoder and how a
query is embedded), loading it if need be. It is asked only when the query needs it: every
check that needs no model (the query, the collection, the filter, the model's identity against
the collection's) runs first, and BM25 (``mode="text"``) never loads one. The CLI loads a model
with a spinner; the API batches concurrent queries into one forward pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from retrieval.errors import InvalidInput, NotFound
from retrieval.store import PageStore, SearchMode, parse_filter
from retrieval.store.model import Filter
from retrieval.types import CollectionInfo, DocumentRecord, Hit
from retrieval.words import count

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
    collection: str = ""
    mode: SearchMode = "two_stage"
    where: Filter | None = None  # the filter, parsed
    # Each hit's similarity maps, by (doc_id, page), when asked for (``explain``).
    explanations: dict[tuple[str, int], Explanation] = field(default_factory=dict)
    words: dict[int, str] = field(default_factory=dict)  # the query's own tokens, by row
    vectors: np.ndarray | None = None  # the query's, (n_tokens, dim); None in text mode
    timings: dict[str, float] = field(default_factory=dict)  # milliseconds by stage


@dataclass
class PageMatch:
    """Why one page matches a query: its similarity maps and the query's own words."""

    document: DocumentRecord
    page: int
    explanation: Explanation
    words: dict[int, str]  # the query's own tokens, by row (``Encoder.query_words``)


class Searcher:
    """Searches ``store``; ``models(info)`` gives the model of collection ``info``; each
    ``observers(result)`` sees every search answered (metrics, the fidelity check)."""

    def __init__(
        self,
        store: PageStore,
        models: Callable[[CollectionInfo], QueryModel],
        *,
        collection: str = "pages",
        observers: Sequence[Callable[[SearchResult], None]] = (),
    ) -> None:
        self.store = store
        self.models = models
        self.collection = collection
        self.observers = tuple(observers)

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
        result = SearchResult(hits=[], collection=name, mode=mode, where=where)
        model = None
        if mode not in MODEL_FREE_MODES or explain:
            model = self._model(info)
            result.vectors = self._embed(model, query, result.timings)
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
        for observe in self.observers:
            observe(result)
        return result

    def explain(
        self, query: str, document: str, page: int, *, collection: str | None = None
    ) -> PageMatch:
        """Why page ``page`` of ``document`` (its id, or the start of it: at least 4
        characters) matches ``query``. The query, the document and the page are checked
        before the model loads."""
        from retrieval.explain import explain_page

        check_query(query)
        name = collection or self.collection
        doc = self.store.find_document(name, document)
        if not 1 <= page <= doc.page_count:
            raise NotFound(
                f"document '{doc.doc_id[:12]}' has no page {page} ({count(doc.page_count, 'page')})"
            )
        model = self._model(self.store.collection(name))
        vectors = self._embed(model, query, {})
        explanation = explain_page(self.store, name, doc.doc_id, page, vectors)
        return PageMatch(doc, page, explanation, model.encoder.query_words(query))

    def _model(self, info: CollectionInfo) -> QueryModel:
        model = self.models(info)
        info.check_model(model.encoder, action="search")
        return model

    @staticmethod
    def _embed(model: QueryModel, query: str, timings: dict[str, float]) -> np.ndarray:
        start = time.perf_counter()
        assert model.embed is not None
        vectors = model.embed(query)
        timings["embed"] = (time.perf_counter() - start) * 1000
        return vectors
