"""Pages and documents in Qdrant, written once over either backend.

Schema of a collection ``C`` (see README, "Storage"):

- ``C``: one point per page, id = uuid5(doc_id, page). Named vectors: ``original`` (every token,
  float16 by default, no HNSW graph, on disk: the final rerank), ``fde`` (one MUVERA encoding a
  page, HNSW over its binary-quantized codes held in RAM: finds the candidates), and pooled
  multivectors, ``clusters`` by default (or ``buckets``, ``rows``, ``cols``; no graph: they narrow
  the FDE candidates cheaply before ``original`` reranks). Payload: provenance, model, the caller's
  ``metadata``.
- ``C__catalog``: one point per document (status, page count, metadata) plus one holding the
  collection's own schema, so a server deployment keeps everything in the cluster.

Collections made before FDEs find candidates with an HNSW graph over ``rows``
(``first_stage="rows"``); they keep searching that way until ``upgrade_collection`` copies their
pages into ``C__v2`` with FDEs computed from the stored ``original`` vectors, and the schema
record then names ``C__v2`` as the collection holding the pages.

A document is ``indexing`` until all its pages are stored, then ``indexed``.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

import numpy as np

from retrieval.config import Settings
from retrieval.errors import ConfigurationError, Conflict, InvalidInput, NotFound, StoreError
from retrieval.muvera import FdeParams, Muvera
from retrieval.pooling import pool_buckets, pool_clusters, pool_cols, pool_rows
from retrieval.store.backend import Backend
from retrieval.store.model import (
    BinaryBits,
    Filter,
    Match,
    PointData,
    Prefetch,
    Record,
    VectorSpec,
)
from retrieval.text import clean
from retrieval.text import document_vector as text_vector
from retrieval.text import query_vector as text_query_vector
from retrieval.types import (
    DATATYPES,
    SEARCH_MODES,
    CollectionInfo,
    Datatype,
    DocumentRecord,
    FirstStage,
    Hit,
    ModelIdentity,
    PageEmbedding,
    PageRecord,
    SearchMode,
)

log = logging.getLogger(__name__)


class Model(Protocol):
    """What a collection records of the model that fills it (an ``Encoder`` is one)."""

    identity: ModelIdentity
    dim: int
    family: Any  # retrieval.models.Family: its name and geometry (``params``)


POOLINGS = ("rows", "cols", "buckets", "clusters")
FIELD_KINDS = ("keyword", "integer", "float", "bool", "datetime")
CATALOG_SUFFIX = "__catalog"
UPGRADED_SUFFIX = "__v2"  # the pages of an upgraded collection
TEXT_SUFFIX = "__v3"  # the pages of a collection upgraded (again) to keep its text
_NAMESPACE = uuid.UUID("6f1c2f4e-8a7b-4c1e-9e55-2b0c7d3a9f10")
_COLLECTION_POINT = str(uuid.uuid5(_NAMESPACE, "collection"))
_DUMMY = {"_": np.ones((1,), dtype=np.float32)}  # catalog points need a vector; it means nothing
# A collection's name: what the API declares (pydantic's patterns, like fullmatch, end at the
# end: "$" in Python would also match before a trailing newline).
COLLECTION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_SCROLL_PAGE = 256


@dataclass(frozen=True)
class Depths:
    """How deep each stage of ``two_stage`` looks: ``first_stage_limit`` FDE candidates (by
    their binary codes, rescored from the stored FDEs at ``oversampling`` times as many unless
    it is 0), narrowed by the pooled vectors to ``prefetch``, which the full multivectors
    rerank."""

    first_stage_limit: int
    prefetch: int
    oversampling: float


# The depths each middle stage was tuned for (BENCHMARKS.md, "Search in tens of milliseconds"):
# clustered vectors rank well enough that 60 pages reranked keep the true top 10 where SimHash
# buckets needed 150, from half the FDE candidates. (600 candidates by their codes alone were
# as good at 10k pages, not at 50k: 0.913 of the top 10 on `regions`.)
TUNED_DEPTHS = {
    "clusters": Depths(400, 60, 2.0),
    "buckets": Depths(800, 150, 2.0),
}
_OTHER_DEPTHS = Depths(800, 150, 2.0)  # rows, cols, no middle stage


def tuned_depths(info: CollectionInfo) -> Depths:
    """The depths ``info``'s middle stage was tuned for."""
    if info.first_stage == "fde" and info.pooling:
        return TUNED_DEPTHS.get(info.pooling[0], _OTHER_DEPTHS)
    return _OTHER_DEPTHS


def page_point_id(doc_id: str, page_number: int) -> str:
    """Deterministic: re-ingesting a page overwrites it."""
    return str(uuid.uuid5(_NAMESPACE, f"page:{doc_id}:{page_number}"))


def _document_point_id(doc_id: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"document:{doc_id}"))


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class PageStore:
    """Collections of page embeddings with their document catalog, and MaxSim search.

    ``prefetch`` is how many candidates the full multivectors rerank; with pooled vectors in an
    FDE collection, the first stage passes ``first_stage_limit`` candidates to the pooled
    vectors, which keep the best ``prefetch``. ``oversampling`` fetches that many times the
    candidates by the FDEs' binary codes, then rescores them with the stored FDEs (0: no
    rescoring). Each left None is what the collection's middle stage was tuned for
    (``TUNED_DEPTHS``).
    """

    def __init__(
        self,
        backend: Backend,
        *,
        prefetch: int | None = None,
        write_batch: int = 32,
        original_dtype: Datatype = "float16",
        hnsw_m: int = 16,
        hnsw_ef_construct: int = 100,
        first_stage: FirstStage = "fde",
        first_stage_limit: int | None = None,
        oversampling: float | None = None,
        fde: FdeParams = FdeParams(),
        fde_binary: BinaryBits | None = "1",
        pooled_dtype: Datatype = "turbo8",
    ) -> None:
        self.backend = backend
        self.prefetch = prefetch
        for dtype in (original_dtype, pooled_dtype):
            if dtype not in DATATYPES:
                raise ConfigurationError(f"unknown datatype '{dtype}': use {DATATYPES}")
        if first_stage not in ("fde", "rows"):
            raise ConfigurationError(f"unknown first stage '{first_stage}': use fde or rows")
        self.original_dtype = original_dtype
        self.pooled_dtype = pooled_dtype
        self.hnsw_m = hnsw_m
        self.hnsw_ef_construct = hnsw_ef_construct
        self.first_stage = first_stage
        self.first_stage_limit = first_stage_limit
        self.oversampling = oversampling
        self.fde = fde
        self.fde_binary = fde_binary
        self.write_batch = write_batch
        self._collections: dict[str, CollectionInfo] = {}
        self._warming: threading.Thread | None = None  # warm_up_in_background's thread
        self._stop_warming = threading.Event()
        self._lock = threading.Lock()

    def depths(self, info: CollectionInfo) -> Depths:
        """The depths searches of ``info`` use: those set on the store, the rest tuned for its
        middle stage."""
        tuned = tuned_depths(info)
        return Depths(
            tuned.first_stage_limit if self.first_stage_limit is None else self.first_stage_limit,
            tuned.prefetch if self.prefetch is None else self.prefetch,
            tuned.oversampling if self.oversampling is None else self.oversampling,
        )

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

    @property
    def kind(self) -> str:
        return self.backend.kind

    def close(self) -> None:
        """Close the store; a warm-up still running is stopped first (the engine cannot close
        a collection another thread is reading: "Already borrowed")."""
        self._stop_warming.set()
        warming = self._warming
        if warming is not None and warming is not threading.current_thread():
            warming.join()
        self.backend.close()

    # --- collections ---------------------------------------------------------------------------

    def create_collection(
        self,
        name: str,
        *,
        model: str,
        max_visual_tokens: int,
        dim: int = 128,
        pooling: tuple[str, ...] = ("clusters",),
        filterable: dict[str, str] | None = None,
        family: str = "colqwen2",
        model_fingerprint: str | None = None,
        geometry: dict[str, int] | None = None,
    ) -> CollectionInfo:
        _check_name(name, new=True)
        if bad := [p for p in pooling if p not in POOLINGS]:
            raise ConfigurationError(f"unknown pooling {bad}: use {POOLINGS}")
        filterable = dict(filterable or {})
        if bad := {k: v for k, v in filterable.items() if v not in FIELD_KINDS}:
            raise ConfigurationError(f"unknown field kinds {bad}: use {FIELD_KINDS}")
        if self._incomplete(name):
            # A creation cut short (a crash): it holds nothing, as nothing is written into a
            # collection before its schema record, which its creation writes last.
            log.warning("collection '%s' was not created completely: creating it again", name)
            self._drop_shards(name)
        if self.backend.collection_exists(name):
            raise Conflict(f"collection '{name}' already exists")
        info = CollectionInfo(
            name=name,
            model=model,
            max_visual_tokens=max_visual_tokens,
            dim=dim,
            pooling=tuple(pooling),
            original_dtype=self.original_dtype,
            filterable=filterable,
            created_at=now(),
            first_stage=self.first_stage,
            fde=self.fde.to_dict() if self.first_stage == "fde" else None,
            family=family,
            text=True,
            model_fingerprint=model_fingerprint,
            geometry=dict(geometry) if geometry else None,
        )
        catalog = name + CATALOG_SUFFIX
        if not self.backend.collection_exists(catalog):
            self.backend.create_collection(
                catalog, [VectorSpec("_", 1, multivector=False, hnsw_m=0)]
            )
        self._create_points(name, info)
        self.backend.create_payload_index(catalog, "kind", "keyword")
        for key, kind in filterable.items():
            self.backend.create_payload_index(catalog, f"metadata.{key}", kind)
        # Written last: a collection without this record was not created completely.
        self._write_schema(info)
        return info

    def _create_points(self, name: str, info: CollectionInfo) -> None:
        """The collection holding the pages, with ``info``'s vectors and payload indexes."""
        # `original` is most of the disk and only reranks: 2 bytes an element by default
        # (BENCHMARKS.md compares). The first stage is the only graph.
        vectors = [
            VectorSpec("original", info.dim, hnsw_m=0, on_disk=True, datatype=info.original_dtype)
        ]
        if info.first_stage == "fde":
            size = self._muvera(info).size
            vectors.append(
                VectorSpec(
                    "fde",
                    size,
                    multivector=False,
                    hnsw_m=self.hnsw_m,
                    ef_construct=self.hnsw_ef_construct,
                    on_disk=True,  # rescoring reads a few hundred; the graph walks the codes
                    datatype="float16",
                    binary=self.fde_binary,
                )
            )
            vectors += [
                VectorSpec(p, info.dim, hnsw_m=0, datatype=self.pooled_dtype) for p in info.pooling
            ]
        else:
            vectors += [
                VectorSpec(p, info.dim, hnsw_m=self.hnsw_m, ef_construct=self.hnsw_ef_construct)
                for p in info.pooling
            ]
        if info.text:
            vectors.append(VectorSpec("bm25", 0, multivector=False, sparse=True))
        self.backend.create_collection(name, vectors)
        for key, kind in [("doc_id", "keyword"), ("source", "keyword"), ("page", "integer")]:
            self.backend.create_payload_index(name, key, kind)
        for key, kind in info.filterable.items():
            self.backend.create_payload_index(name, f"metadata.{key}", kind)

    def _write_schema(self, info: CollectionInfo) -> None:
        payload = {"kind": "collection", **asdict(info)}
        self.backend.upsert(
            info.name + CATALOG_SUFFIX, [PointData(_COLLECTION_POINT, _DUMMY, payload)]
        )
        with self._lock:
            self._collections[info.name] = info

    def _muvera(self, info: CollectionInfo) -> Muvera:
        return _muvera(info.dim, FdeParams(**(info.fde or {})))

    def ensure_collection_for(self, name: str, settings: Settings, model: Model) -> CollectionInfo:
        """``ensure_collection`` with the schema the settings give new collections, for
        ``model`` (a loaded encoder): its identity, family, geometry and vector size."""
        return self.ensure_collection(
            name,
            model=model.identity.ref,
            model_fingerprint=model.identity.fingerprint,
            max_visual_tokens=settings.max_visual_tokens,
            dim=model.dim,
            pooling=settings.pooling_vectors,
            family=model.family.name,
            geometry=model.family.params(),
        )

    def record_geometry(self, name: str, geometry: dict[str, int]) -> CollectionInfo:
        """Record the geometry of the model that fills collection ``name`` (one made empty,
        by ``colqwen collections create``, records it with its first pages)."""
        info = replace(self.collection(name), geometry=dict(geometry))
        self._write_schema(info)
        return info

    def ensure_collection(self, name: str, **schema) -> CollectionInfo:
        """The collection ``name``, created with ``schema`` if it does not exist yet."""
        try:
            return self.collection(name)
        except NotFound:
            return self.create_collection(name, **schema)

    def collection(self, name: str) -> CollectionInfo:
        with self._lock:
            cached = self._collections.get(name)
        if cached is not None:
            return cached
        _check_name(name)
        catalog = name + CATALOG_SUFFIX
        if not self.backend.collection_exists(catalog):
            known = [c.name for c in self.collections()]
            raise NotFound(
                f"collection '{name}' does not exist yet: ingest documents into it first "
                "(`colqwen ingest PATH`, or upload them to POST /v1/documents)"
                + (f"; existing collections: {', '.join(known)}" if known else "")
            )
        records = self.backend.retrieve(catalog, [_COLLECTION_POINT])
        if not records:
            raise NotFound(
                f"collection '{name}' was not created completely: `colqwen collections drop "
                f"{name}` and retry (ingesting into it creates it again)"
            )
        payload = {k: v for k, v in records[0].payload.items() if k != "kind"}
        payload.setdefault("unit_pooled", False)  # recorded since pooled vectors are unit-length
        info = CollectionInfo(**{**payload, "pooling": tuple(payload["pooling"])})
        if not self.backend.collection_exists(info.points_collection):
            raise NotFound(f"collection '{name}' was not created completely; drop it and retry")
        with self._lock:
            self._collections[name] = info
        return info

    def _points(self, collection: str) -> str:
        """The Qdrant collection holding the pages of ``collection``."""
        return self.collection(collection).points_collection

    def collections(self) -> list[CollectionInfo]:
        names = [
            n.removesuffix(CATALOG_SUFFIX)
            for n in self.backend.list_collections()
            if n.endswith(CATALOG_SUFFIX)
        ]
        out = []
        for name in names:
            try:
                out.append(self.collection(name))
            except (NotFound, InvalidInput):
                continue  # not one of ours
        return out

    def has_collection(self, name: str) -> bool:
        """Whether collection ``name`` exists, or what a creation cut short left of one."""
        return self.backend.collection_exists(name + CATALOG_SUFFIX)

    def drop_collection(self, name: str) -> None:
        """Delete a collection, or what a creation cut short left of one."""
        if not self.has_collection(name):
            names = [c.name for c in self.collections()]
            others = f"; the collections are: {', '.join(names)}" if names else ""
            raise NotFound(f"collection '{name}' does not exist: nothing to drop{others}")
        if self._incomplete(name):
            self._drop_shards(name)
            return
        info = self.collection(name)
        self._drop_shards(name, info.points_collection)

    def _drop_shards(self, name: str, points: str | None = None) -> None:
        with self._lock:
            self._collections.pop(name, None)
        for shard in {points or name, name, name + UPGRADED_SUFFIX, name + TEXT_SUFFIX}:
            if self.backend.collection_exists(shard):
                self.backend.delete_collection(shard)
        if self.backend.collection_exists(name + CATALOG_SUFFIX):
            self.backend.delete_collection(name + CATALOG_SUFFIX)

    def _incomplete(self, name: str) -> bool:
        """Whether ``name`` has a catalog without its schema record: a creation cut short."""
        catalog = name + CATALOG_SUFFIX
        if not self.backend.collection_exists(catalog):
            return False
        return not self.backend.retrieve(catalog, [_COLLECTION_POINT])

    def upgrade_collection(
        self,
        name: str,
        *,
        progress: Callable[[int, int], None] | None = None,
        batch: int = 64,
        page_text: Callable[[str, int], str] | None = None,
    ) -> CollectionInfo:
        """Give a collection made before FDEs the FDE first stage, from its stored vectors; one
        made with SimHash buckets the clustered middle stage (50 pages reranked instead of 150
        at the same recall); and with ``page_text(doc_id, page)`` one made before pages kept
        their text its text and BM25 vectors (the text and hybrid modes).

        Copies every page into a new points collection with its FDE and clustered vectors
        computed from the stored ``original`` (no re-embedding: the schema of new collections,
        built on the CPU), then switches the schema record to it and drops the old points.
        Searches keep working on the old points until the switch. Resumable: pages already
        copied are skipped. Stop ingesting into the collection while it runs.
        ``progress(done, total)`` after each batch.
        """
        info = self.collection(name)
        add_text = page_text is not None and not info.text
        repool = info.first_stage == "fde" and info.pooling[:1] == ("buckets",)
        if info.first_stage == "fde" and not add_text and not repool:
            for stale in {name, name + UPGRADED_SUFFIX} - {info.points_collection}:
                if self.backend.collection_exists(stale):
                    self.backend.delete_collection(stale)  # stopped between switch and drop
            return info
        target = name + (
            TEXT_SUFFIX if info.points_collection.endswith(UPGRADED_SUFFIX) else UPGRADED_SUFFIX
        )
        new = replace(
            info,
            first_stage="fde",
            fde=info.fde if info.first_stage == "fde" else self.fde.to_dict(),
            points=target,
            pooling=("clusters",),
            text=info.text or add_text,
        )
        if not self.backend.collection_exists(target):
            self._create_points(target, new)
        source, encoder = info.points_collection, self._muvera(new)
        wanted = ["original", "bm25"] if info.text else ["original"]
        total, done = self.backend.count(source), self.backend.count(target)
        if progress:
            progress(done, total)
        offset = None
        while True:
            records, offset = self.backend.scroll(source, None, batch, offset, vectors=wanted)
            copied = {r.id for r in self.backend.retrieve(target, [r.id for r in records])}
            points = []
            for r in records:
                if r.id in copied or not r.vectors:
                    continue
                original = r.vectors["original"]
                vectors: dict = {
                    "original": original,
                    "fde": encoder.encode_document(original),
                    "clusters": pool_clusters(original),
                }
                payload = r.payload
                if add_text:
                    text = clean(page_text(payload["doc_id"], int(payload["page"])))
                    payload = {**payload, "text": text}
                    if (bm25 := text_vector(text)) is not None:
                        vectors["bm25"] = bm25
                elif "bm25" in r.vectors:
                    vectors["bm25"] = r.vectors["bm25"]
                points.append(PointData(r.id, vectors, payload))
            if points:
                self.backend.upsert(target, points)
                done += len(points)
                if progress:
                    progress(done, total)
            if offset is None:
                break
        self.backend.optimize(target)
        self._write_schema(new)  # the switch: from here on the pages are read from `target`
        self.backend.delete_collection(source)
        return new

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
            payload = {"kind": "document", **asdict(doc)}
            points.append(PointData(_document_point_id(doc.doc_id), _DUMMY, payload))
        if points:
            self.backend.upsert(collection + CATALOG_SUFFIX, points)
        return docs

    def document(self, collection: str, doc_id: str) -> DocumentRecord:
        self.collection(collection)
        records = self.backend.retrieve(collection + CATALOG_SUFFIX, [_document_point_id(doc_id)])
        if not records:
            raise NotFound(f"document '{doc_id}' is not in collection '{collection}'")
        return _document(records[0])

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
        return sorted((_document(r) for r in records), key=lambda d: (d.created_at, d.name))

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
        return self.backend.prepare(self._point(info, page, created_at or now()))

    def write_pages(self, collection: str, prepared: list[Any]) -> None:
        """Store pages that ``prepare_page`` made (batched, waited on: searchable on return,
        durable once ``flush`` returns, ``Backend.write``). Raises ``StoreError`` if a write
        fails."""
        name = self.collection(collection).points_collection
        for start in range(0, len(prepared), self.write_batch):
            self.backend.write(name, prepared[start : start + self.write_batch])

    def _point(self, info: CollectionInfo, page: PageRecord, created_at: str) -> PointData:
        emb = page.embedding
        if page.derived is not None and set(page.derived) == set(vector_names(info)) - {"original"}:
            vectors = {"original": emb.multivector, **page.derived}
        else:  # not computed beforehand (or for another schema): computed here
            vectors = page_vectors(info, emb)
        rows, cols = emb.grid
        payload = {
            "doc_id": page.doc_id,
            "source": page.source,
            "page": page.page_number,
            "page_count": page.page_count,
            "page_width_pt": page.size_pt[0],
            "page_height_pt": page.size_pt[1],
            "rotation": page.rotation,
            "width_px": page.pixel_size[0],
            "height_px": page.pixel_size[1],
            "grid_rows": rows,
            "grid_cols": cols,
            "n_tokens": emb.n_tokens,
            "visual_runs": [list(r) for r in emb.visual_runs],
            "model": info.model,
            "max_visual_tokens": info.max_visual_tokens,
            "created_at": created_at,
            "metadata": page.metadata,
        }
        if info.text:
            payload["text"] = clean(page.text)
            if (bm25 := text_vector(payload["text"])) is not None:
                vectors["bm25"] = bm25
        return PointData(page_point_id(page.doc_id, page.page_number), vectors, payload)

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

        ``two_stage``: candidates from the first stage (FDE graph, then the pooled vectors if
        stored; or the pooled vectors' graph in collections made before FDEs), reranked with
        ``original``; ``exact``: MaxSim over ``original`` for every page that passes the filter;
        ``pooled``: the first stage alone. With neither FDEs nor pooled vectors every mode is
        ``exact``. ``text``: BM25 alone; ``hybrid``: the ``two_stage`` ranking and the BM25
        ranking fused by reciprocal rank (scores are then fused ranks, not MaxSim), filters
        applying to both. Every stage runs inside Qdrant: no vector leaves it.

        ``timings`` receives milliseconds: ``encode`` (the query's FDE), each engine stage by the
        vector it scores (one figure for the whole query on a server) and ``total``.
        """
        start = time.perf_counter()
        info = self.collection(collection)
        if top_k < 1:
            raise InvalidInput("top_k must be at least 1")
        if mode not in SEARCH_MODES:
            raise InvalidInput(f"unknown search mode '{mode}': use {', '.join(SEARCH_MODES)}")
        if query is None and mode != "text":
            raise InvalidInput(f"search mode '{mode}' needs the query's vectors")
        if query is not None and query.ndim != 2:
            raise InvalidInput(f"query must be (n_tokens, {info.dim}); got {query.shape}")
        if query is not None and query.shape[1] != info.dim:
            raise Conflict(
                f"collection '{collection}' holds {info.dim}-d token vectors from {info.model}; "
                f"this query has {query.shape[1]}-d ones: search it with that model"
            )
        depths = self.depths(info)
        candidates = max(top_k, prefetch or depths.prefetch)
        points = info.points_collection
        engine: dict[str, float] = {}
        words = None
        if mode in ("hybrid", "text"):
            if not info.text:
                raise InvalidInput(
                    f"collection '{collection}' was made before pages kept their text: mode "
                    f"'{mode}' needs it (search it visually, or ingest into a new collection)"
                )
            words = text_query_vector(text or "")
        if mode == "text":
            if words is None:
                return []  # nothing in the query that BM25 indexes (only stop words, say)
            records = self.backend.query(
                points, words, using="bm25", limit=top_k, where=where, timings=engine
            )
        elif mode == "hybrid" and words is not None:
            visual = Prefetch(
                "original",
                candidates,
                vector=query,
                prefetch=tuple(self._candidate_stages(info, query, candidates, depths, engine)),
            )
            textual = Prefetch("bm25", candidates, vector=words)
            records = self.backend.query(
                points,
                None,
                using=None,
                limit=top_k,
                where=where,
                prefetch=[visual, textual],
                fusion="rrf",
                timings=engine,
            )
        elif mode == "exact" or (info.first_stage == "rows" and not info.pooling):
            records = self.backend.query(
                points,
                query,
                using="original",
                limit=top_k,
                where=where,
                exact=True,
                timings=engine,
            )
        elif mode == "pooled" and info.first_stage == "fde":
            fde = self._query_fde(info, query, engine)
            records = self.backend.query(
                points,
                fde,
                using="fde",
                limit=top_k,
                where=where,
                # Scores as FDE dot products, as a server's exact scan gives them: twice its few
                # hits by the codes, rescored from the stored FDEs, whatever two_stage does.
                oversampling=max(depths.oversampling, 2.0),
                timings=engine,
            )
        elif mode == "pooled":
            records = self.backend.query(
                points,
                query,
                using=info.pooling[0],
                limit=top_k,
                where=where,
                hnsw_ef=candidates,
                timings=engine,
            )
        else:
            records = self.backend.query(
                points,
                query,
                using="original",
                limit=top_k,
                where=where,
                prefetch=self._candidate_stages(info, query, candidates, depths, engine),
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

    def _query_fde(
        self, info: CollectionInfo, query: np.ndarray, timings: dict[str, float]
    ) -> np.ndarray:
        start = time.perf_counter()
        fde = self._muvera(info).encode_query(query)
        timings["encode"] = (time.perf_counter() - start) * 1000
        return fde

    def _candidate_stages(
        self,
        info: CollectionInfo,
        query: np.ndarray,
        candidates: int,
        depths: Depths,
        timings: dict[str, float],
    ) -> list[Prefetch]:
        """The stages that find the ``candidates`` pages ``original`` reranks: FDE candidates
        narrowed by the pooled vectors (if stored), or, in collections made before FDEs, the
        pooled vectors' graph."""
        if info.first_stage != "fde":
            return [Prefetch(p, candidates, hnsw_ef=candidates) for p in info.pooling]
        fde = self._query_fde(info, query, timings)
        if not info.pooling:
            return [Prefetch("fde", candidates, vector=fde, oversampling=depths.oversampling)]
        first = Prefetch(
            "fde",
            max(candidates, depths.first_stage_limit),
            vector=fde,
            oversampling=depths.oversampling,
        )
        return [Prefetch(info.pooling[0], candidates, prefetch=(first,))]


def page_vectors(info: CollectionInfo, emb: PageEmbedding) -> dict[str, np.ndarray]:
    """Every named vector of a page in ``info``'s schema: the token vectors, the FDE, the
    pooled vectors."""
    return {"original": emb.multivector, **derived_vectors(info, emb)}


def vector_names(info: CollectionInfo) -> list[str]:
    """The names of a page's dense vectors in ``info``'s schema (``page_vectors``'s keys)."""
    return ["original", *(["fde"] if info.first_stage == "fde" else []), *info.pooling]


def derived_vectors(info: CollectionInfo, emb: PageEmbedding) -> dict[str, np.ndarray]:
    """A page's vectors derived from its token vectors in ``info``'s schema: the FDE and the
    pooled vectors. The costly part of storing a page (milliseconds of CPU); the ingestion
    pipeline has each encoder process compute them beside its device."""
    if emb.multivector.shape[1] != info.dim:
        got = emb.multivector.shape[1]
        raise Conflict(f"collection '{info.name}' holds {info.dim}-d vectors; got {got}-d")
    vectors = {}
    if info.first_stage == "fde":
        fde = _muvera(info.dim, FdeParams(**(info.fde or {})))
        vectors["fde"] = fde.encode_document(emb.multivector)
    for name in info.pooling:
        if name == "clusters":
            vectors[name] = pool_clusters(emb.multivector)
        elif name == "buckets":
            vectors[name] = pool_buckets(emb.multivector)
        else:
            pool = pool_rows if name == "rows" else pool_cols
            vectors[name] = pool(emb.visual, emb.special, normalize=info.unit_pooled)
    return vectors


@functools.lru_cache(maxsize=8)
def _muvera(dim: int, params: FdeParams) -> Muvera:
    return Muvera(dim, params)


def _document(record: Record) -> DocumentRecord:
    return DocumentRecord(**{k: v for k, v in record.payload.items() if k != "kind"})


def _check_name(name: str, *, new: bool = False) -> None:
    """``new``: names of new collections may not contain '__', which marks our own collections
    (catalogs, upgraded pages); older collections may."""
    if not _NAME.fullmatch(name) or CATALOG_SUFFIX in name or (new and "__" in name):
        raise InvalidInput(
            f"invalid collection name '{name}': 1-64 letters, digits, '-' or '_', without '__'"
        )


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
