"""A collection's layout in Qdrant: its names, point ids, vectors and payloads.

Collection ``C`` is three Qdrant collections at most (see README, "Storage"):

- ``C`` (or ``C__v2``, ``C__v3`` after an upgrade, ``CollectionInfo.points``): one point per
  page, id = uuid5(doc_id, page). Named vectors: ``original`` (every token, float16 by default,
  no HNSW graph, on disk: the final rerank), ``fde`` (one MUVERA encoding a page, HNSW over its
  binary-quantized codes held in RAM: finds the candidates), and pooled multivectors,
  ``clusters`` by default (or ``buckets``, ``rows``, ``cols``; no graph: they narrow the FDE
  candidates cheaply before ``original`` reranks), and ``bm25`` (sparse, from the page's text).
  Payload: provenance, model, grid, text, the caller's ``metadata``.
- ``C__catalog``: one point per document (status, page count, metadata) plus one holding the
  collection's own schema (``CollectionInfo``), so a server deployment keeps everything in the
  cluster. The schema point is written last: a catalog without it is a creation cut short.

Everything here is pure: what to write for a page, or for a schema, given the schema.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import uuid
from dataclasses import asdict
from typing import TYPE_CHECKING

import numpy as np

from retrieval.errors import Conflict, InvalidInput
from retrieval.muvera import FdeParams, Muvera
from retrieval.pooling import pool_buckets, pool_clusters, pool_cols, pool_rows
from retrieval.store.model import BinaryBits, PointData, Record, VectorSpec
from retrieval.text import clean
from retrieval.text import document_vector as text_vector
from retrieval.types import CollectionInfo, Datatype, DocumentRecord, PageEmbedding, PageRecord

if TYPE_CHECKING:
    from retrieval.store.backend import Backend

POOLINGS = ("rows", "cols", "buckets", "clusters")
FIELD_KINDS = ("keyword", "integer", "float", "bool", "datetime")
CATALOG_SUFFIX = "__catalog"
UPGRADED_SUFFIX = "__v2"  # the pages of an upgraded collection
TEXT_SUFFIX = "__v3"  # the pages of a collection upgraded (again) to keep its text
_NAMESPACE = uuid.UUID("6f1c2f4e-8a7b-4c1e-9e55-2b0c7d3a9f10")
COLLECTION_POINT = str(uuid.uuid5(_NAMESPACE, "collection"))  # the schema, in the catalog
DUMMY = {"_": np.ones((1,), dtype=np.float32)}  # catalog points need a vector; it means nothing
CATALOG_VECTORS = [VectorSpec("_", 1, multivector=False, hnsw_m=0)]
# A collection's name: what the API declares (pydantic's patterns, like fullmatch, end at the
# end: "$" in Python would also match before a trailing newline).
COLLECTION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def check_name(name: str, *, new: bool = False) -> None:
    """``new``: names of new collections may not contain '__', which marks our own collections
    (catalogs, upgraded pages); older collections may."""
    if not _NAME.fullmatch(name) or CATALOG_SUFFIX in name or (new and "__" in name):
        raise InvalidInput(
            f"invalid collection name '{name}': 1-64 letters, digits, '-' or '_', without '__'"
        )


def page_point_id(doc_id: str, page_number: int) -> str:
    """Deterministic: re-ingesting a page overwrites it."""
    return str(uuid.uuid5(_NAMESPACE, f"page:{doc_id}:{page_number}"))


def document_point_id(doc_id: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"document:{doc_id}"))


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# --- schema records --------------------------------------------------------------------------


def schema_point(info: CollectionInfo) -> PointData:
    """The catalog point that records ``info``."""
    return PointData(COLLECTION_POINT, DUMMY, {"kind": "collection", **asdict(info)})


def schema_of(record: Record) -> CollectionInfo:
    """The ``CollectionInfo`` a schema point records (older records lack newer fields: those
    take the values that describe how the older collections were made)."""
    payload = {k: v for k, v in record.payload.items() if k != "kind"}
    payload.setdefault("unit_pooled", False)  # recorded since pooled vectors are unit-length
    return CollectionInfo(**{**payload, "pooling": tuple(payload["pooling"])})


def document_point(doc: DocumentRecord) -> PointData:
    return PointData(document_point_id(doc.doc_id), DUMMY, {"kind": "document", **asdict(doc)})


def document_of(record: Record) -> DocumentRecord:
    return DocumentRecord(**{k: v for k, v in record.payload.items() if k != "kind"})


# --- the points collection -------------------------------------------------------------------


def create_points(
    backend: Backend,
    name: str,
    info: CollectionInfo,
    *,
    hnsw_m: int,
    hnsw_ef_construct: int,
    fde_binary: BinaryBits | None,
    pooled_dtype: Datatype,
) -> None:
    """The Qdrant collection ``name`` holding the pages, with ``info``'s vectors and payload
    indexes."""
    # `original` is most of the disk and only reranks: 2 bytes an element by default
    # (BENCHMARKS.md compares). The first stage is the only graph.
    vectors = [
        VectorSpec("original", info.dim, hnsw_m=0, on_disk=True, datatype=info.original_dtype)
    ]
    if info.first_stage == "fde":
        vectors.append(
            VectorSpec(
                "fde",
                muvera_of(info).size,
                multivector=False,
                hnsw_m=hnsw_m,
                ef_construct=hnsw_ef_construct,
                on_disk=True,  # rescoring reads a few hundred; the graph walks the codes
                datatype="float16",
                binary=fde_binary,
            )
        )
        vectors += [VectorSpec(p, info.dim, hnsw_m=0, datatype=pooled_dtype) for p in info.pooling]
    else:
        vectors += [
            VectorSpec(p, info.dim, hnsw_m=hnsw_m, ef_construct=hnsw_ef_construct)
            for p in info.pooling
        ]
    if info.text:
        vectors.append(VectorSpec("bm25", 0, multivector=False, sparse=True))
    backend.create_collection(name, vectors)
    for key, kind in [("doc_id", "keyword"), ("source", "keyword"), ("page", "integer")]:
        backend.create_payload_index(name, key, kind)
    for key, kind in info.filterable.items():
        backend.create_payload_index(name, f"metadata.{key}", kind)


def page_point(info: CollectionInfo, page: PageRecord, created_at: str) -> PointData:
    """What a page is stored as in ``info``'s schema: its vectors (those it brings derived
    already, ``PageRecord.derived``, else computed here) and its payload."""
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
    if page.words:  # read by OCR: where each word is on the page
        payload["words"] = page.words
    if page.ocr_error:
        payload["ocr_error"] = page.ocr_error
    return PointData(page_point_id(page.doc_id, page.page_number), vectors, payload)


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
        vectors["fde"] = muvera_of(info).encode_document(emb.multivector)
    for name in info.pooling:
        if name == "clusters":
            vectors[name] = pool_clusters(emb.multivector)
        elif name == "buckets":
            vectors[name] = pool_buckets(emb.multivector)
        else:
            pool = pool_rows if name == "rows" else pool_cols
            vectors[name] = pool(emb.visual, emb.special, normalize=info.unit_pooled)
    return vectors


def muvera_of(info: CollectionInfo) -> Muvera:
    """The MUVERA encoder of ``info``'s FDEs (its recorded parameters)."""
    return _muvera(info.dim, FdeParams(**(info.fde or {})))


@functools.lru_cache(maxsize=8)
def _muvera(dim: int, params: FdeParams) -> Muvera:
    return Muvera(dim, params)
