"""Backend-neutral storage types: what the two Qdrant backends translate to and from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from retrieval.types import Datatype

FieldKind = Literal["keyword", "integer", "float", "bool", "datetime"]


@dataclass(frozen=True)
class VectorSpec:
    """One named vector of a collection. All ours are 128-d MaxSim multivectors (dot product)."""

    name: str
    size: int
    multivector: bool = True
    hnsw_m: int = 16  # HNSW graph degree; 0 = no graph: used only to rerank or scan
    ef_construct: int = 100  # HNSW build beam: build time grows with it, graph quality too
    on_disk: bool = False
    datatype: Datatype = "float32"


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
    vectors: dict[str, np.ndarray]  # name -> float32 (n, dim) multivector
    payload: dict[str, Any]


@dataclass
class Record:
    id: str
    payload: dict[str, Any] = field(default_factory=dict)
    score: float | None = None


@dataclass(frozen=True)
class Prefetch:
    using: str
    limit: int
