"""Storage of page embeddings in Qdrant: embedded (qdrant-edge) or server (qdrant-client)."""

from retrieval.store.filters import parse_filter
from retrieval.store.pages import PageStore, SearchMode, open_backend, page_point_id

__all__ = ["PageStore", "SearchMode", "open_backend", "page_point_id", "parse_filter"]
