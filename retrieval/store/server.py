"""Server backend: a Qdrant server or cluster through ``qdrant-client`` (gRPC preferred).

``url=":memory:"`` runs qdrant-client's in-process local mode, which takes the same calls as a
server; the tests use it to exercise this code path without a server.
"""

from __future__ import annotations

import threading
import time
from typing import Literal

import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from retrieval.errors import NotFound, StoreError
from retrieval.store.backend import RRF_K
from retrieval.store.model import (
    FieldKind,
    Filter,
    Match,
    MatchAny,
    PointData,
    Prefetch,
    Range,
    Record,
    Sparse,
    VectorSpec,
)

REQUEST_BUDGET_BYTES = 16 * 1024 * 1024  # half of Qdrant's default 32 MB REST limit
_BINARY = {
    "1": models.BinaryQuantizationEncoding.ONE_BIT,
    "1.5": models.BinaryQuantizationEncoding.ONE_AND_HALF_BITS,
    "2": models.BinaryQuantizationEncoding.TWO_BITS,
}
_SCHEMA = {
    "keyword": models.PayloadSchemaType.KEYWORD,
    "integer": models.PayloadSchemaType.INTEGER,
    "float": models.PayloadSchemaType.FLOAT,
    "bool": models.PayloadSchemaType.BOOL,
    "datetime": models.PayloadSchemaType.DATETIME,
}


class ServerBackend:
    kind = "server"

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        prefer_grpc: bool = True,
        shard_number: int | None = None,
        replication_factor: int | None = None,
        write_consistency_factor: int | None = None,
        timeout_s: int = 60,
    ) -> None:
        if url == ":memory:":
            self.client = QdrantClient(location=":memory:")
            self._grpc = False
        else:
            self.client = QdrantClient(
                url=url, api_key=api_key, prefer_grpc=prefer_grpc, timeout=timeout_s
            )
            self._grpc = prefer_grpc
        self.url = url
        self._cluster = {
            "shard_number": shard_number,
            "replication_factor": replication_factor,
            "write_consistency_factor": write_consistency_factor,
        }

    def collection_exists(self, name: str) -> bool:
        return _call(self.client.collection_exists, name)

    def list_collections(self) -> list[str]:
        return sorted(c.name for c in _call(self.client.get_collections).collections)

    def create_collection(self, name: str, vectors: list[VectorSpec]) -> None:
        _call(
            self.client.create_collection,
            name,
            vectors_config={v.name: _vector_params(v) for v in vectors if not v.sparse},
            sparse_vectors_config={
                v.name: models.SparseVectorParams(modifier=models.Modifier.IDF)
                for v in vectors
                if v.sparse
            }
            or None,
            **{k: v for k, v in self._cluster.items() if v is not None},
        )

    def delete_collection(self, name: str) -> None:
        _call(self.client.delete_collection, name)

    def create_payload_index(self, name: str, key: str, kind: FieldKind) -> None:
        _call(self.client.create_payload_index, name, key, _SCHEMA[kind], wait=True)

    def upsert(self, name: str, points: list[PointData]) -> None:
        self.write(name, [self.prepare(p) for p in points])

    def prepare(self, point: PointData) -> tuple[models.PointStruct, int]:
        """(qdrant-client's point, its approximate request size in bytes)."""
        bytes_per_float = 4 if self._grpc else 12  # protobuf vs JSON text
        size = sum(v.size for v in point.vectors.values()) * bytes_per_float + 4096
        vectors = {k: _vector(v) for k, v in point.vectors.items()}
        return models.PointStruct(id=point.id, vector=vectors, payload=point.payload), size

    def write(self, name: str, prepared: list[tuple[models.PointStruct, int]]) -> None:
        """In requests of at most ``REQUEST_BUDGET_BYTES``."""
        batch: list[models.PointStruct] = []
        size = 0
        for point, n in prepared:
            if batch and size + n > REQUEST_BUDGET_BYTES:
                _call(self.client.upsert, name, batch, wait=True)
                batch, size = [], 0
            batch.append(point)
            size += n
        if batch:
            _call(self.client.upsert, name, batch, wait=True)

    def delete(self, name: str, where: Filter) -> None:
        selector = models.FilterSelector(filter=_filter(where))
        _call(self.client.delete, name, selector, wait=True)

    def query(
        self,
        name: str,
        vector: np.ndarray | Sparse | None,
        *,
        using: str | None,
        limit: int,
        where: Filter | None = None,
        prefetch: list[Prefetch] | None = None,
        exact: bool = False,
        hnsw_ef: int | None = None,
        oversampling: float | None = None,
        fusion: Literal["rrf"] | None = None,
        timings: dict[str, float] | None = None,
    ) -> list[Record]:
        start = time.perf_counter()
        q = None if vector is None else _vector(vector)
        flt = _filter(where)

        def stage(p: Prefetch, outer) -> models.Prefetch:  # a stage's vector, else its outer one's
            own = outer if p.vector is None else _vector(p.vector)
            return models.Prefetch(
                query=own,
                using=p.using,
                limit=p.limit,
                prefetch=[stage(inner, own) for inner in p.prefetch] or None,
                filter=flt,
                params=_params(p.hnsw_ef, p.oversampling),
            )

        response = _call(
            self.client.query_points,
            name,
            query=models.RrfQuery(rrf=models.Rrf(k=RRF_K)) if fusion else q,
            using=None if fusion else using,
            prefetch=[stage(p, q) for p in prefetch or []] or None,
            query_filter=flt,
            search_params=(
                models.SearchParams(exact=True) if exact else _params(hnsw_ef, oversampling)
            ),
            limit=limit,
            with_payload=True,
        )
        if timings is not None:  # every stage runs inside the server: one figure for them all
            timings[using or "fusion"] = (time.perf_counter() - start) * 1000
        return [Record(str(p.id), p.payload or {}, p.score) for p in response.points]

    def scroll(
        self,
        name: str,
        where: Filter | None,
        limit: int,
        offset: str | None = None,
        vectors: list[str] | None = None,
    ) -> tuple[list[Record], str | None]:
        records, next_offset = _call(
            self.client.scroll,
            name,
            _filter(where),
            limit,
            offset=offset,
            with_payload=True,
            with_vectors=list(vectors) if vectors else False,
        )
        return (
            [Record(str(r.id), r.payload or {}, None, _vectors(r.vector)) for r in records],
            None if next_offset is None else str(next_offset),
        )

    def retrieve(self, name: str, ids: list[str]) -> list[Record]:
        records = _call(self.client.retrieve, name, ids, with_payload=True)
        return [Record(str(r.id), r.payload or {}) for r in records]

    def count(self, name: str, where: Filter | None = None) -> int:
        return _call(self.client.count, name, _filter(where), exact=True).count

    def flush(self, name: str) -> None:
        """Writes are acknowledged with wait=True; nothing to do."""

    def optimize(self, name: str) -> None:
        """The server optimizes in the background."""

    def warm_up(
        self, name: str, *, cold: tuple[str, ...] = (), stop: threading.Event | None = None
    ) -> None:
        """Nothing: the server keeps its own caches warm."""

    def close(self) -> None:
        self.client.close()


def _call(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except UnexpectedResponse as exc:
        if exc.status_code == 404:
            raise NotFound(f"Qdrant: {exc.content.decode(errors='replace')[:300]}") from None
        raise StoreError(f"Qdrant server error {exc.status_code}: {exc.reason_phrase}") from exc
    except ResponseHandlingException as exc:
        raise StoreError(f"cannot reach the Qdrant server: {exc}") from exc
    except ValueError as exc:  # local mode reports missing collections as ValueError
        if "not found" in str(exc).lower():
            raise NotFound(f"Qdrant: {exc}") from None
        raise
    except Exception as exc:  # grpc.RpcError and friends
        if type(exc).__module__.startswith("grpc"):
            raise StoreError(f"Qdrant gRPC error: {exc}") from exc
        raise


def _params(hnsw_ef: int | None, oversampling: float | None) -> models.SearchParams | None:
    if hnsw_ef is None and oversampling is None:
        return None
    quantization = None
    if oversampling == 0:  # the binary codes' own ranking: no stored vector read to rescore it
        quantization = models.QuantizationSearchParams(rescore=False)
    elif oversampling is not None:
        quantization = models.QuantizationSearchParams(rescore=True, oversampling=oversampling)
    return models.SearchParams(hnsw_ef=hnsw_ef, quantization=quantization)


def _vectors(vector) -> dict[str, np.ndarray | Sparse] | None:
    if not isinstance(vector, dict) or not vector:
        return None
    return {
        k: Sparse(tuple(v.indices), tuple(v.values))
        if isinstance(v, models.SparseVector)
        else np.asarray(v, dtype=np.float32)
        for k, v in vector.items()
    }


def _vector(v: np.ndarray | Sparse):
    if isinstance(v, Sparse):
        return models.SparseVector(indices=list(v.indices), values=list(v.values))
    return v.tolist()


def _vector_params(spec: VectorSpec) -> models.VectorParams:
    return models.VectorParams(
        size=spec.size,
        distance=models.Distance.DOT,
        multivector_config=(
            models.MultiVectorConfig(comparator=models.MultiVectorComparator.MAX_SIM)
            if spec.multivector
            else None
        ),
        datatype=models.Datatype(spec.datatype),
        hnsw_config=models.HnswConfigDiff(m=spec.hnsw_m, ef_construct=spec.ef_construct),
        on_disk=spec.on_disk,
        quantization_config=(
            models.BinaryQuantization(
                binary=models.BinaryQuantizationConfig(
                    always_ram=True,
                    encoding=_BINARY[spec.binary],
                    query_encoding=models.BinaryQuantizationQueryEncoding.SCALAR8BITS,
                )
            )
            if spec.binary
            else None
        ),
    )


def _filter(where: Filter | None) -> models.Filter | None:
    if where is None or not where.must:
        return None
    conditions: list[models.Condition] = []
    for c in where.must:
        if isinstance(c, Match):
            conditions.append(
                models.FieldCondition(key=c.key, match=models.MatchValue(value=c.value))
            )
        elif isinstance(c, MatchAny):
            conditions.append(
                models.FieldCondition(key=c.key, match=models.MatchAny(any=list(c.values)))
            )
        elif isinstance(c, Range):
            rng = models.Range(gt=c.gt, gte=c.gte, lt=c.lt, lte=c.lte)
            conditions.append(models.FieldCondition(key=c.key, range=rng))
        else:  # pragma: no cover
            raise TypeError(c)
    return models.Filter(must=conditions)
