"""Search entry point: a query in plain language -> ranked pages.

searcher = Searcher(encoder, store)
hits = searcher.search("quarterly revenue table", top_k=10, filter={"metadata": {"year": 2024}})
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from retrieval.encoder import Encoder
from retrieval.store import PageStore, SearchMode, parse_filter
from retrieval.store.model import Filter
from retrieval.types import Hit

QueryEmbedder = Callable[[str], np.ndarray]


class Searcher:
    """Embeds queries with the encoder and runs MaxSim search on the store.

    ``embed_query`` may be replaced (e.g. by the API's batching embedder); by default each query
    is embedded on its own.
    """

    def __init__(
        self,
        encoder: Encoder,
        store: PageStore,
        *,
        collection: str = "pages",
        embed_query: QueryEmbedder | None = None,
    ) -> None:
        self.encoder = encoder
        self.store = store
        self.collection = collection
        self.embed_query = embed_query or (lambda text: encoder.embed_queries([text])[0])

    def search(
        self,
        query: str,
        *,
        top_k: int = 10,
        filter: dict[str, Any] | Filter | None = None,
        mode: SearchMode = "two_stage",
        prefetch: int | None = None,
        collection: str | None = None,
    ) -> list[Hit]:
        where = filter if isinstance(filter, Filter) or filter is None else parse_filter(filter)
        name = collection or self.collection
        info = self.store.collection(name)  # a missing collection fails before the model runs
        encoder = self.encoder
        info.check_model(encoder.identity, encoder.family.name, encoder.dim, action="search")
        vectors = self.embed_query(query)
        return self.store.search(
            name, vectors, top_k=top_k, where=where, mode=mode, prefetch=prefetch, text=query
        )
