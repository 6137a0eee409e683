"""The few operations our storage needs from Qdrant, as a protocol both backends implement.

Everything else (schema, ids, the document catalog, search modes) is written once, in
``retrieval.store`` (``PageStore``), on top of this.
"""

from __future__ import annotations

import threading
from typing import Any, Literal, Protocol

import numpy as np

from retrieval.store.model import (
    FieldKind,
    Filter,
    PointData,
    Prefetch,
    Record,
    Sparse,
    VectorSpec,
)

RRF_K = 2  # Qdrant's default: a page's fused score is the sum of 1 / (k + its rank) per ranking


class Backend(Protocol):
    kind: str  # "embedded" or "server"

    def collection_exists(self, name: str) -> bool: ...

    def list_collections(self) -> list[str]: ...

    def create_collection(self, name: str, vectors: list[VectorSpec]) -> None: ...

    def delete_collection(self, name: str) -> None: ...

    def create_payload_index(self, name: str, key: str, kind: FieldKind) -> None: ...

    def upsert(self, name: str, points: list[PointData]) -> None:
        """Write points and wait until they are applied and durable: ``write`` of each one's
        ``prepare``, then ``flush``. Every other write (delete, payload index) is durable when
        it returns too."""

    def prepare(self, point: PointData) -> Any:
        """The point in this backend's own form, ready to write. Pure CPU work that any thread
        can do, so that the thread writing in order does only the write."""

    def write(self, name: str, prepared: list[Any]) -> None:
        """Write points that ``prepare`` made and wait until they are applied (searchable).
        The bulk path: durable only once ``flush`` returns, so a crash may lose them (whole
        points, never part of one)."""

    def flush(self, name: str) -> None:
        """Make every write to ``name`` so far durable."""

    def delete(self, name: str, where: Filter) -> None: ...

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
        """Score ``vector`` against ``using``: MaxSim for a multivector (n, dim), a dot product
        for a single vector (dim,) or a sparse one; reranking the prefetches' results if given.
        With ``fusion="rrf"`` (``vector`` and ``using`` None) the prefetches' rankings are fused
        instead: reciprocal rank fusion, k = ``RRF_K``. ``where`` applies to every stage.
        ``timings`` receives milliseconds spent in the engine: per stage, keyed by the vector
        it scores, where the backend can tell them apart; else the whole query under
        ``using``."""

    def scroll(
        self,
        name: str,
        where: Filter | None,
        limit: int,
        offset: str | None = None,
        vectors: list[str] | None = None,
    ) -> tuple[list[Record], str | None]:
        """A page of points in id order, with the named ``vectors`` if given."""

    def retrieve(self, name: str, ids: list[str]) -> list[Record]: ...

    def count(self, name: str, where: Filter | None = None) -> int: ...

    def optimize(self, name: str) -> None:
        """Build indexes now (the embedded engine has no background optimizer)."""

    def warm_up(
        self, name: str, *, cold: tuple[str, ...] = (), stop: threading.Event | None = None
    ) -> None:
        """Bring what a query of ``name`` reads into memory (the embedded engine: its files
        into the page cache, the vectors named in ``cold`` last), until ``stop`` is set;
        nothing on a server, which keeps its own caches."""

    def close(self) -> None: ...
