"""Pages and documents in Qdrant, written once over either backend: the store's front.

``PageStore`` holds collections (their schema: ``retrieval.store.schema``), their document
catalog and their pages, and searches them (the plan: ``retrieval.store.planning``); the
upgrade of older collections lives in ``retrieval.store.upgrade``. A document is ``indexing``
until all its pages are stored, then ``indexed``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np

from retrieval.config import Settings
from retrieval.errors import InvalidInput, NotFound, StoreError
from retrieval.store.backend import Backend
from retrieval.store.collections import CollectionStore
from retrieval.store.model import Filter, Match, Record
from retrieval.store.planning import check_search, run_search
from retrieval.store.schema import (
    CATALOG_SUFFIX,
    document_of,
    document_point,
    document_point_id,
    now,
    page_point,
    page_point_id,
)
from retrieval.types import (
    CollectionInfo,
    DocumentRecord,
    Hit,
    PageRecord,
    SearchMode,
)

log = logging.getLogger(__name__)

_SCROLL_PAGE = 256


class PageStore(CollectionStore):
    """Collections of page embeddings with their document catalog, and MaxSim search: the
    front of the storage layer (``CollectionStore`` holds the collections themselves)."""

    def __init__(self, backend: Backend, **options: Any) -> None:
        super().__init__(backend, **options)
        self._warming: threading.Thread | None = None  # warm_up_in_background's thread
        self._stop_warming = threading.Event()

    @classmethod
    def from_settings(cls, settings: Settings) -> PageStore:
        return cls(
            open_backend(settings),
            prefetch=settings.prefetch,
            original_dtype=settings.original_dtype,
            hnsw_m=settings.hnsw_m,
            hnsw_ef_construct=settings.hnsw_ef_construct,
            first_stage=settings.first_stage,
            first_stage_limit=settings.first_stage_limit,
            oversampling=settings.fde_oversampling,
            pooled_dtype=settings.pooled_dtype,
        )

    def close(self) -> None:
        """Close the store; a warm-up still running is stopped first (the engine cannot close
        a collection another thread is reading: "Already borrowed")."""
        self._stop_warming.set()
        warming = self._warming
        if warming is not None and warming is not threading.current_thread():
            warming.join()
        self.backend.close()

    def overview(self) -> list[tuple[CollectionInfo, int, int]]:
        """Every collection with its number of documents and of pages (the CLI's
        ``collections list``, the API's and web UI's collection picker)."""
        return [
            (info, len(self.documents(info.name)), self.count_pages(info.name))
            for info in self.collections()
        ]

    # --- documents -----------------------------------------------------------------------------

    def put_document(self, collection: str, doc: DocumentRecord) -> DocumentRecord:
        return self.put_documents(collection, [doc])[0]

    def put_documents(self, collection: str, docs: list[DocumentRecord]) -> list[DocumentRecord]:
        """Write catalog records, durable on return: one write (and flush) for them all."""
        self.collection(collection)
        points = []
        for doc in docs:
            doc.created_at = doc.created_at or now()
            doc.updated_at = now()
            points.append(document_point(doc))
        if points:
            self.backend.upsert(collection + CATALOG_SUFFIX, points)
        return docs

    def document(self, collection: str, doc_id: str) -> DocumentRecord:
        self.collection(collection)
        records = self.backend.retrieve(collection + CATALOG_SUFFIX, [document_point_id(doc_id)])
        if not records:
            raise NotFound(f"document '{doc_id}' is not in collection '{collection}'")
        return document_of(records[0])

    def find_document(self, collection: str, ref: str) -> DocumentRecord:
        """A document by its id or, as commands show ids (their first 12 characters), by a
        prefix that names one document only. A full id is read directly; a prefix scans the
        collection's catalog."""
        ref = ref.strip().lower()
        if len(ref) >= 64:
            return self.document(collection, ref)
        if len(ref) < 4 or any(c not in "0123456789abcdef" for c in ref):
            raise NotFound(
                f"no document '{ref[:64]}' in collection '{collection}': give its id, or at "
                "least its first 4 characters"
            )
        matches = [d for d in self.documents(collection) if d.doc_id.startswith(ref)]
        if not matches:
            raise NotFound(f"no document id starts with '{ref}' in collection '{collection}'")
        if len(matches) > 1:
            raise InvalidInput(
                f"'{ref}' is the start of {len(matches)} document ids; give more characters"
            )
        return matches[0]

    def documents(self, collection: str, where: Filter | None = None) -> list[DocumentRecord]:
        """All documents (optionally filtered on metadata), oldest first."""
        self.collection(collection)
        records = self._scroll_all(
            collection + CATALOG_SUFFIX, Filter((Match("kind", "document"),)) & where
        )
        return sorted((document_of(r) for r in records), key=lambda d: (d.created_at, d.name))

    def delete_document(self, collection: str, doc_id: str) -> None:
        """Remove every page of the document, then its catalog record."""
        self.document(collection, doc_id)  # NotFound if absent
        self.delete_pages(collection, doc_id)
        self.backend.delete(
            collection + CATALOG_SUFFIX,
            Filter((Match("kind", "document"), Match("doc_id", doc_id))),
        )

    # --- pages ---------------------------------------------------------------------------------

    def delete_pages(self, collection: str, doc_id: str) -> None:
        """Remove every stored page of a document (its catalog record stays)."""
        self.backend.delete(self._points(collection), Filter((Match("doc_id", doc_id),)))

    def upsert_pages(self, collection: str, pages: list[PageRecord]) -> None:
        """Store pages (batched, waited on, durable). Raises ``StoreError`` if a write fails.

        Pages are prepared on every core (one BLAS thread each: a pool of them behind every
        small matmul would oversubscribe the cores), each batch written while the next ones
        are prepared: 1.4x the pages a second of one thread on 2 cores (BENCHMARKS.md).
        """
        from threadpoolctl import threadpool_limits

        created_at = now()
        batches = [pages[i : i + self.write_batch] for i in range(0, len(pages), self.write_batch)]
        workers = min(os.cpu_count() or 1, 4)
        with (
            threadpool_limits(limits=1, user_api="blas"),
            ThreadPoolExecutor(workers, thread_name_prefix="prepare") as pool,
        ):
            prepared = [
                [pool.submit(self.prepare_page, collection, p, created_at) for p in batch]
                for batch in batches
            ]
            for futures in prepared:
                self.write_pages(collection, [f.result() for f in futures])
        self.flush(collection)

    def prepare_page(self, collection: str, page: PageRecord, created_at: str | None = None) -> Any:
        """``page`` as the backend writes it (its vectors, payload, the backend's own point):
        the CPU half of storing a page, which any thread can do ahead of ``write_pages``."""
        info = self.collection(collection)
        return self.backend.prepare(page_point(info, page, created_at or now()))

    def write_pages(self, collection: str, prepared: list[Any]) -> None:
        """Store pages that ``prepare_page`` made (batched, waited on: searchable on return,
        durable once ``flush`` returns, ``Backend.write``). Raises ``StoreError`` if a write
        fails."""
        name = self.collection(collection).points_collection
        for start in range(0, len(prepared), self.write_batch):
            self.backend.write(name, prepared[start : start + self.write_batch])

    def stored_page_numbers(self, collection: str, doc_id: str) -> set[int]:
        records = self._scroll_all(self._points(collection), Filter((Match("doc_id", doc_id),)))
        return {int(r.payload["page"]) for r in records}

    def page(self, collection: str, doc_id: str, page_number: int) -> dict:
        points = self._points(collection)
        records = self.backend.retrieve(points, [page_point_id(doc_id, page_number)])
        if not records:
            raise NotFound(f"page {page_number} of document '{doc_id}' is not stored")
        return records[0].payload

    def page_tokens(
        self, collection: str, doc_id: str, page_number: int
    ) -> tuple[dict, np.ndarray]:
        """A stored page's payload and its full multivector, (n_tokens, dim) float32 (as
        stored: float16 or TurboQuant values read back)."""
        where = Filter((Match("doc_id", doc_id), Match("page", page_number)))
        records, _ = self.backend.scroll(self._points(collection), where, 1, vectors=["original"])
        if not records or not records[0].vectors:
            raise NotFound(f"page {page_number} of document '{doc_id}' is not stored")
        record = records[0]
        return record.payload, np.asarray(record.vectors["original"], dtype=np.float32)

    def count_pages(self, collection: str, where: Filter | None = None) -> int:
        return self.backend.count(self._points(collection), where)

    def flush(self, collection: str) -> None:
        """Make every page written to ``collection`` durable (``write_pages`` does not; every
        other write, the catalog's too, is durable when it returns)."""
        self.backend.flush(self._points(collection))

    def optimize(self, collection: str) -> None:
        """Index what was written since the last call (the embedded engine has no background
        optimizer). Pages are searchable before: unindexed ones are scanned."""
        self.backend.optimize(self._points(collection))

    def warm_up(self) -> None:
        """Bring what queries read into memory, every collection's: after a start the first
        queries then answer as fast as later ones (the embedded store reads its files into the
        page cache, the full multivectors last; a server keeps its own caches)."""
        stop = self._stop_warming
        if stop.is_set():
            raise StoreError("the store is closed")
        for info in self.collections():
            if stop.is_set():
                return
            self.backend.warm_up(info.name + CATALOG_SUFFIX, stop=stop)
            # Without rescoring two_stage reads no stored FDE: those go last, with `original`.
            unread = ("fde",) if self.depths(info).oversampling == 0 else ()
            self.backend.warm_up(info.points_collection, cold=("original", *unread), stop=stop)

    def warm_up_in_background(self) -> threading.Thread:
        """``warm_up`` on a daemon thread, so that opening the store does not wait for it."""

        def run() -> None:
            start = time.perf_counter()
            try:
                self.warm_up()
            except Exception as exc:  # the store closed meanwhile, a file vanished: queries
                log.warning("warming up the store stopped: %s", exc)  # still work, colder
                return
            log.info("store warmed up in %.1f s", time.perf_counter() - start)

        thread = threading.Thread(target=run, name="store-warm-up", daemon=True)
        self._warming = thread
        thread.start()
        return thread

    def _scroll_all(self, name: str, where: Filter | None) -> list[Record]:
        out: list[Record] = []
        offset = None
        while True:
            records, offset = self.backend.scroll(name, where, _SCROLL_PAGE, offset)
            out += records
            if offset is None:
                return out

    # --- search --------------------------------------------------------------------------------

    def search(
        self,
        collection: str,
        query: np.ndarray | None,
        *,
        top_k: int = 10,
        where: Filter | None = None,
        mode: SearchMode = "two_stage",
        prefetch: int | None = None,
        text: str | None = None,
        timings: dict[str, float] | None = None,
    ) -> list[Hit]:
        """MaxSim search with a query multivector (n_tokens, dim) float32, and with ``text``
        (the query's words) BM25 over the pages' own text (``query`` None: ``text`` mode only).
        The modes and their stages: ``retrieval.store.planning``. ``prefetch``: how many
        candidates the full multivectors rerank (default: what the collection was tuned for).

        ``timings`` receives milliseconds: ``encode`` (the query's FDE), each engine stage by the
        vector it scores (one figure for the whole query on a server) and ``total``.
        """
        start = time.perf_counter()
        info = self.collection(collection)
        check_search(info, query, top_k=top_k, mode=mode)
        depths = self.depths(info)
        if prefetch:
            depths = replace(depths, prefetch=prefetch)
        engine: dict[str, float] = {}
        records = run_search(
            self.backend,
            info,
            query,
            top_k=top_k,
            where=where,
            mode=mode,
            depths=depths,
            text=text,
            timings=engine,
        )
        if timings is not None:
            timings.update(engine, total=(time.perf_counter() - start) * 1000)
        return [
            Hit(
                r.payload["doc_id"],
                r.payload["source"],
                int(r.payload["page"]),
                float(r.score or 0),
                r.payload,
            )
            for r in records
        ]


def open_backend(settings: Settings) -> Backend:
    """The server backend when ``qdrant_url`` is set, else the embedded one in ``data_dir``."""
    if settings.qdrant_url:
        from retrieval.store.server import ServerBackend

        key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return ServerBackend(
            settings.qdrant_url,
            api_key=key,
            prefer_grpc=settings.qdrant_prefer_grpc,
            shard_number=settings.qdrant_shard_number,
            replication_factor=settings.qdrant_replication_factor,
            write_consistency_factor=settings.qdrant_write_consistency_factor,
        )
    from retrieval.store.edge import EdgeBackend

    return EdgeBackend(settings.data_dir / "qdrant")
