"""Embedded backend: Qdrant's own engine in-process (``qdrant-edge-py``).

Each collection is one Edge shard directory under ``<data_dir>/qdrant/``. Only one process may
open the store: a lock file makes a second one fail at once with ``StoreLocked``.

Durability without a write-ahead log: shards are created without one (journaling a page's
vectors was two thirds of writing it, all under the GIL: 1.9 -> 0.7 ms a page). Every
operation but ``write`` flushes its shard before returning, so it survives a crash as a WAL
would have kept it; pages written with ``write`` are durable once ``flush`` returns (ingestion
flushes about once a second, then marks the documents those pages completed indexed). A crash
loses what was written since the last flush, never part of a point: a reopened shard holds each
point whole or not at all. Shards created with a WAL by older versions keep it.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Literal

import numpy as np
import qdrant_edge as qe

from retrieval.errors import ConfigurationError, NotFound, StoreError, StoreLocked
from retrieval.store import edge_convert as convert
from retrieval.store.backend import RRF_K
from retrieval.store.model import (
    FieldKind,
    Filter,
    PointData,
    Prefetch,
    Record,
    Sparse,
    VectorSpec,
)

# Unflushed writes are flushed once they reach this many floats (~650 pages): what a crash in
# the middle of a long document can lose, and the memory they hold until then.
FLUSH_FLOATS = 64_000_000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


class EdgeBackend:
    kind = "embedded"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.root / ".lock", "a+")  # noqa: SIM115 - held for our lifetime
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise StoreLocked(
                f"the embedded store at {self.root} is in use by another process (a running "
                "`colqwen serve`?). Stop it, or send files to it: `colqwen ingest --server URL`."
            ) from None
        self._shards: dict[str, qe.EdgeShard] = {}
        self._unflushed: dict[str, int] = {}  # floats written since the last flush
        self._write = threading.Lock()
        self._open = threading.Lock()
        self._closed = False

    # --- collections ---------------------------------------------------------------------------

    def _path(self, name: str) -> Path:
        if not _NAME.match(name):
            raise ConfigurationError(
                f"invalid collection name '{name}': use letters, digits, '-' and '_'"
            )
        return self.root / name

    def _shard(self, name: str) -> qe.EdgeShard:
        shard = self._shards.get(name)
        if shard is None:
            # One opener at a time: two threads loading the same shard would both try to take
            # its WAL lock, and the second would fail ("Can't init WAL: WouldBlock").
            with self._open:
                shard = self._shards.get(name)
                if shard is None:
                    if self._closed:  # a background warm-up outliving the store
                        raise StoreError("the embedded store is closed")
                    path = self._path(name)
                    if not path.is_dir():
                        raise NotFound(f"collection '{name}' does not exist")
                    shard = self._shards[name] = _call(qe.EdgeShard.load, str(path))
        return shard

    def collection_exists(self, name: str) -> bool:
        return name in self._shards or self._path(name).is_dir()

    def list_collections(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    def create_collection(self, name: str, vectors: list[VectorSpec]) -> None:
        path = self._path(name)
        config = qe.EdgeConfig(
            vectors={v.name: convert.vector_params(v) for v in vectors if not v.sparse},
            sparse_vectors={
                v.name: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)
                for v in vectors
                if v.sparse
            }
            or None,
            wal_enabled=False,  # durable by flushing (the module's docstring)
        )
        # Also the opener's lock: its folder exists before it is registered, and a reader that
        # saw the folder would load it and collide with the creator on the WAL lock. (Order:
        # _write, then _open, as in ``_update``.)
        with self._write, self._open:
            self._shards[name] = _call(qe.EdgeShard.create, str(path), config)

    def delete_collection(self, name: str) -> None:
        with self._write, self._open:
            shard = self._shards.pop(name, None)
            if shard is not None:
                shard.close()
            shutil.rmtree(self._path(name), ignore_errors=False)

    def create_payload_index(self, name: str, key: str, kind: FieldKind) -> None:
        self._update(
            name,
            qe.UpdateOperation.create_field_index(key, convert.PAYLOAD_SCHEMA[kind]),
            flush=True,
        )

    # --- points --------------------------------------------------------------------------------

    def upsert(self, name: str, points: list[PointData]) -> None:
        self.write(name, [self.prepare(p) for p in points])
        self.flush(name)

    def prepare(self, point: PointData) -> tuple[qe.Point, int]:
        """(qdrant-edge's point, its float count). Building it copies every vector into
        qdrant-edge value by value (``_point_vector``): about half of a page's store cost, all
        under the GIL."""
        vectors = {k: convert.point_vector(v) for k, v in point.vectors.items()}
        edge = qe.Point(point.id, vectors, point.payload)
        return edge, sum(v.size for v in point.vectors.values())

    def write(self, name: str, prepared: list[tuple[qe.Point, int]]) -> None:
        """Durable once ``flush`` returns (see the module's docstring)."""
        self._update(name, qe.UpdateOperation.upsert_points([point for point, _ in prepared]))
        floats = sum(n for _, n in prepared)
        self._unflushed[name] = self._unflushed.get(name, 0) + floats
        if self._unflushed[name] > FLUSH_FLOATS:
            self.flush(name)

    def delete(self, name: str, where: Filter) -> None:
        self._update(
            name, qe.UpdateOperation.delete_points_by_filter(convert.filter(where)), flush=True
        )

    def _update(self, name: str, operation, *, flush: bool = False) -> None:
        with self._write:
            shard = self._shard(name)
            _call(shard.update, operation)
            if flush:
                _call(shard.flush)
                self._unflushed[name] = 0

    def flush(self, name: str) -> None:
        with self._write:
            _call(self._shard(name).flush)
            self._unflushed[name] = 0

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
        """See ``Backend.query``. A chain of stages (each prefetch holding at most one) runs as
        one engine call per stage, each over the candidates of the stage before it: the same
        ranking as the nested prefetch, and the time of each stage in ``timings`` (ms, by the
        name of the vector it scores; the engine runs one stage at a time either way)."""
        chain = _chain(prefetch)
        if chain is not None and fusion is None and not exact:
            return self._query_chain(name, vector, using, limit, where, chain, timings)
        start = time.perf_counter()
        q = None if vector is None else convert.vector(vector)
        flt = convert.filter(where)

        def stage(p: Prefetch, outer) -> qe.Prefetch:  # a stage's vector, else its outer one's
            own = outer if p.vector is None else convert.vector(p.vector)
            return qe.Prefetch(
                limit=p.limit,
                query=qe.Query.Nearest(own, using=p.using),
                prefetches=[stage(inner, own) for inner in p.prefetch] or None,
                filter=flt,
                params=convert.params(p.hnsw_ef, p.oversampling),
            )

        request = qe.QueryRequest(
            limit=limit,
            query=qe.Fusion.Rrf(k=RRF_K) if fusion else qe.Query.Nearest(q, using=using),
            prefetches=[stage(p, q) for p in prefetch or []] or None,
            filter=flt,
            with_payload=True,
            params=qe.SearchParams(exact=True) if exact else convert.params(hnsw_ef, oversampling),
        )
        hits = _call(self._shard(name).query, request)
        if timings is not None:
            timings[using or "fusion"] = (time.perf_counter() - start) * 1000
        return [Record(str(h.id), h.payload or {}, h.score) for h in hits]

    def _query_chain(
        self,
        name: str,
        vector: np.ndarray | Sparse | None,
        using: str | None,
        limit: int,
        where: Filter | None,
        chain: list[Prefetch],
        timings: dict[str, float] | None,
    ) -> list[Record]:
        """Innermost stage first; each later stage scores only the ids the one before kept."""
        shard = self._shard(name)
        stages = [*chain, Prefetch(using or "", limit, vector)]
        vectors, own = [], None
        for p in reversed(stages):  # a stage's own vector, else its outer one's
            own = own if p.vector is None else convert.vector(p.vector)
            vectors.append(own)
        hits, ids = [], None
        for p, q in zip(stages, reversed(vectors), strict=True):
            start = time.perf_counter()
            request = qe.QueryRequest(
                limit=p.limit,
                query=qe.Query.Nearest(q, using=p.using),
                filter=convert.filter(where, ids),
                with_payload=p is stages[-1],
                params=convert.params(p.hnsw_ef, p.oversampling),
            )
            hits = _call(shard.query, request)
            if timings is not None:
                timings[p.using] = timings.get(p.using, 0.0) + (time.perf_counter() - start) * 1000
            if not hits:
                return []
            ids = [h.id for h in hits]
        return [Record(str(h.id), h.payload or {}, h.score) for h in hits]

    def scroll(
        self,
        name: str,
        where: Filter | None,
        limit: int,
        offset: str | None = None,
        vectors: list[str] | None = None,
    ) -> tuple[list[Record], str | None]:
        request = qe.ScrollRequest(
            offset=offset,
            limit=limit,
            filter=convert.filter(where),
            with_payload=True,
            with_vector=list(vectors) if vectors else False,
        )
        records, next_offset = _call(self._shard(name).scroll, request)
        return (
            [Record(str(r.id), r.payload or {}, None, convert.vectors(r.vector)) for r in records],
            None if next_offset is None else str(next_offset),
        )

    def retrieve(self, name: str, ids: list[str]) -> list[Record]:
        records = _call(self._shard(name).retrieve, ids, True, False)
        return [Record(str(r.id), r.payload or {}) for r in records]

    def count(self, name: str, where: Filter | None = None) -> int:
        return _call(
            self._shard(name).count, qe.CountRequest(exact=True, filter=convert.filter(where))
        )

    def optimize(self, name: str) -> None:
        with self._write:
            shard = self._shard(name)
            _call(shard.optimize)
            _call(shard.flush)

    def warm_up(
        self, name: str, *, cold: tuple[str, ...] = (), stop: threading.Event | None = None
    ) -> None:
        """Load the shard and read its files into the page cache, so that the first queries after a
        start do not wait for the disk: first everything but the vectors named in ``cold``
        (graph, binary codes, FDEs, pooled vectors, payload: a query reads them at random),
        then those (``original``: a query reads a few dozen pages' worth) if they fit in a
        quarter of the memory available (their quantized codes, if any, come first). Reads
        go through the kernel (no copy is kept here), a few MB at a time, so queries
        meanwhile still get the disk; ``stop`` ends it between two of them."""
        self._shard(name)
        files = [f for f in self._path(name).rglob("*") if f.is_file()]

        stored = {f"vector_storage-{c}" for c in cold}

        def is_cold(f: Path) -> bool:  # a cold vector's stored values; its codes stay first
            return not stored.isdisjoint(f.parts) and not f.name.startswith("quantized")

        stop = stop or threading.Event()
        _read_into_cache([f for f in files if not is_cold(f)], stop)
        later = [f for f in files if is_cold(f)]
        if sum(f.stat().st_size for f in later) < _available_memory() // 4:
            _read_into_cache(later, stop)

    def close(self) -> None:
        with self._write, self._open:
            self._closed = True
            for shard in self._shards.values():
                shard.flush()
                shard.close()
            self._shards.clear()
            if not self._lock_file.closed:
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)
                self._lock_file.close()


_CHUNK = 4 << 20


def _read_into_cache(files: list[Path], stop: threading.Event) -> None:
    buffer = bytearray(_CHUNK)
    for path in files:
        try:
            with open(path, "rb", buffering=0) as f:
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
                while not stop.is_set() and f.readinto(buffer):
                    pass
        except FileNotFoundError:  # a segment merged away meanwhile
            continue


def _available_memory() -> int:
    """MemAvailable in bytes (0 where /proc/meminfo does not say)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _call(fn, *args):
    """Run an engine call; its errors (plain Exception/ValueError from Rust) become ours."""
    try:
        return fn(*args)
    except (NotFound, StoreError):
        raise
    except Exception as exc:
        message = str(exc)
        if "WouldBlock" in message or ("WAL" in message and "lock" in message.lower()):
            raise StoreLocked(
                f"the embedded store is in use by another process ({message})"
            ) from None
        raise StoreError(f"embedded Qdrant: {message}") from exc


def _chain(prefetch: list[Prefetch] | None) -> list[Prefetch] | None:
    """The stages of a single chain of prefetches, innermost first; None for no prefetch or a
    tree (several prefetches at one level, fused by rank)."""
    chain: list[Prefetch] = []
    level = prefetch or []
    while len(level) == 1:
        chain.append(level[0])
        level = list(level[0].prefetch)
    if level or not chain:
        return None
    chain.reverse()
    return chain
