"""Storage of page embeddings in Qdrant: embedded (qdrant-edge) or server (qdrant-client)."""

from retrieval.store.filters import check_metadata, parse_filter, parse_filter_json
from retrieval.store.pages import (
    COLLECTION_PATTERN,
    SEARCH_MODES,
    PageStore,
    SearchMode,
    open_backend,
    page_point_id,
)

__all__ = [
    "COLLECTION_PATTERN",
    "SEARCH_MODES",
    "PageStore",
    "SearchMode",
    "check_metadata",
    "open_backend",
    "page_point_id",
    "parse_filter",
    "parse_filter_json",
]
