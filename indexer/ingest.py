"""The ingest use case: an ingestion run assembled from the settings, in one place.

``colqwen ingest`` (a folder of files, one run) and the worker (one job after another, from
the queue) both build their render pool and pipeline here, so a setting means the same in
both (page limit, render workers, batch size, the model's geometry):

    renderer = render_pool(settings).start()     # while the model loads
    pipeline = ingest_pipeline(settings, store, "pages", encoder, renderer=renderer)
    report = pipeline.run(sources)

A one-off run of few pages does not compile the model (``for_run``): the eager model is done
before a compiled one would be ready.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from indexer.pipeline import IngestPipeline, IngestProgress
from indexer.render import RenderOptions
from indexer.render_pool import Renderer
from indexer.sources import SourceFile, count_pages
from retrieval.config import Settings

if TYPE_CHECKING:
    from pathlib import Path

    from indexer.render import RenderedPage
    from retrieval.encoder import Encoder
    from retrieval.models import Family
    from retrieval.store import PageStore
    from retrieval.types import PageEmbedding


def for_run(settings: Settings, sources: list[SourceFile]) -> tuple[Settings, str | None]:
    """The settings for one ``colqwen ingest`` run of ``sources``: with ``compile`` auto and
    fewer pages than ``compile_min_pages``, not compiled (a compiled model is ready tens of
    seconds after the eager one, at 1.4x its speed: a run of fewer pages ends before that
    pays). Also what to tell the user of it, or None."""
    from retrieval.encoder import compiles, resolve_devices

    if settings.compile != "auto" or not settings.compile_min_pages:
        return settings, None
    if not compiles(settings.compile, resolve_devices(settings.device)[0]):
        return settings, None  # not on this device anyway
    pages = count_pages(sources, enough=settings.compile_min_pages, cap=settings.max_pages)
    if pages >= settings.compile_min_pages:
        return settings, None
    note = (
        f"{pages} pages: the model runs uncompiled, as it would finish before compiling paid "
        f"(COLQWEN_COMPILE_MIN_PAGES={settings.compile_min_pages})"
    )
    return settings.model_copy(update={"compile": "off"}), note


def render_pool(settings: Settings, family: Family | None = None) -> Renderer:
    """The render processes (not started) for the settings' checkpoint: with ``family``'s
    geometry (the loaded model's), or, before the model loads, its processor's."""
    return Renderer(
        RenderOptions.from_settings(settings, family),
        workers=settings.render_workers,
        max_pages=settings.max_pages,
    )


def ingest_pipeline(
    settings: Settings,
    store: PageStore,
    collection: str,
    encoder: Encoder,
    *,
    renderer: Renderer | None = None,
    on_progress: Callable[[IngestProgress], None] | None = None,
) -> IngestPipeline:
    """A pipeline that ingests into ``collection`` (created for ``encoder`` if need be) with
    ``encoder``, rendering with ``renderer`` (a started ``render_pool``, kept open) or a pool
    of its own each run."""
    store.ensure_collection_for(collection, settings, encoder)
    options = (
        renderer.options if renderer else RenderOptions.from_settings(settings, encoder.family)
    )
    return IngestPipeline(
        encoder,
        store,
        collection,
        render_options=options,
        render_workers=settings.render_workers,
        batch_size=settings.batch_size,
        max_pages=settings.max_pages,
        on_progress=on_progress,
        renderer=renderer,
    )


def embed_files(
    settings: Settings,
    encoder: Encoder,
    files: list[Path],
    pages: list[int] | None = None,
) -> list[tuple[Path, RenderedPage, PageEmbedding]]:
    """Render ``pages`` (1-based; default all) of each file with ``encoder``'s geometry and
    embed them, storing nothing: what ``colqwen embed`` shows of a few pages."""
    from indexer.render import open_document

    options = RenderOptions.from_settings(settings, encoder.family)
    rendered = []
    for file in files:
        with open_document(file, name=file.name, options=options) as document:
            count = document.info.page_count
            numbers = pages or range(1, count + 1)
            rendered += [(file, document.render(n - 1)) for n in numbers if n <= count]
    embeddings = encoder.embed_pages([page.image for _, page in rendered])
    return [(f, page, emb) for (f, page), emb in zip(rendered, embeddings, strict=True)]
