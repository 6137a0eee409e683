"""Storage and search, run identically on both backends: the embedded engine (qdrant-edge) and
the server code path (qdrant-client, in its in-process mode)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from colpali_engine.models import ColQwen2Processor

from retrieval.errors import ConfigurationError, Conflict, InvalidInput, NotFound, StoreLocked
from retrieval.muvera import FdeParams, Muvera
from retrieval.pooling import pool_rows
from retrieval.store import PageStore, parse_filter
from retrieval.store.edge import EdgeBackend
from retrieval.store.model import PointData
from retrieval.store.schema import CATALOG_SUFFIX, COLLECTION_POINT, DUMMY
from retrieval.store.server import ServerBackend
from retrieval.types import DocumentRecord
from tests.fakes import maxsim, page_embedding, page_record, unit

N_DOCS, PAGES_PER_DOC = 6, 5


def make_store(kind: str, tmp_path, **options) -> PageStore:
    backend = EdgeBackend(tmp_path / "qdrant") if kind == "embedded" else ServerBackend(":memory:")
    return PageStore(backend, **{"prefetch": 50, "write_batch": 7, **options})


@pytest.fixture(params=["embedded", "server"])
def store(request, tmp_path):
    s = make_store(request.param, tmp_path)
    yield s
    s.close()


@pytest.fixture
def corpus(store):
    """A filled collection: 6 documents x 5 pages, metadata year/team."""
    store.create_collection(
        "docs",
        model="test",
        max_visual_tokens=768,
        pooling=("rows", "cols"),
        filterable={"year": "integer", "team": "keyword"},
    )
    rng = np.random.default_rng(0)
    pages = {}
    for d in range(N_DOCS):
        doc_id = f"doc{d}"
        meta = {"year": 2020 + d, "team": "finance" if d % 2 else "legal"}
        store.put_document(
            "docs", DocumentRecord(doc_id, f"{doc_id}.pdf", PAGES_PER_DOC, metadata=meta)
        )
        records = []
        for p in range(1, PAGES_PER_DOC + 1):
            emb = page_embedding(rng, rows=3 + p % 3, cols=2 + d % 3)
            pages[(doc_id, p)] = emb
            records.append(page_record(doc_id, p, emb, metadata=meta))
        store.upsert_pages("docs", records)
        store.put_document(
            "docs",
            DocumentRecord(doc_id, f"{doc_id}.pdf", PAGES_PER_DOC, status="indexed", metadata=meta),
        )
    return pages


def queries(n=4, seed=1):
    rng = np.random.default_rng(seed)
    return [unit(rng.standard_normal((12, 128))) for _ in range(n)]


def oracle(pages, q, keep=lambda key: True):
    """Ranking by colpali-engine's score_multi_vector, one document per call (no padding)."""
    scored = []
    for key, emb in pages.items():
        if keep(key):
            ref = ColQwen2Processor.score_multi_vector(
                [torch.from_numpy(q)], [torch.from_numpy(emb.multivector)], device="cpu"
            )
            scored.append((float(ref[0, 0]), key))
    return sorted(scored, reverse=True)


def test_exact_mode_equals_brute_force_maxsim(store, corpus):
    for q in queries():
        hits = store.search("docs", q, top_k=10, mode="exact")
        expected = oracle(corpus, q)[:10]
        assert [(h.doc_id, h.page) for h in hits] == [k for _, k in expected]
        for hit, (score, _) in zip(hits, expected, strict=True):
            assert hit.score == pytest.approx(score, abs=1e-2)  # float16 storage


@pytest.mark.parametrize(("dtype", "tolerance"), [("turbo16", 1e-3), ("turbo8", 2e-2)])
@pytest.mark.parametrize("kind", ["embedded", "server"])
def test_other_storage_datatypes_score_like_the_oracle(tmp_path, kind, dtype, tolerance):
    backend = EdgeBackend(tmp_path / "qdrant") if kind == "embedded" else ServerBackend(":memory:")
    store = PageStore(backend, original_dtype=dtype)
    store.create_collection("docs", model="test", max_visual_tokens=768)
    rng = np.random.default_rng(3)
    pages = {("doc", p): page_embedding(rng, rows=4, cols=3) for p in range(1, 21)}
    store.upsert_pages("docs", [page_record("doc", p, e) for (_, p), e in pages.items()])
    errors = []
    for q in queries():
        expected = dict((key, score) for score, key in oracle(pages, q))
        hits = store.search("docs", q, top_k=20, mode="exact")
        assert len(hits) == 20
        for hit in hits:  # every page, each scored within the datatype's precision
            assert hit.score == pytest.approx(expected[(hit.doc_id, hit.page)], abs=tolerance)
            errors.append(abs(hit.score - expected[(hit.doc_id, hit.page)]))
    if kind == "embedded" and dtype == "turbo8":
        assert max(errors) > 1e-4  # really stored as 8-bit codes (float32 errs < 1e-5)
    store.close()


def test_unknown_storage_datatype_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigurationError, match="unknown datatype 'int4'"):
        PageStore(EdgeBackend(tmp_path / "qdrant"), original_dtype="int4")


def test_two_stage_with_prefetch_covering_the_corpus_equals_exact(store, corpus):
    for q in queries():
        exact = store.search("docs", q, top_k=10, mode="exact")
        two = store.search("docs", q, top_k=10, mode="two_stage", prefetch=len(corpus))
        assert [(h.doc_id, h.page) for h in two] == [(h.doc_id, h.page) for h in exact]
        assert [h.score for h in two] == pytest.approx([h.score for h in exact], abs=1e-4)


def test_pooled_mode_scores_the_fde_first_stage(store, corpus):
    """The first stage alone: the dot product of the query's and each page's FDE (our encoder,
    which tests/test_muvera.py proves equal to fastembed's)."""
    muvera = Muvera(128, FdeParams(**store.collection("docs").fde))
    store.oversampling = 10  # rescore every page: the engine's codes then decide nothing
    q = queries(1)[0]
    hits = store.search("docs", q, top_k=5, mode="pooled")
    fde = muvera.encode_query(q)
    expected = sorted(
        ((float(fde @ muvera.encode_document(e.multivector)), k) for k, e in corpus.items()),
        reverse=True,
    )[:5]
    assert [(h.doc_id, h.page) for h in hits] == [k for _, k in expected]
    assert [h.score for h in hits] == pytest.approx([s for s, _ in expected], rel=1e-2)


@pytest.mark.parametrize("pooling", [("clusters",), ("buckets",), ("rows",), ()])
@pytest.mark.parametrize("kind", ["embedded", "server"])
def test_two_stage_covering_the_corpus_equals_exact_for_every_middle_stage(tmp_path, kind, pooling):
    store = make_store(kind, tmp_path, prefetch=40, first_stage_limit=40)
    store.create_collection("c", model="test", max_visual_tokens=768, pooling=pooling)
    rng = np.random.default_rng(2)
    pages = {("d", p): page_embedding(rng, rows=5, cols=4) for p in range(1, 41)}
    store.upsert_pages("c", [page_record(d, p, e) for (d, p), e in pages.items()])
    store.optimize("c")
    for q in queries():
        expected = oracle(pages, q)[:10]
        hits = store.search("c", q, top_k=10)
        assert [(h.doc_id, h.page) for h in hits] == [k for _, k in expected]
        assert [h.score for h in hits] == pytest.approx([s for s, _ in expected], abs=1e-2)
    store.close()


def test_collections_before_fdes_search_the_rows_graph(tmp_path):
    """Collections made before FDEs keep their schema: candidates from the graph over the
    row-pooled vectors, which pooled mode scores by MaxSim."""
    store = make_store("embedded", tmp_path, first_stage="rows")
    info = store.create_collection("old", model="test", max_visual_tokens=768, pooling=("rows",))
    assert info.first_stage == "rows" and info.fde is None
    rng = np.random.default_rng(8)
    pages = {("d", p): page_embedding(rng) for p in range(1, 13)}
    store.upsert_pages("old", [page_record(d, p, e) for (d, p), e in pages.items()])
    q = queries(1)[0]
    hits = store.search("old", q, top_k=5, mode="pooled")
    expected = sorted(((maxsim(q, e.pooled_rows), k) for k, e in pages.items()), reverse=True)[:5]
    assert [(h.doc_id, h.page) for h in hits] == [k for _, k in expected]
    assert [h.score for h in hits] == pytest.approx([s for s, _ in expected], abs=1e-2)
    two = store.search("old", q, top_k=5, prefetch=12)
    assert [(h.doc_id, h.page) for h in two] == [k for _, k in oracle(pages, q)[:5]]
    store.close()


def test_collections_made_before_unit_pooling_keep_raw_means(tmp_path):
    """Collections recorded before pooled vectors were unit-length go on getting raw means, so
    their first stage never compares the two kinds."""
    store = make_store("embedded", tmp_path, first_stage="rows")
    store.create_collection("old", model="test", max_visual_tokens=768, pooling=("rows",))
    catalog = "old" + CATALOG_SUFFIX
    [record] = store.backend.retrieve(catalog, [COLLECTION_POINT])
    assert record.payload["unit_pooled"] is True
    legacy = {k: v for k, v in record.payload.items() if k != "unit_pooled"}
    store.backend.upsert(catalog, [PointData(COLLECTION_POINT, DUMMY, legacy)])
    reopened = PageStore(store.backend)  # reads the record afresh, as after a restart
    assert reopened.collection("old").unit_pooled is False
    rng = np.random.default_rng(5)
    pages = {("d", p): page_embedding(rng) for p in (1, 2, 3)}
    reopened.upsert_pages("old", [page_record(d, p, e) for (d, p), e in pages.items()])
    q = queries(1)[0]
    raw = {k: maxsim(q, pool_rows(e.visual, e.special, normalize=False)) for k, e in pages.items()}
    hits = reopened.search("old", q, top_k=3, mode="pooled")
    assert [h.score for h in hits] == pytest.approx(sorted(raw.values(), reverse=True), abs=1e-2)
    store.close()


def test_hits_carry_provenance_and_metadata(store, corpus):
    [hit] = store.search("docs", queries(1)[0], top_k=1, mode="exact")
    emb = corpus[(hit.doc_id, hit.page)]
    assert hit.source == f"{hit.doc_id}.pdf"
    assert (hit.payload["grid_rows"], hit.payload["grid_cols"]) == emb.grid
    assert hit.payload["n_tokens"] == emb.n_tokens
    assert hit.metadata["year"] == 2020 + int(hit.doc_id[-1])


@pytest.mark.parametrize(
    ("spec", "keep"),
    [
        ({"doc_id": "doc3"}, lambda k: k[0] == "doc3"),
        ({"doc_id": ["doc1", "doc4"]}, lambda k: k[0] in ("doc1", "doc4")),
        ({"source": "doc2.pdf"}, lambda k: k[0] == "doc2"),
        ({"metadata": {"team": "finance"}}, lambda k: int(k[0][-1]) % 2 == 1),
        ({"metadata.year": {"gte": 2022, "lt": 2025}}, lambda k: 2 <= int(k[0][-1]) < 5),
        (
            {"metadata": {"year": [2020, 2025]}, "page": {"lte": 2}},
            lambda k: k[0] in ("doc0", "doc5") and k[1] <= 2,
        ),
    ],
)
def test_filters_never_leak_other_pages(store, corpus, spec, keep):
    where = parse_filter(spec)
    for mode in ("exact", "two_stage", "pooled"):
        hits = store.search("docs", queries(1)[0], top_k=30, mode=mode, where=where)
        assert hits and all(keep((h.doc_id, h.page)) for h in hits), mode
    exact = store.search("docs", queries(1)[0], top_k=30, mode="exact", where=where)
    assert len(exact) == sum(keep(k) for k in corpus)
    assert store.count_pages("docs", where) == sum(keep(k) for k in corpus)


def test_reupserting_a_document_changes_nothing(store, corpus):
    q = queries(1)[0]
    before = store.search("docs", q, top_k=10, mode="exact")
    records = [
        page_record("doc2", p, corpus[("doc2", p)], metadata={"year": 2022, "team": "legal"})
        for p in range(1, 6)
    ]
    store.upsert_pages("docs", records)
    after = store.search("docs", q, top_k=10, mode="exact")
    assert store.count_pages("docs") == N_DOCS * PAGES_PER_DOC
    assert [(h.doc_id, h.page, round(h.score, 4)) for h in after] == [
        (h.doc_id, h.page, round(h.score, 4)) for h in before
    ]


def test_pages_prepared_on_other_threads_store_as_upserted_ones(store, corpus):
    """Ingestion prepares pages on its encode threads and writes them, in order, on one: the
    result is what ``upsert_pages`` stores (same points, same scores), in write batches."""
    from concurrent.futures import ThreadPoolExecutor

    q = queries(1)[0]
    before = store.search("docs", q, top_k=10, mode="exact")
    store.delete_document("docs", "doc3")
    records = [
        page_record("doc3", p, corpus[("doc3", p)], metadata={"year": 2023, "team": "finance"})
        for p in range(1, 6)
    ]
    with ThreadPoolExecutor(2) as pool:
        prepared = list(pool.map(lambda r: store.prepare_page("docs", r), records))
    assert store.count_pages("docs") == (N_DOCS - 1) * PAGES_PER_DOC  # nothing written yet
    store.write_pages("docs", prepared)
    after = store.search("docs", q, top_k=10, mode="exact")
    assert store.count_pages("docs") == N_DOCS * PAGES_PER_DOC
    assert [(h.doc_id, h.page, round(h.score, 4)) for h in after] == [
        (h.doc_id, h.page, round(h.score, 4)) for h in before
    ]


@pytest.mark.parametrize("layout", ["rows", "columns", "single"])
def test_a_point_reaches_qdrant_edge_with_the_exact_floats(layout):
    """The embedded backend hands qdrant-edge float32 row views, not lists (twice as fast to
    build): the same floats as ``tolist`` gives, whatever the array's dtype and memory order."""
    import qdrant_edge as qe

    from retrieval.store.edge_convert import point_vector

    v = np.random.default_rng(0).standard_normal((9,) if layout == "single" else (6, 5))
    v = np.asfortranarray(v) if layout == "columns" else v  # float64, column-major
    made = qe.Point(1, {"v": point_vector(v)}, {})
    assert repr(made) == repr(qe.Point(1, {"v": v.astype(np.float32).tolist()}, {}))


def test_deleting_a_document_removes_every_page_and_its_record(store, corpus):
    store.delete_document("docs", "doc1")
    assert store.count_pages("docs") == (N_DOCS - 1) * PAGES_PER_DOC
    assert store.stored_page_numbers("docs", "doc1") == set()
    for mode in ("exact", "two_stage", "pooled"):
        hits = store.search("docs", queries(1)[0], top_k=50, mode=mode)
        assert "doc1" not in {h.doc_id for h in hits}
    with pytest.raises(NotFound):
        store.document("docs", "doc1")
    assert [d.doc_id for d in store.documents("docs")] == ["doc0", "doc2", "doc3", "doc4", "doc5"]


def test_catalog_lists_and_filters_documents(store, corpus):
    docs = store.documents("docs")
    assert [d.doc_id for d in docs] == [f"doc{i}" for i in range(N_DOCS)]
    assert all(d.status == "indexed" and d.page_count == PAGES_PER_DOC for d in docs)
    finance = store.documents("docs", parse_filter({"metadata": {"team": "finance"}}))
    assert [d.doc_id for d in finance] == ["doc1", "doc3", "doc5"]
    assert store.document("docs", "doc4").metadata == {"year": 2024, "team": "legal"}
    assert store.stored_page_numbers("docs", "doc4") == {1, 2, 3, 4, 5}
    assert store.page("docs", "doc4", 3)["page"] == 3


@pytest.mark.parametrize("kind", ["embedded", "server"])
def test_old_collection_without_pooling_searches_original(tmp_path, kind):
    """Before FDEs a collection without pooled vectors had no first stage: every mode is exact."""
    store = make_store(kind, tmp_path, first_stage="rows")
    store.create_collection("flat", model="test", max_visual_tokens=768, pooling=())
    rng = np.random.default_rng(5)
    pages = {("a", p): page_embedding(rng) for p in range(1, 9)}
    store.upsert_pages("flat", [page_record(d, p, e) for (d, p), e in pages.items()])
    q = queries(1)[0]
    for mode in ("two_stage", "pooled", "exact"):
        hits = store.search("flat", q, top_k=3, mode=mode)
        assert [(h.doc_id, h.page) for h in hits] == [k for _, k in oracle(pages, q)[:3]]
    store.close()


def test_collections_are_listed_and_dropped(store, corpus):
    store.create_collection("other", model="test", max_visual_tokens=768)
    assert [c.name for c in store.collections()] == ["docs", "other"]
    assert store.collection("docs").pooling == ("rows", "cols")
    assert store.collection("docs").filterable == {"year": "integer", "team": "keyword"}
    with pytest.raises(Conflict):
        store.create_collection("other", model="test", max_visual_tokens=768)
    store.drop_collection("other")
    assert [c.name for c in store.collections()] == ["docs"]
    with pytest.raises(NotFound):
        store.search("other", queries(1)[0])


def test_a_collection_whose_creation_was_cut_short_is_created_again(store, monkeypatch):
    """A crash at any step of creating a collection (say the first ingestion's, killed): the
    next ingestion creates it whole instead of failing on the half-made one; dropping it works
    too. Cut here by the n-th backend call failing."""
    backend = store.backend
    steps = ("create_collection", "create_payload_index", "upsert")
    calls = []
    for step in steps:
        real = getattr(backend, step)

        def cut(*args, _real=real, _step=step, **kwargs):
            calls.append(_step)
            if len(calls) == cut_at:
                raise RuntimeError("killed")
            return _real(*args, **kwargs)

        monkeypatch.setattr(backend, step, cut)
    cut_at = 0
    store.create_collection("whole", model="test", max_visual_tokens=768)
    n = len(calls)
    rng = np.random.default_rng(0)
    for cut_at in range(1, n + 1):
        name = f"cut{cut_at}"
        calls.clear()
        with pytest.raises(RuntimeError, match="killed"):
            store.create_collection(name, model="test", max_visual_tokens=768)
        store._collections.clear()  # as a new process finds it
        with pytest.raises(NotFound):
            store.collection(name)
        if cut_at % 2 and cut_at > 1:  # (cut at the first step: nothing to drop)
            store.drop_collection(name)
            assert name not in [c.name for c in store.collections()]
        calls.clear()
        cut_at_now, cut_at = cut_at, 0
        info = store.ensure_collection(name, model="test", max_visual_tokens=768)
        cut_at = cut_at_now
        assert info.name == name and store.collection(name) == info
        store.upsert_pages(name, [page_record("d", 1, page_embedding(rng))])
        assert store.count_pages(name) == 1
    assert {c.name for c in store.collections()} == {"whole"} | {f"cut{k}" for k in range(1, n + 1)}


def test_pages_are_searchable_at_once_and_growing_an_indexed_collection_is_cheap(store):
    """Pages are found as soon as they are stored, before and after the index is built; adding
    to or deleting from an indexed collection needs no rebuild to be searched correctly."""
    store.create_collection("c", model="test", max_visual_tokens=768)
    rng = np.random.default_rng(6)
    pages = {("old", p): page_embedding(rng, rows=6, cols=5) for p in range(1, 31)}
    store.upsert_pages("c", [page_record(d, p, e) for (d, p), e in pages.items()])
    store.optimize("c")
    new = {("new", p): page_embedding(rng, rows=6, cols=5) for p in range(1, 6)}
    store.upsert_pages("c", [page_record(d, p, e) for (d, p), e in new.items()])  # no optimize
    for key, emb in new.items():
        [hit] = store.search("c", emb.multivector[4:14], top_k=1, prefetch=5)
        assert (hit.doc_id, hit.page) == key
    store.delete_pages("c", "old")
    hits = store.search("c", queries(1)[0], top_k=10)
    assert {h.doc_id for h in hits} == {"new"} and len(hits) == 5
    store.optimize("c")
    assert store.count_pages("c") == 5


@pytest.mark.parametrize("kind", ["embedded", "server"])
def test_upgrade_gives_an_old_collection_the_fde_schema_with_the_same_results(tmp_path, kind):
    old = make_store(kind, tmp_path, first_stage="rows")
    old.create_collection("c", model="test", max_visual_tokens=768, filterable={"year": "integer"})
    rng = np.random.default_rng(12)
    pages = {(f"d{i % 4}", i // 4 + 1): page_embedding(rng, rows=5, cols=4) for i in range(36)}
    records = [page_record(d, p, e, metadata={"year": 2000 + p}) for (d, p), e in pages.items()]
    old.upsert_pages("c", records)
    qs = queries(3)
    where = parse_filter({"metadata": {"year": {"gte": 2003}}})
    before = [old.search("c", q, top_k=8, mode="exact", where=where) for q in qs]

    store = PageStore(old.backend, prefetch=36, first_stage_limit=36)  # after the update
    calls = []

    def interrupt(done, total):
        calls.append((done, total))
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user stopped it after the first batch

    with pytest.raises(KeyboardInterrupt):
        store.upgrade_collection("c", progress=interrupt, batch=10)
    assert store.collection("c").first_stage == "rows"  # not switched: still searchable
    assert store.search("c", qs[0], top_k=3)
    progress = []
    info = store.upgrade_collection("c", progress=lambda d, t: progress.append((d, t)), batch=10)
    assert progress[0] == (10, 36) and progress[-1] == (36, 36)  # resumed, not restarted
    assert info.first_stage == "fde" and info.pooling == ("clusters",)
    assert info.points_collection == "c__v2" and not store.backend.collection_exists("c")
    reopened = PageStore(store.backend, prefetch=36, first_stage_limit=36)
    assert reopened.collection("c").first_stage == "fde"
    assert reopened.count_pages("c") == 36
    assert [c.name for c in reopened.collections()] == ["c"]
    for q, expected in zip(qs, before, strict=True):
        for mode in ("exact", "two_stage"):
            got = reopened.search("c", q, top_k=8, mode=mode, where=where)
            assert [(h.doc_id, h.page) for h in got] == [(h.doc_id, h.page) for h in expected]
            assert [h.score for h in got] == pytest.approx([h.score for h in expected], abs=1e-3)
    # New pages go to the upgraded collection and are found; a second upgrade is a no-op.
    extra = page_embedding(rng, rows=5, cols=4)
    reopened.upsert_pages("c", [page_record("d9", 1, extra, metadata={"year": 2010})])
    [hit] = reopened.search("c", extra.multivector[4:12], top_k=1)
    assert (hit.doc_id, hit.page) == ("d9", 1)
    assert reopened.upgrade_collection("c").points_collection == "c__v2"
    reopened.drop_collection("c")
    assert reopened.backend.list_collections() == []
    reopened.close()


@pytest.mark.parametrize(
    "spec",
    [
        {"nope": 1},
        {"metadata": {"x": 1.5}},
        {"metadata": {"x": []}},
        {"page": {"between": 1}},
        {"metadata": {"a b": 1}},
    ],
)
def test_bad_filters_are_clear_errors(spec):
    with pytest.raises(InvalidInput):
        parse_filter(spec)


def test_bad_search_arguments_are_clear_errors(store, corpus):
    with pytest.raises(InvalidInput, match="mode"):
        store.search("docs", queries(1)[0], mode="fuzzy")
    with pytest.raises(InvalidInput, match="query must be"):
        store.search("docs", np.zeros(128, np.float32))
    # Another model's query (other dimension): a conflict naming the collection's model.
    with pytest.raises(Conflict, match="128-d token vectors from test; this query has 64-d"):
        store.search("docs", np.zeros((3, 64), np.float32))
    with pytest.raises(InvalidInput, match="collection name"):
        store.collection("../etc")


def test_both_backends_give_the_same_results(tmp_path):
    """Congruence: the same corpus and queries on both backends."""
    results = {}
    for kind in ("embedded", "server"):
        store = make_store(kind, tmp_path / kind)
        store.create_collection("c", model="test", max_visual_tokens=768)
        rng = np.random.default_rng(9)
        store.upsert_pages(
            "c", [page_record(f"d{i // 4}", i % 4 + 1, page_embedding(rng)) for i in range(40)]
        )
        results[kind] = [
            [(h.doc_id, h.page, h.score) for h in store.search("c", q, top_k=8, mode=mode)]
            for q in queries(3)
            for mode in ("exact", "two_stage", "pooled")
        ]
        store.close()
    modes = ("exact", "two_stage", "pooled") * 3
    for mode, a, b in zip(modes, results["embedded"], results["server"], strict=True):
        score_b = {x[:2]: x[2] for x in b}
        if mode == "pooled":
            # The FDE stage alone is approximate on the engine (binary codes pick the pages
            # it rescores), exact in qdrant-client's local mode: the pages the engine returns
            # carry the same scores, and it finds most of the same pages.
            assert len({x[:2] for x in a} & set(score_b)) >= 6
            for x in a:
                if x[:2] in score_b:
                    assert x[2] == pytest.approx(score_b[x[:2]], rel=1e-3)
            continue
        # Same pages with the same scores; float16 storage may swap near-ties (< 1e-3 apart).
        assert {x[:2] for x in a} == set(score_b)
        assert [x[2] for x in a] == pytest.approx([x[2] for x in b], abs=1e-2)
        for x in a:
            assert x[2] == pytest.approx(score_b[x[:2]], abs=1e-2)


def test_embedded_store_survives_the_process_and_is_locked_while_open(tmp_path):
    writer = textwrap.dedent(
        f"""
        import numpy as np
        from retrieval.store import PageStore
        from retrieval.store.edge import EdgeBackend
        from tests.fakes import page_embedding, page_record
        store = PageStore(EdgeBackend({str(tmp_path / "q")!r}))
        store.create_collection("c", model="test", max_visual_tokens=768)
        rng = np.random.default_rng(0)
        store.upsert_pages("c", [page_record("d", p, page_embedding(rng)) for p in range(1, 4)])
        import os; os._exit(0)  # no close(): as if the process died
        """
    )
    subprocess.run([sys.executable, "-c", writer], check=True)
    store = PageStore(EdgeBackend(tmp_path / "q"))
    assert store.count_pages("c") == 3
    assert store.stored_page_numbers("c", "d") == {1, 2, 3}
    # While we hold it, another process gets a clear error.
    other = f"from retrieval.store.edge import EdgeBackend; EdgeBackend({str(tmp_path / 'q')!r})"
    result = subprocess.run([sys.executable, "-c", other], capture_output=True, text=True)
    assert result.returncode != 0 and "StoreLocked" in result.stderr and "in use" in result.stderr
    store.close()
    # Closed: it opens again, once.
    first = EdgeBackend(tmp_path / "q")
    with pytest.raises(StoreLocked, match="in use"):
        EdgeBackend(tmp_path / "q")
    first.close()


def test_concurrent_first_requests_open_the_embedded_store_once(tmp_path):
    """Right after a start, many requests open the same collection at once: all must succeed
    (the second opener of a shard used to fail on its WAL lock)."""
    store = PageStore(EdgeBackend(tmp_path / "q"))
    store.create_collection("c", model="test", max_visual_tokens=768)
    rng = np.random.default_rng(0)
    store.upsert_pages("c", [page_record("d", p, page_embedding(rng)) for p in range(1, 4)])
    store.close()
    for _ in range(3):
        reopened = PageStore(EdgeBackend(tmp_path / "q"))
        with ThreadPoolExecutor(16) as pool:
            counts = list(pool.map(lambda _, s=reopened: s.count_pages("c"), range(16)))
        assert counts == [3] * 16
        reopened.close()


def test_readers_racing_a_collection_being_created_never_fail(tmp_path):
    """A search for a collection the worker is creating that moment (schemathesis found it):
    NotFound or an answer, never the WAL lock error of a second opener."""
    import threading

    backend = EdgeBackend(tmp_path / "q")
    names = [f"c{i}" for i in range(40)]
    done = threading.Event()
    errors = []

    def read() -> None:
        while not done.is_set():
            for name in names:
                try:
                    if backend.collection_exists(name):
                        backend.count(name, None)
                except NotFound:
                    pass
                except Exception as exc:  # the defect: StoreError from a second WAL opener
                    errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(4)]
    for t in readers:
        t.start()
    try:
        from retrieval.store.model import VectorSpec

        for name in names:
            backend.create_collection(name, [VectorSpec("v", 4, multivector=False)])
    finally:
        done.set()
        for t in readers:
            t.join()
        backend.close()
    assert errors == []


def crash_pages(rng: np.random.Generator) -> dict[str, list]:
    """The pages ``test_a_kill_9_...`` writes, the same ones for the same ``rng``."""
    return {
        "gone": [page_record("gone", p, page_embedding(rng)) for p in range(1, 4)],
        "kept": [page_record("kept", p, page_embedding(rng)) for p in range(1, 5)],
        # A4-sized: ~110k floats a page with its derived vectors
        "long": [page_record("long", p, page_embedding(rng, 32, 23)) for p in range(1, 161)],
    }


@pytest.mark.slow  # a process killed or started cold: seconds each
def test_a_kill_9_keeps_every_write_that_returned_durable_and_no_part_of_a_page(tmp_path):
    """The embedded store writes pages without a journal (``retrieval.store.edge``). After a
    kill -9: upserts, deletes, catalog records and flushed bulk writes are all there; bulk
    writes since the last flush are lost, whole pages at a time; and a long bulk write was
    flushed along the way, so the crash lost at most ``FLUSH_FLOATS`` of it."""
    writer = textwrap.dedent(
        f"""
        import os, signal
        import numpy as np
        import retrieval.store.edge as edge
        from retrieval.store import PageStore
        from retrieval.store.edge import EdgeBackend
        from retrieval.types import DocumentRecord
        from tests.test_store import crash_pages
        edge.FLUSH_FLOATS = 5_000_000  # ~45 A4 pages
        store = PageStore(EdgeBackend({str(tmp_path / "q")!r}))
        store.create_collection("c", model="test", max_visual_tokens=768)
        pages = crash_pages(np.random.default_rng(0))
        store.upsert_pages("c", pages["gone"])
        store.put_document("c", DocumentRecord("kept", "kept.pdf", 4))
        store.write_pages("c", [store.prepare_page("c", p) for p in pages["kept"]])
        store.flush("c")
        store.delete_pages("c", "gone")
        for i in range(0, 160, 30):  # flushed after pages 60 and 120 (> FLUSH_FLOATS each)
            store.write_pages("c", [store.prepare_page("c", p) for p in pages["long"][i : i + 30]])
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run([sys.executable, "-c", writer], capture_output=True, text=True)
    assert result.returncode == -9, result.stderr
    pages = crash_pages(np.random.default_rng(0))
    store = PageStore(EdgeBackend(tmp_path / "q"))
    assert store.document("c", "kept").page_count == 4
    assert store.stored_page_numbers("c", "gone") == set()
    assert store.stored_page_numbers("c", "kept") == {1, 2, 3, 4}
    long = store.stored_page_numbers("c", "long")
    assert len(long) >= 120, len(long)  # not flushed along the way: none
    for number in sorted(long)[::10] + sorted(long)[-3:]:
        payload, tokens = store.page_tokens("c", "long", number)
        expected = pages["long"][number - 1].embedding.multivector
        assert tokens.shape == expected.shape and payload["page"] == number
        np.testing.assert_allclose(tokens, expected, atol=1e-3)  # float16 storage
    store.close()


def test_each_stage_of_a_search_reports_its_time(store, corpus):
    """The embedded engine runs the stages one call each and times them; a server runs the
    whole query inside Qdrant and reports it as one figure. The results are the nested
    query's either way (two_stage at full depth equals exact)."""
    store.create_collection("c", model="test", max_visual_tokens=768, pooling=("clusters",))
    rng = np.random.default_rng(5)
    pages = {("d", p): page_embedding(rng, rows=5, cols=4) for p in range(1, 31)}
    store.upsert_pages("c", [page_record(d, p, e) for (d, p), e in pages.items()])
    store.optimize("c")
    timings: dict[str, float] = {}
    q = queries(1)[0]
    hits = store.search("c", q, top_k=10, prefetch=30, timings=timings)
    assert [(h.doc_id, h.page) for h in hits] == [k for _, k in oracle(pages, q)[:10]]
    engine = {"fde", "clusters", "original"} if store.kind == "embedded" else {"original"}
    assert set(timings) == engine | {"encode", "total"}
    assert all(ms >= 0 for ms in timings.values())
    assert sum(v for k, v in timings.items() if k != "total") <= timings["total"]
    nothing: dict[str, float] = {}  # a filter nothing passes: the later stages never run
    where = parse_filter({"doc_id": "nosuch"})
    assert store.search("c", q, top_k=10, where=where, timings=nothing) == []


def test_depths_are_tuned_for_the_middle_stage_unless_set(tmp_path):
    from retrieval.store.planning import TUNED_DEPTHS, Depths

    store = make_store("embedded", tmp_path, prefetch=None)
    clusters = store.create_collection("a", model="t", max_visual_tokens=768)
    buckets = store.create_collection("b", model="t", max_visual_tokens=768, pooling=("buckets",))
    assert store.depths(clusters) == TUNED_DEPTHS["clusters"] == Depths(400, 60, 2.0)
    assert store.depths(buckets) == TUNED_DEPTHS["buckets"] == Depths(800, 150, 2.0)
    store.prefetch = 70  # COLQWEN_PREFETCH: wins over the tuned depth, the rest stays tuned
    assert store.depths(clusters) == Depths(400, 70, 2.0)
    store.close()


def test_closing_a_store_it_is_warming_up_waits_for_the_warm_up_and_never_fails(tmp_path):
    """A text search answers in milliseconds and closes the store while its warm-up (started
    at open) is still reading the collections: closing stops the warm-up first (the engine
    refuses to close a collection another thread reads: "Already borrowed")."""
    store = make_store("embedded", tmp_path)
    for name in "abcd":
        store.create_collection(name, model="t", max_visual_tokens=768)
        store.upsert_pages(name, [page_record("d", 1, page_embedding(np.random.default_rng(1)))])
    store.close()
    for _ in range(20):
        reopened = make_store("embedded", tmp_path)
        warming = reopened.warm_up_in_background()
        reopened.collection("a")
        reopened.close()  # raised RuntimeError('Already borrowed') now and then
        assert not warming.is_alive()


def test_warming_up_loads_the_store_and_a_closed_store_stays_closed(tmp_path, caplog):
    store = make_store("embedded", tmp_path)
    store.create_collection("c", model="t", max_visual_tokens=768)
    store.upsert_pages("c", [page_record("d", 1, page_embedding(np.random.default_rng(1)))])
    store.close()
    reopened = make_store("embedded", tmp_path)
    assert not reopened.backend._shards  # opening reads nothing
    reopened.warm_up_in_background().join(30)
    assert {"c", "c__catalog"} <= set(reopened.backend._shards)
    assert reopened.search("c", queries(1)[0], top_k=1)
    reopened.close()
    with caplog.at_level("WARNING"):  # a warm-up that outlives the store stops, loudly
        reopened.warm_up_in_background().join(30)
    assert "warming up the store stopped" in caplog.text
    assert not reopened.backend._shards
    make_store("server", tmp_path).warm_up()  # nothing to do on a server, and no error
