"""Value types passed between modules. Embeddings are float32 numpy arrays; torch stays inside
the encoder."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, Protocol, get_args

import numpy as np

from retrieval.pooling import pool_cols, pool_rows

# How vectors are stored: float32, float16, or Qdrant's TurboQuant codes (16 or 8 bits an element).
Datatype = Literal["float32", "float16", "turbo16", "turbo8"]
DATATYPES: tuple[Datatype, ...] = ("float32", "float16", "turbo16", "turbo8")
FirstStage = Literal["fde", "rows"]
# The one definition of the search modes: the API's schema, the CLI's choices and the store's
# checks are all derived from it.
SearchMode = Literal["two_stage", "exact", "pooled", "hybrid", "text"]
SEARCH_MODES: tuple[str, ...] = get_args(SearchMode)


@dataclass(frozen=True)
class Sparse:
    """A sparse vector: the weights at its non-zero indices."""

    indices: tuple[int, ...]
    values: tuple[float, ...]

    @property
    def size(self) -> int:
        return len(self.values)


@dataclass(frozen=True, eq=False)
class PageEmbedding:
    """One page's late-interaction embedding.

    ``multivector`` holds every non-padding token the model produced for the page, in order:
    4 prompt-prefix tokens, the ``rows * cols`` visual tokens (row-major), then 7 suffix tokens.
    """

    multivector: np.ndarray  # (n_tokens, dim) float32
    grid: tuple[int, int]  # (rows, cols) of the visual tokens
    visual: np.ndarray  # (rows, cols, dim) float32
    special: np.ndarray  # (n_special, dim) float32: prompt tokens before and after the image
    # Where the visual tokens sit in ``multivector``: (start, length) runs, in the model's order
    # (one run for most families; a run per tile for tiled ones). Similarity maps need it.
    visual_runs: tuple[tuple[int, int], ...] = ()

    @property
    def n_tokens(self) -> int:
        return int(self.multivector.shape[0])

    @cached_property
    def pooled_rows(self) -> np.ndarray:
        """(rows + n_special, dim) float32: unit-length mean of each visual row, then
        ``special``."""
        return pool_rows(self.visual, self.special)

    @cached_property
    def pooled_cols(self) -> np.ndarray:
        """(cols + n_special, dim) float32: unit-length mean of each visual column, then
        ``special``."""
        return pool_cols(self.visual, self.special)

    def __reduce__(self):
        """Pickled as its token vectors alone where ``visual`` is their one visual run and
        ``special`` the rest (most families): half the bytes an encoder process sends back,
        which the ingestion parent reads for every page. Anything else pickles whole."""
        if self._visual_is_one_run():
            return (_from_tokens, (self.multivector, self.grid, self.visual_runs))
        fields = ("multivector", "grid", "visual", "special", "visual_runs")
        return (PageEmbedding, tuple(getattr(self, name) for name in fields))

    def _visual_is_one_run(self) -> bool:
        if len(self.visual_runs) != 1:
            return False
        (start, length), (rows, cols) = self.visual_runs[0], self.grid
        tokens = self.multivector
        return (
            length == rows * cols
            and self.visual.shape == (rows, cols, tokens.shape[1])
            and self.special.shape == (tokens.shape[0] - length, tokens.shape[1])
            and np.array_equal(self.visual.reshape(length, -1), tokens[start : start + length])
            and np.array_equal(self.special[:start], tokens[:start])
            and np.array_equal(self.special[start:], tokens[start + length :])
        )


def _from_tokens(
    multivector: np.ndarray, grid: tuple[int, int], runs: tuple[tuple[int, int], ...]
) -> PageEmbedding:
    ((start, length),) = runs
    return PageEmbedding(
        multivector=multivector,
        grid=grid,
        visual=multivector[start : start + length].reshape(*grid, -1),
        special=np.concatenate([multivector[:start], multivector[start + length :]]),
        visual_runs=runs,
    )


@dataclass(frozen=True)
class PageRecord:
    """A page ready to store: its embedding and where it came from."""

    doc_id: str
    source: str  # original file name, or the caller's name for it
    page_number: int  # 1-based
    page_count: int
    size_pt: tuple[float, float]
    rotation: int
    pixel_size: tuple[int, int]  # (width, height) rendered
    embedding: PageEmbedding
    metadata: dict[str, Any] = field(default_factory=dict)
    text: str = ""  # the page's text layer, or what OCR read (retrieval.text: cleaned)
    # Words OCR read, with their boxes as fractions of the page: [text, x0, y0, x1, y1].
    words: list[list] = field(default_factory=list)
    ocr_error: str | None = None  # why OCR failed on the page, if it did
    # Its derived vectors (FDE, pooled: ``retrieval.store.schema.derived_vectors``) when computed
    # beforehand, e.g. by the encoder process that embedded it; None: the store computes them.
    derived: dict[str, np.ndarray] | None = None


@dataclass
class DocumentRecord:
    """One document in a collection's catalog."""

    doc_id: str  # sha256 of the file's bytes
    name: str
    page_count: int
    # "deleting": a delete began; finished by the next start if the process died meanwhile.
    status: Literal["indexing", "indexed", "failed", "deleting"] = "indexing"
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""  # ISO 8601, UTC
    updated_at: str = ""
    error: str | None = None
    size_bytes: int | None = None
    source_path: str | None = None  # where the original file is kept, to render page images
    password_sealed: str | None = None  # an encrypted PDF's password, sealed (indexer.secrets)


@dataclass
class CollectionInfo:
    """A collection's schema, recorded when it was created."""

    name: str
    model: str
    max_visual_tokens: int
    dim: int = 128
    pooling: tuple[str, ...] = ("rows",)  # pooled vectors stored: "rows", "cols"
    original_dtype: Datatype = "float16"  # storage of the full multivectors
    # Pooled vectors scaled to unit length (retrieval.pooling). False only for collections made
    # before pooling did that: their new pages keep raw means, so no collection mixes the two.
    unit_pooled: bool = True
    filterable: dict[str, str] = field(default_factory=dict)  # metadata key -> field kind
    created_at: str = ""
    # What finds the candidates: "fde", one MUVERA vector a page in an HNSW graph (the pooled
    # vectors, if any, rerank its candidates before the full multivectors do), or "rows", an
    # HNSW graph over the pooled multivectors (collections made before FDEs; `colqwen
    # collections upgrade` converts them).
    first_stage: FirstStage = "rows"
    fde: dict[str, int] | None = None  # retrieval.muvera.FdeParams of the "fde" first stage
    # The checkpoint's fingerprint (retrieval.checkpoint.identify): None for a hub id, and for
    # collections made before fingerprints (matched by name then).
    model_fingerprint: str | None = None
    # The family's geometry as the checkpoint's processor set it (Family.params): pages are
    # drawn again and explained with it, without the model. None: the family's defaults.
    geometry: dict[str, int] | None = None
    points: str = ""  # the Qdrant collection holding the pages, when not `name` (after upgrade)
    family: str = "colqwen2"  # retrieval.models family of `model` (records before it: ColQwen2)
    # Pages carry their text and a BM25 vector ("bm25"): the text and hybrid modes. Collections
    # made before have neither until `colqwen collections upgrade` extracts them.
    text: bool = False

    @property
    def points_collection(self) -> str:
        return self.points or self.name

    @property
    def identity(self) -> ModelIdentity:
        """The model the collection was built with."""
        return ModelIdentity(self.model, self.model_fingerprint)

    def check_model(self, model: ModelIdentity | ModelLike, *, action: str) -> None:
        """Raise ``Conflict`` unless vectors of ``model`` belong in this collection: the same
        checkpoint (``ModelIdentity.serves``) and, for a loaded model, the same family and
        vector size (a bare identity: before the model loads, those are not known yet).
        Vectors of two models are not comparable, whatever their size. The one rule every
        search, upload and ingest asks."""
        if isinstance(model, ModelIdentity):
            identity, family, dim = model, None, None
        else:
            identity, family, dim = model.identity, model.family.name, model.dim
        same_family = family is None or family == self.family
        same_dim = dim is None or dim == self.dim
        if self.identity.serves(identity) and same_family and same_dim:
            return
        from retrieval.errors import Conflict

        what = ", ".join(str(x) for x in (family, f"{dim}-d" if dim else None) if x)
        raise Conflict(
            f"collection '{self.name}' was built with {self.model} ({self.family}, {self.dim}-d "
            f"vectors); cannot {action} it with {identity.ref}{f' ({what})' if what else ''}: "
            "use its model (COLQWEN_MODEL), or another collection"
        )


class ModelLike(Protocol):
    """A loaded model as collections see it (an ``Encoder`` is one): its identity, its
    family (``retrieval.models.Family``: its name and geometry) and its vector size."""

    identity: ModelIdentity
    dim: int
    family: Any


@dataclass(frozen=True)
class ModelIdentity:
    """A checkpoint as collections record it (``retrieval.checkpoint.identify`` makes one):
    ``ref`` loads it from any working directory (an absolute path, or a hub id), and
    ``fingerprint`` (local checkpoints) tells two copies of one checkpoint from two models."""

    ref: str
    fingerprint: str | None = None

    @property
    def name(self) -> str:
        """The last part of its hub id or directory path."""
        return model_name(self.ref)

    def serves(self, other: ModelIdentity) -> bool:
        """Whether ``other`` is the same model: by fingerprint where both have one (two copies
        of a checkpoint agree, wherever they are), else by name (a hub id and a local copy of
        it agree)."""
        if self.fingerprint and other.fingerprint:
            return self.fingerprint == other.fingerprint
        return self.name == other.name


def model_name(ref: str) -> str:
    """A checkpoint's name: the last part of its hub id or directory path."""
    return ref.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Hit:
    """One search result: a page."""

    doc_id: str
    source: str
    page: int
    score: float
    payload: dict[str, Any]

    @property
    def metadata(self) -> dict[str, Any]:
        return self.payload.get("metadata", {})
