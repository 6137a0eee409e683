"""Storage of page embeddings in Qdrant: embedded (qdrant-edge) or server (qdrant-client).

``PageStore`` is the front (``pages``): collections (``collections``), laid out as ``schema``
says, searched as ``planning`` plans, upgraded by ``upgrade``, over a ``Backend`` (``edge`` or
``server``), with filters parsed by ``filters``.
"""

from retrieval.store.filters import check_metadata, parse_filter, parse_filter_json
from retrieval.store.pages import PageStore, open_backend
from retrieval.store.schema import COLLECTION_PATTERN, page_point_id
from retrieval.types import SEARCH_MODES, SearchMode

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
