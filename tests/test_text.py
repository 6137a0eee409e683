"""Text beside pixels: the pages' own text as BM25 vectors in Qdrant (both backends), the
``text`` and ``hybrid`` modes, checked against independent computations on tiny corpora."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from retrieval.text import MAX_TEXT_CHARS, clean, document_vector, query_vector
from retrieval.types import DocumentRecord
from tests.fakes import maxsim, page_embedding, page_record
from tests.test_store import make_store

PAGES = {  # words chosen to pass the stemmer and the stop list unchanged
    1: "zebra zebra zebra lion",
    2: "zebra lion lion tiger tiger",
    3: "tiger giraffe",
    4: "",  # a scan: no text layer
}
K, B, AVG_LEN = 1.2, 0.75, 256  # Qdrant's BM25 defaults (qdrant_edge.Bm25Config)


@pytest.fixture(params=["embedded", "server"])
def store(request, tmp_path):
    s = make_store(request.param, tmp_path)
    s.create_collection("c", model="test", max_visual_tokens=768, pooling=("buckets",))
    rng = np.random.default_rng(7)
    records = []
    for page, text in PAGES.items():
        record = page_record("doc", page, page_embedding(rng, rows=3, cols=4))
        records.append(dataclasses.replace(record, text=text))
    s.put_document("c", DocumentRecord("doc", "doc.pdf", len(PAGES)))
    s.upsert_pages("c", records)
    s.optimize("c")
    yield s, {r.page_number: r for r in records}
    s.close()


def bm25(query: str) -> dict[int, float]:
    """BM25 by the textbook, independently of Qdrant: IDF ln(1 + (N - n + .5) / (n + .5)) over
    the pages that have text, and the k/b term-frequency weight with Qdrant's average length."""
    docs = {p: t.split() for p, t in PAGES.items() if t}
    n_docs = len(docs)
    scores = {}
    for page, words in docs.items():
        score = 0.0
        for term in set(query.split()):
            tf = words.count(term)
            if not tf:
                continue
            df = sum(term in w for w in docs.values())
            idf = math.log(1 + (n_docs - df + 0.5) / (df + 0.5))
            score += idf * tf * (K + 1) / (tf + K * (1 - B + B * len(words) / AVG_LEN))
        if score:
            scores[page] = score
    return scores


@pytest.mark.parametrize("query", ["zebra", "lion tiger", "giraffe zebra", "tiger"])
def test_text_mode_scores_are_bm25(store, query):
    s, _ = store
    q = np.zeros((2, 128), np.float32)  # the visual query is not used by the text mode
    hits = s.search("c", q, mode="text", text=query, top_k=10)
    expected = bm25(query)
    assert {h.page: pytest.approx(h.score, rel=1e-4) for h in hits} == {
        p: pytest.approx(v, rel=1e-4) for p, v in expected.items()
    }
    assert [h.page for h in hits] == sorted(expected, key=lambda p: -expected[p])


def test_hybrid_fuses_the_visual_and_text_rankings_by_reciprocal_rank(store):
    """Four pages (one without text), fused by hand: 1 / (2 + rank) summed over the visual
    and the text rankings; pages whose fused scores tie may come in either order."""
    s, records = store
    rng = np.random.default_rng(3)
    q = rng.standard_normal((4, 128)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    visual = sorted(records, key=lambda p: -maxsim(q, records[p].embedding.multivector))
    text = sorted(bm25("lion tiger"), key=lambda p: -bm25("lion tiger")[p])
    fused = {p: 0.0 for p in records}
    for ranking in (visual, text):
        for rank, page in enumerate(ranking):
            fused[page] += 1 / (2 + rank)
    hits = s.search("c", q, mode="hybrid", text="lion tiger", top_k=4, prefetch=10)
    assert sorted(h.page for h in hits) == sorted(fused)  # every page, each once
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    for h in hits:
        assert h.score == pytest.approx(fused[h.page], rel=1e-5)
    # A query with no indexable word is the visual ranking alone; filters apply to both.
    only = s.search("c", q, mode="hybrid", text="the of and", top_k=4, prefetch=10)
    assert [h.page for h in only] == visual
    from retrieval.store.model import Filter, Range

    few = s.search("c", q, mode="hybrid", text="lion", where=Filter((Range("page", lte=2),)))
    assert {h.page for h in few} <= {1, 2}


def test_pages_keep_their_text_and_a_scan_has_no_text_vector(store):
    s, _ = store
    payload, _ = s.page_tokens("c", "doc", 2)
    assert payload["text"] == PAGES[2]
    payload, _ = s.page_tokens("c", "doc", 4)
    assert payload["text"] == ""
    assert document_vector("") is None and query_vector("the and of") is None


def test_text_is_cleaned_and_capped():
    assert clean("a\x00b\n\n  c\td") == "a b c d"
    assert len(clean("word " * 10_000)) == 20_000


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
def test_text_is_cleaned_as_a_character_at_a_time_would(text):
    """The fast path (whole-string checks) against the plain definition: every character
    neither printable nor a space becomes one, spaces runs one space, trimmed."""
    slow = "".join(ch if ch.isprintable() or ch.isspace() else " " for ch in text)
    assert clean(text) == " ".join(slow.split())[:MAX_TEXT_CHARS]


def test_rendered_pages_carry_their_text_layer(tmp_path):
    from indexer.render import RenderOptions, open_document
    from tests.conftest import shared_pdfs

    with open_document(shared_pdfs("good") / "R-intro.pdf", options=RenderOptions()) as doc:
        page = doc.render(10)
    assert "help" in page.text and len(page.text) > 1000
