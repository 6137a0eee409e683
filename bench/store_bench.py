"""The store stage's cost per page in the ingestion parent: pages of realistic size (777 token
vectors of 128 dims, a page of text) with their FDE and pooled vectors computed beforehand, as
encoder processes send them, upserted 32 at a time into the embedded store; the same split as
ingestion splits it (prepared on the encode threads, written on the store's); then where the
time goes (cProfile).

    uv run python -m bench.store_bench [--pages N]
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import pstats
import tempfile
import time
from pathlib import Path

import numpy as np

from retrieval.store import PageStore
from retrieval.store.edge import EdgeBackend
from retrieval.store.schema import derived_vectors
from retrieval.types import DocumentRecord, PageEmbedding, PageRecord

ROWS, COLS, DIM, PREFIX, SUFFIX = 33, 23, 128, 4, 7
DOC_PAGES = 22


def embedding(rng: np.random.Generator) -> PageEmbedding:
    n = PREFIX + ROWS * COLS + SUFFIX
    tokens = rng.standard_normal((n, DIM)).astype(np.float32)
    tokens /= np.linalg.norm(tokens, axis=1, keepdims=True)
    visual = tokens[PREFIX : PREFIX + ROWS * COLS]
    return PageEmbedding(
        multivector=tokens,
        grid=(ROWS, COLS),
        visual=visual.reshape(ROWS, COLS, DIM),
        special=np.concatenate([tokens[:PREFIX], tokens[PREFIX + ROWS * COLS :]]),
        visual_runs=((PREFIX, ROWS * COLS),),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=256)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    store = PageStore(EdgeBackend(Path(tempfile.mkdtemp())))
    store.create_collection("c", model="m", max_visual_tokens=768, dim=DIM)
    info = store.collection("c")
    embeddings = [embedding(rng) for _ in range(64)]
    derived = [derived_vectors(info, e) for e in embeddings]
    records = [
        PageRecord(
            doc_id="d" * 64,
            source="bench.pdf",
            page_number=i + 1,
            page_count=args.pages * 2,
            size_pt=(595.0, 842.0),
            rotation=0,
            pixel_size=(644, 924),
            embedding=embeddings[i % 64],
            text="lorem ipsum dolor sit amet " * 60,
            derived=derived[i % 64],
        )
        for i in range(args.pages)
    ]
    start = time.perf_counter()
    for i in range(0, len(records), 32):
        store.upsert_pages("c", records[i : i + 32])
    per_page = (time.perf_counter() - start) / len(records) * 1000
    print(f"store stage: {per_page:.2f} ms a page ({info.first_stage}, {info.pooling})")
    # The pipeline's split: prepared on the encode threads, written on the store's thread.
    later = [dataclasses.replace(r, page_number=r.page_number + 2 * args.pages) for r in records]
    start = time.perf_counter()
    prepared = [store.prepare_page("c", r) for r in later]
    middle = time.perf_counter()
    for i in range(0, len(prepared), 32):
        store.write_pages("c", prepared[i : i + 32])
    end = time.perf_counter()
    n = len(later)
    print(
        f"of which prepare_page (any thread) {(middle - start) / n * 1000:.2f} ms, "
        f"write_pages (the store's thread) {(end - middle) / n * 1000:.2f} ms a page"
    )
    # The store's thread as ingestion runs it: per document (22 pages, the mean of the good
    # PDFs) its open record and its pages in writes of up to 32; the pages flushed and the
    # documents marked indexed after each document (how it began), or after every ~100 pages
    # (about a second at two GPUs, as it does now).
    for every in (DOC_PAGES, 100):
        docs = [
            dataclasses.replace(
                r, doc_id=f"{every}{i // DOC_PAGES:062d}", page_number=i % DOC_PAGES + 1
            )
            for i, r in enumerate(records)
        ]
        prepared = [store.prepare_page("c", r) for r in docs]
        flushing, unmarked, since = 0.0, [], 0
        start = time.perf_counter()
        for first in range(0, len(docs), DOC_PAGES):
            doc = DocumentRecord(docs[first].doc_id, "bench.pdf", DOC_PAGES, status="indexing")
            store.put_document("c", doc)
            for i in range(first, min(first + DOC_PAGES, len(docs)), 32):
                store.write_pages("c", prepared[i : min(i + 32, first + DOC_PAGES)])
            unmarked.append(dataclasses.replace(doc, status="indexed"))
            since += DOC_PAGES
            if since >= every or first + DOC_PAGES >= len(docs):
                t0 = time.perf_counter()
                store.flush("c")
                flushing += time.perf_counter() - t0
                store.put_documents("c", unmarked)
                unmarked, since = [], 0
        took = time.perf_counter() - start
        print(
            f"store's thread, {DOC_PAGES}-page documents marked every {every} pages: "
            f"{took / n * 1000:.2f} ms a page, of which flushing pages {flushing / n * 1000:.2f}"
        )
    again = [dataclasses.replace(r, page_number=r.page_number + args.pages) for r in records]
    profile = cProfile.Profile()
    profile.enable()
    for i in range(0, len(again), 32):
        store.upsert_pages("c", again[i : i + 32])
    profile.disable()
    pstats.Stats(profile).sort_stats("tottime").print_stats(8)
    store.close()


if __name__ == "__main__":
    main()
