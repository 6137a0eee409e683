"""Backend-neutral storage types: what the two Qdrant backends translate to and from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from retrieval.types import Datatype, Sparse

FieldKind = Literal["keyword", "integer", "float", "bool", "datetime"]
# Binary quantization: bits per dimension of the codes kept in RAM for the graph search.
BinaryBits = Literal["1", "1.5", "2"]


@dataclass(frozen=True)
class VectorSpec:
    """One named vector of a collection, scored by dot product: a MaxSim multivector (token
    vectors, pooled vectors) or a single vector (the page's FDE)."""

    name: str
    size: int
    multivector: bool = True
    hnsw_m: int = 16  # HNSW graph degree; 0 = no graph: used only to rerank or scan
    ef_construct: int = 100  # HNSW build beam: build time grows with it, graph quality too
    on_disk: bool = False
    datatype: Datatype = "float32"
    # Binary codes held in RAM for the graph search, rescored from the stored vectors.
    binary: BinaryBits | None = None
    # A sparse vector (``size`` unused), its dot products weighted by each index's inverse
    # document frequency over the collection, computed by Qdrant: BM25 with term-frequency
    # weights on the document side (retrieval.text).
    sparse: bool = False


@dataclass(frozen=True)
class Match:
    """``key`` equals ``value``."""

    key: str
    value: str | int | bool


@dataclass(frozen=True)
class MatchAny:
    """``key`` equals one of ``values``."""

    key: str
    values: tuple[str, ...] | tuple[int, ...]


@dataclass(frozen=True)
class Range:
    """``key`` within bounds (numbers)."""

    key: str
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None


Condition = Match | MatchAny | Range


@dataclass(frozen=True)
class Filter:
    """All conditions must hold."""

    must: tuple[Condition, ...] = ()

    def __and__(self, other: Filter | None) -> Filter:
        return self if other is None else Filter(self.must + other.must)


@dataclass
class PointData:
    id: str
    vectors: dict[str, np.ndarray | Sparse]  # name -> float32 (n, dim) multivector, or sparse
    payload: dict[str, Any]


@dataclass
class Record:
    id: str
    payload: dict[str, Any] = field(default_factory=dict)
    score: float | None = None
    vectors: dict[str, np.ndarray] | None = None  # only when asked for (scroll)


@dataclass(frozen=True, eq=False)
class Prefetch:
    """One stage of a multi-stage query: the ``limit`` best points by ``using``, scored with
    ``vector`` (default: the query's own vector), among the results of ``prefetch`` if given.
    ``hnsw_ef`` widens the graph search; ``oversampling`` fetches that many times ``limit``
    by the quantized codes before rescoring with the stored vectors (0: no rescoring, the
    codes' own ranking)."""

    using: str
    limit: int
    vector: np.ndarray | Sparse | None = None
    prefetch: tuple[Prefetch, ...] = ()
    hnsw_ef: int | None = None
    oversampling: float | None = None
