"""Upgrading a collection made by an older version to the schema new collections get.

Collections made before FDEs find candidates with an HNSW graph over ``rows``
(``first_stage="rows"``); those made with SimHash ``buckets`` narrow FDE candidates less well
than ``clusters``; those made before pages kept their text cannot be searched by ``text`` or
``hybrid``. ``upgrade_collection`` copies every page into a new points collection (``C__v2``,
or ``C__v3`` when ``C__v2`` holds the pages already) with what it lacks computed from its
stored ``original`` vectors (no re-embedding, on the CPU), then switches the schema record to
it: from then on the pages are read from there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from retrieval.pooling import pool_clusters
from retrieval.store.model import PointData
from retrieval.store.schema import TEXT_SUFFIX, UPGRADED_SUFFIX, muvera_of
from retrieval.text import clean
from retrieval.text import document_vector as text_vector
from retrieval.types import CollectionInfo

if TYPE_CHECKING:
    from retrieval.store.pages import PageStore


def upgrade_collection(
    store: PageStore,
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

    Searches keep working on the old points until the switch. Resumable: pages already
    copied are skipped. Stop ingesting into the collection while it runs.
    ``progress(done, total)`` after each batch.
    """
    backend = store.backend
    info = store.collection(name)
    add_text = page_text is not None and not info.text
    repool = info.first_stage == "fde" and info.pooling[:1] == ("buckets",)
    if info.first_stage == "fde" and not add_text and not repool:
        for stale in {name, name + UPGRADED_SUFFIX} - {info.points_collection}:
            if backend.collection_exists(stale):
                backend.delete_collection(stale)  # stopped between switch and drop
        return info
    target = name + (
        TEXT_SUFFIX if info.points_collection.endswith(UPGRADED_SUFFIX) else UPGRADED_SUFFIX
    )
    new = replace(
        info,
        first_stage="fde",
        fde=info.fde if info.first_stage == "fde" else store.fde.to_dict(),
        points=target,
        pooling=("clusters",),
        text=info.text or add_text,
    )
    if not backend.collection_exists(target):
        store.create_points(target, new)
    source, encoder = info.points_collection, muvera_of(new)
    wanted = ["original", "bm25"] if info.text else ["original"]
    total, done = backend.count(source), backend.count(target)
    if progress:
        progress(done, total)
    offset = None
    while True:
        records, offset = backend.scroll(source, None, batch, offset, vectors=wanted)
        copied = {r.id for r in backend.retrieve(target, [r.id for r in records])}
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
            backend.upsert(target, points)
            done += len(points)
            if progress:
                progress(done, total)
        if offset is None:
            break
    backend.optimize(target)
    store.write_schema(new)  # the switch: from here on the pages are read from `target`
    backend.delete_collection(source)
    return new
