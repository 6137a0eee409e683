"""The text signal beside the pixels: a page's own text layer, as a BM25 sparse vector.

Tokenised, stemmed and stop-worded by Qdrant's own BM25 (``qdrant_edge.Bm25``, the model
Qdrant's server uses for ``qdrant/bm25`` inference; English defaults: k 1.2, b 0.75, an average
page of 256 tokens). It needs no model download. A document's vector holds the BM25
term-frequency weight of each term; Qdrant multiplies it by the term's inverse document
frequency over the collection at query time (the IDF modifier), so BM25 scores stay exact as the
collection grows. Pages without text (scans, images) get no vector and take no part in text
search.
"""

from __future__ import annotations

import re
import threading
from functools import cache

from retrieval.types import Sparse

MAX_TEXT_CHARS = 20_000  # kept in the payload (and indexed) per page
_SPACE = re.compile(r"\s+")


def clean(text: str | None) -> str:
    """Whitespace runs to one space, NUL and other control characters out, capped."""
    if not text:
        return ""
    spaced = _SPACE.sub(" ", text)
    if not spaced.isprintable():  # rare: a character at a time (costs ~10x the common case)
        text = "".join(ch if ch.isprintable() or ch.isspace() else " " for ch in text)
        spaced = _SPACE.sub(" ", text)
    return spaced.strip()[:MAX_TEXT_CHARS]


_lock = threading.Lock()


@cache
def _model():
    import qdrant_edge

    return qdrant_edge.Bm25()


def document_vector(text: str) -> Sparse | None:
    """BM25 term-frequency weights of a page's text; None when it has no indexable term."""
    if not text:
        return None
    with _lock:
        vector = _model().embed_document(text)
    if not vector.indices:
        return None
    return Sparse(tuple(vector.indices), tuple(vector.values))


def query_vector(text: str) -> Sparse | None:
    """A query's terms, weight 1 each (the IDF comes from the collection)."""
    with _lock:
        vector = _model().embed_query(text)
    if not vector.indices:
        return None
    return Sparse(tuple(vector.indices), tuple(vector.values))


_WORD = re.compile(r"\w+", re.UNICODE)


def snippet(text: str, query: str, width: int = 240) -> str:
    """About ``width`` characters of a page's ``text`` around the first of the query's words
    (of 2 or more letters, case-insensitive) it holds, cut at word boundaries, with "…" where
    it is cut; its start where it holds none; "" for a page without text."""
    if not text:
        return ""
    words = {w.lower() for w in _WORD.findall(query) if len(w) > 1}
    first = min((m.start() for m in _WORD.finditer(text) if m.group().lower() in words), default=0)
    start = max(0, first - width // 3)
    end = min(len(text), start + width)
    start = max(0, min(start, end - width))
    if start > 0:
        start = text.find(" ", start) + 1 or start
    if end < len(text):
        end = text.rfind(" ", start, end) if text.rfind(" ", start, end) > start else end
    return ("…" if start > 0 else "") + text[start:end].strip() + ("…" if end < len(text) else "")
