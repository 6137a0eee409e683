"""A store's collections: their schemas, created, read (and cached), listed, dropped.

What a collection is made of in Qdrant: ``retrieval.store.schema``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace

from retrieval.config import Settings
from retrieval.errors import ConfigurationError, Conflict, InvalidInput, NotFound
from retrieval.muvera import FdeParams
from retrieval.store.backend import Backend
from retrieval.store.model import BinaryBits
from retrieval.store.planning import Depths, tuned_depths
from retrieval.store.schema import (
    CATALOG_SUFFIX,
    CATALOG_VECTORS,
    COLLECTION_POINT,
    FIELD_KINDS,
    POOLINGS,
    TEXT_SUFFIX,
    UPGRADED_SUFFIX,
    check_name,
    create_points,
    now,
    schema_of,
    schema_point,
)
from retrieval.types import (
    DATATYPES,
    CollectionInfo,
    Datatype,
    FirstStage,
    ModelIdentity,
    ModelLike,
)

log = logging.getLogger(__name__)


class CollectionStore:
    """Collections of pages over a Qdrant backend: their schemas (cached once read), creation,
    listing, dropping and upgrading, and how deep their searches look. ``PageStore`` adds
    their documents and pages, and search.

    ``prefetch`` is how many candidates the full multivectors rerank; with pooled vectors in an
    FDE collection, the first stage passes ``first_stage_limit`` candidates to the pooled
    vectors, which keep the best ``prefetch``. ``oversampling`` fetches that many times the
    candidates by the FDEs' binary codes, then rescores them with the stored FDEs (0: no
    rescoring). Each left None is what the collection's middle stage was tuned for
    (``retrieval.store.planning.TUNED_DEPTHS``). The other arguments shape new collections.
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

    @property
    def kind(self) -> str:
        return self.backend.kind

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
        check_name(name, new=True)
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
            self.backend.create_collection(catalog, CATALOG_VECTORS)
        self.create_points(name, info)
        self.backend.create_payload_index(catalog, "kind", "keyword")
        for key, kind in filterable.items():
            self.backend.create_payload_index(catalog, f"metadata.{key}", kind)
        # Written last: a collection without this record was not created completely.
        self.write_schema(info)
        return info

    def create_points(self, name: str, info: CollectionInfo) -> None:
        """The Qdrant collection ``name`` for ``info``'s pages, indexed as this store says."""
        create_points(
            self.backend,
            name,
            info,
            hnsw_m=self.hnsw_m,
            hnsw_ef_construct=self.hnsw_ef_construct,
            fde_binary=self.fde_binary,
            pooled_dtype=self.pooled_dtype,
        )

    def write_schema(self, info: CollectionInfo) -> None:
        """Record ``info`` as its collection's schema (durable on return)."""
        self.backend.upsert(info.name + CATALOG_SUFFIX, [schema_point(info)])
        with self._lock:
            self._collections[info.name] = info

    def check_model(
        self, name: str, model: ModelIdentity | ModelLike, *, action: str
    ) -> CollectionInfo | None:
        """``Conflict`` if collection ``name`` exists and ``model`` may not fill or search it
        (``CollectionInfo.check_model``: the one rule); a collection not made yet takes any
        model. Its schema, or None."""
        try:
            info = self.collection(name)
        except NotFound:
            return None
        info.check_model(model, action=action)
        return info

    def create_collection_for(
        self, name: str, settings: Settings, *, filterable: dict[str, str] | None = None
    ) -> CollectionInfo:
        """A new, empty collection for the settings' model, without loading it (``colqwen
        collections create``): its geometry is recorded by its first ingestion."""
        from retrieval.checkpoint import identify
        from retrieval.models import resolve

        model = identify(settings.model)
        return self.create_collection(
            name,
            model=model.ref,
            model_fingerprint=model.fingerprint,
            family=resolve(settings.model_family, settings.model).name,
            max_visual_tokens=settings.max_visual_tokens,
            pooling=settings.pooling_vectors,
            filterable=filterable,
        )

    def ensure_collection_for(
        self, name: str, settings: Settings, model: ModelLike
    ) -> CollectionInfo:
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
        self.write_schema(info)
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
        check_name(name)
        catalog = name + CATALOG_SUFFIX
        if not self.backend.collection_exists(catalog):
            known = [c.name for c in self.collections()]
            raise NotFound(
                f"collection '{name}' does not exist yet: ingest documents into it first "
                "(`colqwen ingest PATH`, or upload them to POST /v1/documents)"
                + (f"; existing collections: {', '.join(known)}" if known else "")
            )
        records = self.backend.retrieve(catalog, [COLLECTION_POINT])
        if not records:
            raise NotFound(
                f"collection '{name}' was not created completely: `colqwen collections drop "
                f"{name}` and retry (ingesting into it creates it again)"
            )
        info = schema_of(records[0])
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
        return not self.backend.retrieve(catalog, [COLLECTION_POINT])

    def upgrade_collection(
        self,
        name: str,
        *,
        progress: Callable[[int, int], None] | None = None,
        batch: int = 64,
        page_text: Callable[[str, int], str] | None = None,
    ) -> CollectionInfo:
        """Bring a collection made by an older version to the schema of new ones, from its
        stored vectors (``retrieval.store.upgrade.upgrade_collection``)."""
        from retrieval.store.upgrade import upgrade_collection

        return upgrade_collection(self, name, progress=progress, batch=batch, page_text=page_text)
